//! Convolutions on the engine's NCHW buffers: im2col and one matrix product per group of
//! samples, the groups in parallel.
//!
//! A product per sample has `oh·ow` columns: enough for the MNIST CNN's first layer (784), too
//! few for a strided layer's 7 × 7 output, where the kernel's packing and edge handling would
//! dominate. Samples are therefore grouped until a product has about [`COLUMNS`] columns, their
//! im2col matrices side by side; the product's rows are then scattered back to each sample's
//! channels (and gathered the other way in the backward pass).

use std::cell::RefCell;

use rayon::prelude::*;

use super::gemm::{matmul, View};
use super::kernels::{self, ConvShape};
use crate::nn::simd::wide;

/// Columns one product should have at least (if the batch has that many samples).
const COLUMNS: usize = 512;

/// Values an im2col matrix may reach by taking more than [`COLUMNS`] columns (1 MiB).
const MATRIX: usize = 1 << 18;

thread_local! {
    /// Per-thread scratch (im2col matrix and product), grown to the largest group and reused.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `f` on this thread's scratch, split into buffers of `a`, `b` and `c` values.
pub(super) fn with_scratch<R>(
    (a, b, c): (usize, usize, usize),
    f: impl FnOnce(&mut [f32], &mut [f32], &mut [f32]) -> R,
) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < a + b + c {
            s.resize(a + b + c, 0.0);
        }
        let (x, rest) = s[..a + b + c].split_at_mut(a);
        let (y, z) = rest.split_at_mut(b);
        f(x, y, z)
    })
}

/// A convolution's weights and geometry, borrowed from its op.
#[derive(Clone, Copy)]
pub(super) struct Conv<'a> {
    /// `c_out × c_in·k·k`, row-major.
    pub w: &'a [f32],
    /// `Wᵀ`, `c_in·k·k × c_out`, row-major.
    pub wt: &'a [f32],
    pub c_out: usize,
    pub g: &'a ConvShape,
}

impl Conv<'_> {
    /// Samples per product of the forward pass.
    fn group(&self) -> usize {
        // A short im2col matrix (few rows) takes more columns before it outgrows the cache:
        // fewer, larger products, whose packing the kernel then amortises.
        let columns = COLUMNS.max(MATRIX / self.g.rows().max(1));
        columns.div_ceil(self.g.plane().max(1))
    }

    /// Values per sample in and out.
    fn sizes(&self) -> (usize, usize) {
        let g = self.g;
        (g.c_in * g.h * g.w, self.c_out * g.plane())
    }

    /// `out = conv(src)` for a batch, then the epilogue on each output channel.
    pub fn forward(&self, src: &[f32], out: &mut [f32], epilogue: Epilogue<'_>) {
        let g = self.g;
        let (s_in, s_out) = self.sizes();
        let (rows, plane, group) = (g.rows(), g.plane(), self.group());
        // Columns per sample in the im2col matrix and the product (wider than `plane` when
        // phased: each output row then has unused columns, dropped when unpacked).
        let (span, phased) = (g.span(), g.is_phased());
        let phases = if phased { g.phases_len() } else { 0 };
        out.par_chunks_mut(group * s_out)
            .zip(src.par_chunks(group * s_in))
            .for_each(|(out, src)| {
                let m = src.len() / s_in;
                let ld = m * span;
                if m == 1 && g.is_pointwise() {
                    self.product(src, out, plane);
                    return epilogue.apply(out, plane);
                }
                let sizes = (phases, rows * ld, self.c_out * ld);
                with_scratch(sizes, |split, cols, product| {
                    for (j, x) in src.chunks(s_in).enumerate() {
                        if phased {
                            kernels::split_phases(x, split, g);
                            kernels::im2col_phased(split, &mut cols[j * span..], ld, g);
                        } else {
                            kernels::im2col(x, &mut cols[j * span..], ld, g);
                        }
                    }
                    if m == 1 && !phased {
                        self.product(cols, out, ld);
                        return epilogue.apply(out, plane);
                    }
                    self.product(cols, product, ld);
                    // Row `co` of the product holds channel `co` of every sample of the group.
                    for (j, out) in out.chunks_mut(s_out).enumerate() {
                        unpack(out, &product[j * span..], ld, g, epilogue);
                    }
                });
            });
    }

    /// `dst (c_out × ld) = W · cols (c_in·k·k × ld)`.
    fn product(&self, cols: &[f32], dst: &mut [f32], ld: usize) {
        let rows = self.g.rows();
        matmul(
            (self.c_out, ld, rows),
            dst,
            View::rows(self.w, rows),
            View::rows(cols, ld),
            1,
        );
    }

    /// The input gradient `gin` of the output gradient `gout`, for a batch.
    pub fn backward(&self, gout: &[f32], gin: &mut [f32]) {
        let (s_in, s_out) = self.sizes();
        let (rows, plane) = (self.g.rows(), self.g.plane());
        // col2im runs per sample after the product: larger groups than [`COLUMNS`] measured
        // no faster here.
        let group = COLUMNS.div_ceil(plane.max(1));
        gin.par_chunks_mut(group * s_in)
            .zip(gout.par_chunks(group * s_out))
            .for_each(|(gin, gout)| {
                let m = gout.len() / s_out;
                let ld = m * plane;
                // `dcols (c_in·k·k × ld) = Wᵀ · g (c_out × ld)`.
                let product = |g: &[f32], dst: &mut [f32]| {
                    matmul(
                        (rows, ld, self.c_out),
                        dst,
                        View::rows(self.wt, self.c_out),
                        View::rows(g, ld),
                        1,
                    )
                };
                if m == 1 && self.g.is_pointwise() {
                    return product(gout, gin);
                }
                let gathered = if m == 1 { 0 } else { self.c_out * ld };
                with_scratch((0, rows * ld, gathered), |_, cols, g| {
                    if m == 1 {
                        product(gout, cols);
                    } else {
                        for (j, gout) in gout.chunks(s_out).enumerate() {
                            for (co, run) in gout.chunks(plane).enumerate() {
                                g[co * ld + j * plane..][..plane].copy_from_slice(run);
                            }
                        }
                        product(g, cols);
                    }
                    for (j, gin) in gin.chunks_mut(s_in).enumerate() {
                        kernels::col2im(&cols[j * plane..], ld, gin, self.g);
                    }
                });
            });
    }
}

