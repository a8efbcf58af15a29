//! 3×3 convolutions of stride 1 and padding 1 by Winograd's minimal filtering, F(2×2, 3×3)
//! (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016).
//!
//! Each 2×2 block of output pixels is read from a 4×4 tile of the input: the tile and the
//! filter are transformed (`V = Bᵀ d B`, `U = G g Gᵀ`), multiplied element by element, and
//! transformed back (`Y = Aᵀ [U ⊙ V] A`). Summed over input channels, the element-wise products
//! of one tile position `ξ` of the 16 are one matrix product over all tiles: `M_ξ = U_ξ · V_ξ`
//! with `U_ξ` `c_out × c_in` and `V_ξ` `c_in × tiles`. That is 16 multiplies per 4 outputs
//! where the direct convolution needs 36: 2.25× less arithmetic, and no im2col matrix (9
//! values per output pixel and channel) nor col2im for the backward pass, which is the same
//! convolution with the filters flipped and their channels swapped.
//!
//! The transforms' coefficients are 0, ±1 and ±½, exact in binary; the result differs from the
//! direct convolution by rounding only (`tests` bound it against the direct product).

use rayon::prelude::*;

use super::conv::{with_scratch, Epilogue};
use super::gemm::{matmul, View};
use crate::nn::simd::wide;

/// Tile positions: a 4×4 tile.
const XI: usize = 16;

/// A 3×3, stride-1, padding-1 convolution's filters transformed for both passes.
#[derive(Debug)]
pub(super) struct Winograd {
    c_in: usize,
    c_out: usize,
    /// `U_ξ = (G g Gᵀ)_ξ` for the forward pass: 16 matrices `c_out × c_in`, row-major.
    forward: Vec<f32>,
    /// The same for the input gradient's convolution (filters rotated by 180°, `c_in` and
    /// `c_out` swapped): 16 matrices `c_in × c_out`.
    backward: Vec<f32>,
}

/// A plane's geometry: `h × w` pixels, tiles `th × tw`.
#[derive(Clone, Copy)]
struct Plane {
    h: usize,
    w: usize,
    th: usize,
    tw: usize,
}

impl Plane {
    fn new(h: usize, w: usize) -> Self {
        Plane {
            h,
            w,
            th: h.div_ceil(2),
            tw: w.div_ceil(2),
        }
    }

    fn tiles(&self) -> usize {
        self.th * self.tw
    }
}

impl Winograd {
    /// The transform of `w` (`c_out × c_in × 3 × 3`).
    pub fn new(w: &[f32], c_out: usize, c_in: usize) -> Self {
        let mut forward = vec![0f32; XI * c_out * c_in];
        let mut backward = vec![0f32; XI * c_in * c_out];
        for co in 0..c_out {
            for ci in 0..c_in {
                let g: [f32; 9] = std::array::from_fn(|t| w[(co * c_in + ci) * 9 + t]);
                let flipped: [f32; 9] = std::array::from_fn(|t| g[8 - t]);
                for (xi, u) in filter_transform(&g).into_iter().enumerate() {
                    forward[(xi * c_out + co) * c_in + ci] = u;
                }
                for (xi, u) in filter_transform(&flipped).into_iter().enumerate() {
                    backward[(xi * c_in + ci) * c_out + co] = u;
                }
            }
        }
        Winograd {
            c_in,
            c_out,
            forward,
            backward,
        }
    }

    /// `out = conv(src)` for a batch of `h × w` planes, then the epilogue on each output channel.
    pub fn forward(
        &self,
        src: &[f32],
        out: &mut [f32],
        (h, w): (usize, usize),
        epilogue: Epilogue<'_>,
    ) {
        convolve(
            &self.forward,
            (self.c_in, self.c_out),
            src,
            out,
            Plane::new(h, w),
            epilogue,
        );
    }

    /// The input gradient `gin` of the output gradient `gout`, for a batch.
    pub fn backward(&self, gout: &[f32], gin: &mut [f32], (h, w): (usize, usize)) {
        convolve(
            &self.backward,
            (self.c_out, self.c_in),
            gout,
            gin,
            Plane::new(h, w),
            Epilogue::NONE,
        );
    }
}

/// `G g Gᵀ` for one 3×3 filter `g` (row-major), `G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1]`: the 4×4
/// transformed filter, row-major.
fn filter_transform(g: &[f32; 9]) -> [f32; XI] {
    let rows = |r: [f32; 3]| {
        [
            r[0],
            (r[0] + r[1] + r[2]) * 0.5,
            (r[0] - r[1] + r[2]) * 0.5,
            r[2],
        ]
    };
    // G g: the filter's columns transformed (4 × 3).
    let col = |c: usize| rows([g[c], g[3 + c], g[6 + c]]);
    let (c0, c1, c2) = (col(0), col(1), col(2));
    let mut u = [0f32; XI];
    for a in 0..4 {
        // (G g) Gᵀ: each row of G g transformed the same way.
        let row = rows([c0[a], c1[a], c2[a]]);
        u[a * 4..a * 4 + 4].copy_from_slice(&row);
    }
    u
}

