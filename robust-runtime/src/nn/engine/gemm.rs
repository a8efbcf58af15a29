//! Safe matrix products on the `gemm` crate (compiled with its AVX-512 kernels, chosen at run
//! time), for the engine's f32 slices and the verifier's f64 ones ([`crate::verify`]).

use gemm::Parallelism;

/// A read-only `rows × cols` matrix view of a slice: element `(i, j)` is `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a, T = f32> {
    pub data: &'a [T],
    pub rs: usize,
    pub cs: usize,
}

/// The element types the products run on.
pub(crate) trait Element: Copy + 'static {
    const ZERO: Self;
    const ONE: Self;
}

impl Element for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

impl Element for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

impl<'a, T> View<'a, T> {
    /// A row-major matrix with rows of `cols` values.
    pub fn rows(data: &'a [T], cols: usize) -> Self {
        View {
            data,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix whose rows have `cols` values: element `(i, j)` is
    /// `data[j·cols + i]`. (The engine keeps transposed copies of its weights instead: a
    /// row-major operand packs faster.)
    #[cfg(test)]
    pub fn transposed(data: &'a [T], cols: usize) -> Self {
        View {
            data,
            rs: 1,
            cs: cols,
        }
    }
}

/// Index one past the last element a `rows × cols` view with strides `(rs, cs)` reads.
fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    (rows - 1) * rs + (cols - 1) * cs + 1
}

/// Threads for a product: rayon's pool, or one inside a task already on it (a part of a
/// batch, see `Engine::part_size`), whose siblings keep the other threads busy.
pub(crate) fn threads() -> usize {
    if rayon::current_thread_index().is_some() {
        1
    } else {
        rayon::current_num_threads()
    }
}

/// `dst = lhs · rhs`, with `dst` `m × n` row-major, `lhs` `m × k`, `rhs` `k × n`. `threads > 1`
/// splits the product over rayon's pool (never from inside a parallel iterator).
///
/// # Panics
/// When a view is smaller than its shape says: a bug of the caller, checked here because the
/// product itself runs on raw pointers.
pub(crate) fn matmul<T: Element>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    lhs: View<'_, T>,
    rhs: View<'_, T>,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst.len() >= m * n, "gemm destination too small");
    if k == 0 {
        dst[..m * n].fill(T::ZERO);
        return;
    }
    assert!(
        lhs.data.len() >= extent(m, k, lhs.rs, lhs.cs)
            && rhs.data.len() >= extent(k, n, rhs.rs, rhs.cs),
        "gemm operand too small"
    );
    let parallelism = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: every index the product touches lies inside the slices (checked above), `dst` is
    // borrowed mutably and the operands immutably, so they do not alias.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            T::ZERO,
            T::ONE,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod should {
    use super::*;

    #[test]
    fn multiply_like_the_obvious_triple_loop() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut c = vec![0.0; m * n];
        // b read as the transpose of an n × k row-major matrix.
        matmul(
            (m, n, k),
            &mut c,
            View::rows(&a, k),
            View::transposed(&b, k),
            1,
        );
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|l| a[i * k + l] * b[j * k + l]).sum();
                assert!((c[i * n + j] - want).abs() < 1e-5);
            }
        }
    }
}