/// What follows a convolution's product on each output channel `c`: its bias `b[c]` (none for
/// an interval's radius), then a ReLU if `relu`.
#[derive(Clone, Copy)]
pub(super) struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    pub relu: bool,
}

impl Epilogue<'_> {
    /// No bias, no ReLU: the product as it is.
    pub const NONE: Epilogue<'static> = Epilogue {
        bias: None,
        relu: false,
    };

    /// On one sample's channels (runs of `plane` values), in place.
    pub fn apply(&self, out: &mut [f32], plane: usize) {
        if let Some(bias) = self.bias {
            super::bias_relu(out, bias, plane, self.relu);
        }
    }
}

wide! {
    /// One sample's output channels from its columns of a product (`ld` values per row), with
    /// the epilogue: channel `co`'s row `oy` is the `ow` values from `co·ld + oy·pitch` on
    /// (`pitch > ow` when phased: the unused columns are dropped).
    fn unpack(out: &mut [f32], product: &[f32], ld: usize, g: &ConvShape, epi: Epilogue<'_>) {
        let (plane, ow, pitch) = (g.plane(), g.ow, g.pitch());
        let finish = |out: &mut [f32], from: &[f32], b: Option<f32>| match b {
            Some(b) => {
                for (o, &v) in out.iter_mut().zip(from) {
                    *o = super::add_relu(v, b, epi.relu);
                }
            }
            None => out.copy_from_slice(from),
        };
        for (co, out) in out.chunks_mut(plane).enumerate() {
            let (from, b) = (&product[co * ld..], epi.bias.map(|b| b[co]));
            if pitch == ow {
                finish(out, &from[..plane], b);
            } else {
                for (oy, out) in out.chunks_mut(ow).enumerate() {
                    finish(out, &from[oy * pitch..][..ow], b);
                }
            }
        }
    }
}

/// The input gradient of a convolution whose output only a max-pool reads, straight from the
/// pool's output gradient: each window sends its gradient to one pixel of one channel (its
/// first maximum), so at most one in `k_pool²` of the convolution's output gradient is not
/// zero. Instead of the dense product and col2im, every such pixel adds its filter, scaled,
/// into the input gradient: `c_out·oh'·ow'·c_in·k²` multiply–adds against the dense
/// `c_out·oh·ow·c_in·k²` (a quarter for 2×2 windows), and no im2col matrix.
#[derive(Clone, Copy)]
pub(super) struct Pooled<'a> {
    /// The filters channels-last, `c_out × k × k × c_in` (see [`channels_last`]).
    pub wk: &'a [f32],
    pub c_out: usize,
    pub g: &'a ConvShape,
    /// Windows per channel of the pool's output.
    pub windows: usize,
}