/// The convolution of `src` (`batch × c_in × h × w`) by the transformed filters `u` (16
/// matrices `c_out × c_in`) into `out` (`batch × c_out × h × w`).
///
/// The transformed tiles and products of a block (`16·(c_in + c_out)` values per tile) should
/// stay in the core's cache between the transforms and the products: a block is some rows of
/// tiles of one sample where a plane has many tiles (a ResNet's first stage), or several
/// samples' planes where they have few (its last, 4 × 4).
fn convolve(
    u: &[f32],
    channels: (usize, usize),
    src: &[f32],
    out: &mut [f32],
    p: Plane,
    epilogue: Epilogue<'_>,
) {
    let (c_in, c_out) = channels;
    let (s_in, s_out) = (c_in * p.h * p.w, c_out * p.h * p.w);
    let tiles = (BLOCK / (XI * (c_in + c_out))).max(MIN_TILES);
    let (group, rows) = if p.tiles() >= tiles {
        (1, (tiles / p.tw).max(1))
    } else {
        (tiles / p.tiles(), p.th)
    };
    out.par_chunks_mut(group * s_out)
        .zip(src.par_chunks(group * s_in))
        .for_each(|(out, src)| {
            for ty in (0..p.th).step_by(rows) {
                let block = Block {
                    ty,
                    rows: rows.min(p.th - ty),
                    samples: src.len() / s_in,
                };
                block.convolve(u, channels, (src, out), p);
            }
            for out in out.chunks_mut(s_out) {
                epilogue.apply(out, p.h * p.w);
            }
        });
}

/// Values of a block's transformed tiles and products together (1 MiB of f32).
const BLOCK: usize = 1 << 18;

/// Values between the starts of two tile positions' matrices beyond their size (one cache
/// line).
const SKEW: usize = 16;

/// Tiles a block has at least, however many channels (for the products' width).
const MIN_TILES: usize = 64;

/// Rows `ty .. ty + rows` of tiles of `samples` samples.
#[derive(Clone, Copy)]
struct Block {
    ty: usize,
    rows: usize,
    samples: usize,
}

impl Block {
    /// Tiles per sample in the block.
    fn tiles(&self, p: &Plane) -> usize {
        self.rows * p.tw
    }

    /// The block's output pixels of `out` from `src` (both whole samples).
    fn convolve(
        &self,
        u: &[f32],
        (c_in, c_out): (usize, usize),
        (src, out): (&[f32], &mut [f32]),
        p: Plane,
    ) {
        let (s_in, s_out) = (c_in * p.h * p.w, c_out * p.h * p.w);
        let per = self.tiles(&p);
        let t = self.samples * per;
        let padded = (2 * self.rows + 2) * (2 * p.tw + 2);
        let rows = 8 * p.tw + 4;
        // One matrix per tile position, each `SKEW` values past a multiple of the last: 16
        // streams a multiple of 4 KiB apart would share one set of the L1 cache.
        let (sv, sp) = (c_in * t + SKEW, c_out * t + SKEW);
        with_scratch((XI * sv, XI * sp, padded + rows), |v, prod, pad| {
            let (pad, tmp) = pad.split_at_mut(padded);
            for (j, x) in src.chunks(s_in).enumerate() {
                for (ci, plane) in x.chunks(p.h * p.w).enumerate() {
                    let place = (ci * t + j * per, sv);
                    input_transform(plane, (pad, tmp), v, (place, *self), p);
                }
            }
            let threads = super::gemm::threads();
            for xi in 0..XI {
                matmul(
                    (c_out, t, c_in),
                    &mut prod[xi * sp..],
                    View::rows(&u[xi * c_out * c_in..], c_in),
                    View::rows(&v[xi * sv..], t),
                    threads,
                );
            }
            for (j, out) in out.chunks_mut(s_out).enumerate() {
                for (co, plane) in out.chunks_mut(p.h * p.w).enumerate() {
                    let place = (co * t + j * per, sp);
                    output_transform(prod, plane, tmp, (place, *self), p);
                }
            }
        });
    }
}

