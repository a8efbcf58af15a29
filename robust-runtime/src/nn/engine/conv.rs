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

/// Columns one product should have at least (if the batch has that many samples).
const COLUMNS: usize = 512;

/// Values an im2col matrix may reach by taking more than [`COLUMNS`] columns (1 MiB).
const MATRIX: usize = 1 << 18;

thread_local! {
    /// Per-thread scratch (im2col matrix and product), grown to the largest group and reused.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `f` on this thread's scratch, split into buffers of `a`, `b` and `c` values.
fn with_scratch<R>(
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

    /// `out = conv(src)` for a batch, then `epilogue` on each sample's channel `c` (a run of
    /// `oh·ow` values): the bias, a fused ReLU.
    pub fn forward(
        &self,
        src: &[f32],
        out: &mut [f32],
        epilogue: impl Fn(usize, &mut [f32]) + Sync,
    ) {
        let g = self.g;
        let (s_in, s_out) = self.sizes();
        let (rows, plane, group) = (g.rows(), g.plane(), self.group());
        // Columns per sample in the im2col matrix and the product (wider than `plane` when
        // phased: each output row then has unused columns, dropped when scattered back).
        let (span, phased) = (g.span(), g.is_phased());
        let phases = if phased { g.phases_len() } else { 0 };
        out.par_chunks_mut(group * s_out)
            .zip(src.par_chunks(group * s_in))
            .for_each(|(out, src)| {
                let m = src.len() / s_in;
                let ld = m * span;
                let finish = |out: &mut [f32]| {
                    for (c, run) in out.chunks_mut(plane).enumerate() {
                        epilogue(c % self.c_out, run);
                    }
                };
                if m == 1 && g.is_pointwise() {
                    self.product(src, out, plane);
                    return finish(out);
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
                        return self.product(cols, out, ld);
                    }
                    self.product(cols, product, ld);
                    // Row `co` of the product holds channel `co` of every sample of the group.
                    for (j, out) in out.chunks_mut(s_out).enumerate() {
                        for (co, run) in out.chunks_mut(plane).enumerate() {
                            let from = &product[co * ld + j * span..][..span];
                            if phased {
                                for (oy, run) in run.chunks_mut(g.ow).enumerate() {
                                    run.copy_from_slice(&from[g.span_row(oy)..][..g.ow]);
                                }
                            } else {
                                run.copy_from_slice(from);
                            }
                        }
                    }
                });
                finish(out);
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