/// `w` (`c_out × c_in × k × k`) as `c_out × k × k × c_in`.
pub(super) fn channels_last(w: &[f32], c_out: usize, g: &ConvShape) -> Vec<f32> {
    let (c_in, k) = (g.c_in, g.k);
    let mut out = vec![0f32; w.len()];
    for co in 0..c_out {
        for ci in 0..c_in {
            for t in 0..k * k {
                out[(co * k * k + t) * c_in + ci] = w[(co * c_in + ci) * k * k + t];
            }
        }
    }
    out
}

impl Pooled<'_> {
    /// Columns of the zero-padded, channels-last gradient buffer, and its rows: every pixel an
    /// output reads, and every input pixel.
    fn padded(&self) -> (usize, usize) {
        let g = self.g;
        let (s, p) = (g.stride, g.pad);
        (
            ((g.ow - 1) * s + g.k).max(g.w + p),
            ((g.oh - 1) * s + g.k).max(g.h + p),
        )
    }

    /// `gin` (`batch × c_in·h·w`, overwritten) from the pool's output gradient `gout` and
    /// window positions `args` (`batch × c_out·windows`); `mask`, the convolution's output,
    /// when a ReLU follows it (a gradient passes where that output is positive).
    pub fn backward(&self, gout: &[f32], args: &[u32], mask: Option<&[f32]>, gin: &mut [f32]) {
        let g = self.g;
        let (s_in, s_out, plane) = (g.c_in * g.h * g.w, self.c_out * self.windows, g.plane());
        let (wp, hp) = self.padded();
        gin.par_chunks_mut(s_in)
            .zip(gout.par_chunks(s_out).zip(args.par_chunks(s_out)))
            .enumerate()
            .for_each(|(j, (gin, (gout, args)))| {
                let mask = mask.map(|m| &m[j * self.c_out * plane..][..self.c_out * plane]);
                with_scratch((hp * wp * g.c_in, 0, 0), |acc, _, _| {
                    scatter_filters(acc, self, (gout, args), mask);
                    gather_channels_last(acc, gin, g, wp);
                });
            });
    }
}

wide! {
    /// One sample of [`Pooled::backward`] into `acc`, its zero-padded channels-last input
    /// gradient ([`Pooled::padded`] pixels of `c_in` values).
    fn scatter_filters(
        acc: &mut [f32],
        p: &Pooled<'_>,
        windows: (&[f32], &[u32]),
        mask: Option<&[f32]>,
    ) {
        let (gout, args) = windows;
        let g = p.g;
        let (k, s, run) = (g.k, g.stride, g.k * g.c_in);
        let (wp, _) = p.padded();
        acc.fill(0.0);
        for co in 0..p.c_out {
            let filter = &p.wk[co * k * run..][..k * run];
            let windows = co * p.windows..(co + 1) * p.windows;
            for (&v, &a) in gout[windows.clone()].iter().zip(&args[windows]) {
                let a = a as usize;
                let open = mask.is_none_or(|m| m[co * g.plane() + a] > 0.0);
                if v == 0.0 || !open {
                    continue;
                }
                let (oy, ox) = (a / g.ow, a % g.ow);
                for (ky, taps) in filter.chunks_exact(run).enumerate() {
                    let at = ((oy * s + ky) * wp + ox * s) * g.c_in;
                    for (d, &t) in acc[at..at + run].iter_mut().zip(taps) {
                        *d += v * t;
                    }
                }
            }
        }
    }
}

/// `gin` (`c_in × h × w`) from the zero-padded channels-last `acc` with rows of `wp` pixels.
fn gather_channels_last(acc: &[f32], gin: &mut [f32], g: &ConvShape, wp: usize) {
    let (c_in, p) = (g.c_in, g.pad);
    for (ci, plane) in gin.chunks_mut(g.h * g.w).enumerate() {
        for (iy, row) in plane.chunks_mut(g.w).enumerate() {
            let from = ((iy + p) * wp + p) * c_in + ci;
            for (ix, d) in row.iter_mut().enumerate() {
                *d = acc[from + ix * c_in];
            }
        }
    }
}