wide! {
    /// The block's tiles of one input plane, `V = Bᵀ d B` with `Bᵀ = [1 0 −1 0; 0 1 1 0;
    /// 0 −1 1 0; 0 1 0 −1]`: the value `ξ` of the block's tile `i` goes to `v[ξ·stride + at +
    /// i]`. `pad` receives the block's input rows with their zero border, `tmp` (at least
    /// `4·tw + 4` values) the intermediate rows. A row of tiles at a time, so that every step
    /// runs along a row.
    fn input_transform(
        plane: &[f32],
        buffers: (&mut [f32], &mut [f32]),
        v: &mut [f32],
        place: ((usize, usize), Block),
        p: Plane,
    ) {
        let ((pad, tmp), ((at, stride), block)) = (buffers, place);
        let (pw, tw) = (2 * p.tw + 2, p.tw);
        // Padded row `r` of the block is input row `2·ty + r − 1`.
        let pad = &mut pad[..(2 * block.rows + 2) * pw];
        pad.fill(0.0);
        for (r, row) in pad.chunks_mut(pw).enumerate() {
            let Some(y) = (2 * block.ty + r).checked_sub(1).filter(|&y| y < p.h) else {
                continue;
            };
            row[1..=p.w].copy_from_slice(&plane[y * p.w..][..p.w]);
        }
        let (even, rest) = tmp.split_at_mut(tw + 1);
        let (odd, rest) = rest.split_at_mut(tw + 1);
        let comb = &mut rest[..pw];
        for ty in 0..block.rows {
            let r: [&[f32]; 4] = std::array::from_fn(|i| &pad[(2 * ty + i) * pw..][..pw]);
            let base = at + ty * tw;
            for a in 0..4 {
                // Row `a` of Bᵀ d, along the padded row.
                let (x, y, sum) = match a {
                    0 => (r[0], r[2], false),
                    1 => (r[1], r[2], true),
                    2 => (r[2], r[1], false),
                    _ => (r[1], r[3], false),
                };
                if sum {
                    map2(comb, x, y, |x, y| x + y);
                } else {
                    map2(comb, x, y, |x, y| x - y);
                }
                for (k, (e, o)) in even.iter_mut().zip(odd.iter_mut()).enumerate() {
                    (*e, *o) = (comb[2 * k], comb[2 * k + 1]);
                }
                // Columns `2tx .. 2tx + 3` are `even[tx], odd[tx], even[tx + 1], odd[tx + 1]`.
                let (e0, e1, o0, o1) = (&even[..tw], &even[1..], &odd[..tw], &odd[1..]);
                let at = |b: usize| (a * 4 + b) * stride + base;
                map2(&mut v[at(0)..][..tw], e0, e1, |x, y| x - y);
                map2(&mut v[at(1)..][..tw], o0, e1, |x, y| x + y);
                map2(&mut v[at(2)..][..tw], e1, o0, |x, y| x - y);
                map2(&mut v[at(3)..][..tw], o0, o1, |x, y| x - y);
            }
        }
    }
}

wide! {
    /// The block's pixels of one output plane from the products: `Y = Aᵀ m A` with `Aᵀ = [1 1 1
    /// 0; 0 1 −1 −1]` for each tile, `m_ξ = prod[ξ·stride + at + i]` for the block's tile `i`;
    /// pixels past the plane's edge dropped. `tmp` (at least `6·tw` values) holds the
    /// intermediate rows.
    fn output_transform(
        prod: &[f32],
        plane: &mut [f32],
        tmp: &mut [f32],
        place: ((usize, usize), Block),
        p: Plane,
    ) {
        let ((at, stride), block) = place;
        let tw = p.tw;
        let (s, y) = tmp[..6 * tw].split_at_mut(4 * tw);
        let (y0, y1) = y.split_at_mut(tw);
        for ty in 0..block.rows {
            let base = at + ty * tw;
            let m = |xi: usize| &prod[xi * stride + base..][..tw];
            for i in 0..2 {
                let row = 2 * (block.ty + ty) + i;
                if row >= p.h {
                    break;
                }
                // Row `i` of Aᵀ m, for each column `c` of the tiles.
                for (c, s) in s.chunks_exact_mut(tw).enumerate() {
                    let (a, b, d) = (m(c), m(4 + c), m(8 + c));
                    if i == 0 {
                        map3(s, a, b, d, |a, b, d| a + b + d);
                    } else {
                        let e = m(12 + c);
                        map3(s, b, d, e, |b, d, e| b - d - e);
                    }
                }
                let (s0, s1) = s.split_at(2 * tw);
                let (s0, s1, s2, s3) = (&s0[..tw], &s0[tw..], &s1[..tw], &s1[tw..]);
                map3(y0, s0, s1, s2, |a, b, c| a + b + c);
                map3(y1, s1, s2, s3, |a, b, c| a - b - c);
                let out = &mut plane[row * p.w..][..p.w];
                for (pair, (&a, &b)) in out.chunks_mut(2).zip(y0.iter().zip(y1.iter())) {
                    pair[0] = a;
                    if let Some(second) = pair.get_mut(1) {
                        *second = b;
                    }
                }
            }
        }
    }
}

/// `dst[i] = f(a[i], b[i])`: in runs of 16 and 8 values first, each one AVX-512 or AVX
/// vector in the wide copies. A plane's rows of tiles are short (2 to 16 here), shorter than
/// the compiler's unrolled vector loop, which would leave them all to its scalar tail.
#[inline(always)]
fn map2(dst: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    map3(dst, a, b, b, |a, b, _| f(a, b));
}

/// [`map2`] with three operands.
#[inline(always)]
fn map3(dst: &mut [f32], a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) {
    #[inline(always)]
    fn run<const N: usize>(
        (dst, a, b, c): (&mut [f32], &[f32], &[f32], &[f32]),
        f: &impl Fn(f32, f32, f32) -> f32,
    ) {
        let (dst, a, b, c) = (&mut dst[..N], &a[..N], &b[..N], &c[..N]);
        for i in 0..N {
            dst[i] = f(a[i], b[i], c[i]);
        }
    }
    let n = dst.len().min(a.len()).min(b.len()).min(c.len());
    let mut i = 0;
    while i + 16 <= n {
        run::<16>((&mut dst[i..], &a[i..], &b[i..], &c[i..]), &f);
        i += 16;
    }
    if i + 8 <= n {
        run::<8>((&mut dst[i..], &a[i..], &b[i..], &c[i..]), &f);
        i += 8;
    }
    if i + 4 <= n {
        run::<4>((&mut dst[i..], &a[i..], &b[i..], &c[i..]), &f);
        i += 4;
    }
    for i in i..n {
        dst[i] = f(a[i], b[i], c[i]);
    }
}

#[cfg(test)]
mod should {
    use super::*;

    /// The direct convolution, one multiply–add at a time: the slow, obvious path.
    fn direct(
        w: &[f32],
        x: &[f32],
        (c_in, c_out, h, wd): (usize, usize, usize, usize),
    ) -> Vec<f32> {
        let mut out = vec![0f32; c_out * h * wd];
        for co in 0..c_out {
            for y in 0..h {
                for xx in 0..wd {
                    let mut sum = 0f64;
                    for ci in 0..c_in {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) = ((y + ky) as isize - 1, (xx + kx) as isize - 1);
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let v = x[(ci * h + iy as usize) * wd + ix as usize];
                                sum += f64::from(w[((co * c_in + ci) * 3 + ky) * 3 + kx] * v);
                            }
                        }
                    }
                    out[(co * h + y) * wd + xx] = sum as f32;
                }
            }
        }
        out
    }

    #[test]
    fn convolve_and_take_the_input_gradient_as_the_direct_sums_do() {
        let mut rng = crate::Rng::seed_from_u64(9);
        // Odd sizes: tiles past the plane's edge. Two samples: a group of several.
        // 39 × 65 with 16 channels each way: one sample's 20 × 33 tiles in two blocks, of 15
        // rows and of 5.
        for (c_in, c_out, h, w) in [(3, 4, 5, 7), (5, 2, 6, 6), (2, 3, 1, 2), (16, 16, 39, 65)] {
            let weights = rng.normal_vec(c_out * c_in * 9);
            let wino = Winograd::new(&weights, c_out, c_in);
            let x = rng.uniform_vec(2 * c_in * h * w, -1.0, 1.0);
            let mut out = vec![f32::NAN; 2 * c_out * h * w];
            wino.forward(&x, &mut out, (h, w), Epilogue::NONE);
            for (j, out) in out.chunks(c_out * h * w).enumerate() {
                let want = direct(
                    &weights,
                    &x[j * c_in * h * w..][..c_in * h * w],
                    (c_in, c_out, h, w),
                );
                for (a, b) in out.iter().zip(&want) {
                    assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} against {b}");
                }
            }
            // The adjoint: ⟨conv(x), g⟩ = ⟨x, conv_backward(g)⟩ for any g.
            let g = rng.uniform_vec(2 * c_out * h * w, -1.0, 1.0);
            let mut gin = vec![f32::NAN; 2 * c_in * h * w];
            wino.backward(&g, &mut gin, (h, w));
            let lhs: f64 = out.iter().zip(&g).map(|(a, b)| f64::from(a * b)).sum();
            let rhs: f64 = x.iter().zip(&gin).map(|(a, b)| f64::from(a * b)).sum();
            assert!(
                (lhs - rhs).abs() <= 1e-4 * (1.0 + lhs.abs()),
                "{lhs} against {rhs}"
            );
        }
    }
}
