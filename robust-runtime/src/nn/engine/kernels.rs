//! The engine's per-sample kernels: im2col and its adjoint for convolutions, pooling with the
//! positions its backward pass needs.

use crate::nn::simd::wide;

/// The largest stride read through phase planes (`stride²` planes per channel).
const MAX_PHASED_STRIDE: usize = 4;

/// The geometry of a convolution: `c_in × h × w` in, `c_out × oh × ow` out, a `k × k` kernel.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConvShape {
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub oh: usize,
    pub ow: usize,
}

impl ConvShape {
    /// Rows of the im2col matrix: `c_in·k·k`.
    pub fn rows(&self) -> usize {
        self.c_in * self.k * self.k
    }

    /// Output pixels: `oh·ow`.
    pub fn plane(&self) -> usize {
        self.oh * self.ow
    }

    /// For kernel offset `kx`, the output columns `ox0..ox1` whose input column
    /// `ox·stride + kx − pad` lies inside the image.
    fn columns(&self, kx: usize) -> (usize, usize) {
        let (p, s) = (self.pad, self.stride);
        let ox0 = p.saturating_sub(kx).div_ceil(s);
        let ox1 = self.ow.min((self.w + p).saturating_sub(kx).div_ceil(s));
        (ox0, ox1.max(ox0))
    }

    /// For kernel offset `ky` and output row `oy`, the input row, if inside the image.
    fn row(&self, ky: usize, oy: usize) -> Option<usize> {
        (oy * self.stride + ky)
            .checked_sub(self.pad)
            .filter(|&iy| iy < self.h)
    }

    /// Whether the convolution reads its input as it is (a 1×1 kernel, stride 1, no padding):
    /// then the input is its own im2col matrix.
    pub fn is_pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }

    /// Whether the forward im2col reads through phase planes ([`split_phases`]): at strides 2 to
    /// [`MAX_PHASED_STRIDE`], where gathering every `stride`-th value into the matrix costs more
    /// than the product.
    pub fn is_phased(&self) -> bool {
        (2..=MAX_PHASED_STRIDE).contains(&self.stride) && !self.is_pointwise()
    }

    /// Rows and columns of one phase plane: the zero-padded input's pixels `(u·s + a, v·s + b)`
    /// for one phase `(a, b)`, plus one spare zero row (the last output row's unused columns
    /// read into it).
    fn phase_dims(&self) -> (usize, usize) {
        let s = self.stride;
        (
            (self.h + 2 * self.pad).div_ceil(s) + 1,
            (self.w + 2 * self.pad).div_ceil(s),
        )
    }

    /// Values of one sample's phase planes (`c_in × s × s` planes).
    pub fn phases_len(&self) -> usize {
        let (qh, qw) = self.phase_dims();
        self.c_in * self.stride * self.stride * qh * qw
    }

    /// Columns the forward im2col matrix gives one sample: `oh` rows of [`pitch`](Self::pitch)
    /// columns (when phased, the last `pitch − ow` columns of each row are not outputs).
    pub fn span(&self) -> usize {
        self.oh * self.pitch()
    }

    /// Columns between two output rows in the forward im2col matrix: `ow`, or a phase plane's
    /// width when phased.
    pub fn pitch(&self) -> usize {
        if self.is_phased() {
            self.phase_dims().1
        } else {
            self.ow
        }
    }
}

wide! {
    /// The phase planes of one sample for a strided convolution: plane `(ci, a, b)` holds the
    /// zero-padded input's pixels `(u·s + a, v·s + b)` at `(u, v)`. Output pixel `(oy, ox)`
    /// reads kernel offset `(ky, kx)` from plane `(ci, ky mod s, kx mod s)` at
    /// `(oy + ky/s, ox + kx/s)`, so each im2col row is one contiguous run of a plane
    /// ([`im2col_phased`]). `phases` holds [`ConvShape::phases_len`] values, all overwritten.
    pub(super) fn split_phases(src: &[f32], phases: &mut [f32], g: &ConvShape) {
        let (s, p) = (g.stride, g.pad);
        let (qh, qw) = g.phase_dims();
        let phases = &mut phases[..g.phases_len()];
        phases.fill(0.0);
        // For each column phase `b`: the first input column whose padded column is `b` modulo
        // `s`, and where it lands in the phase plane's row.
        let mut starts = [(0, 0); MAX_PHASED_STRIDE];
        for (b, start) in starts[..s].iter_mut().enumerate() {
            let ix0 = (b + s - p % s) % s;
            *start = (ix0, (ix0 + p) / s);
        }
        for (ci, channel) in src.chunks(g.h * g.w).take(g.c_in).enumerate() {
            let planes = &mut phases[ci * s * s * qh * qw..][..s * s * qh * qw];
            // Padded row `iy + p` is row `u` of the row phase `a`.
            let (mut a, mut u) = (p % s, p / s);
            for row in channel.chunks(g.w) {
                for (b, &(ix0, v0)) in starts[..s].iter().enumerate() {
                    let dst = &mut planes[((a * s + b) * qh + u) * qw + v0..][..qw - v0];
                    every_nth(&row[ix0.min(row.len())..], s, dst);
                }
                a += 1;
                if a == s {
                    (a, u) = (0, u + 1);
                }
            }
        }
    }
}

/// `dst[i] = src[i·s]` for as many values as both have; pairs at `s = 2`, which the compiler
/// turns into vector shuffles where a row is long enough.
#[inline(always)]
fn every_nth(src: &[f32], s: usize, dst: &mut [f32]) {
    if s == 2 {
        let pairs = src.chunks_exact(2);
        let odd = pairs.remainder().first();
        let n = pairs.len();
        for (d, pair) in dst.iter_mut().zip(pairs) {
            *d = pair[0];
        }
        if let (Some(&v), Some(d)) = (odd, dst.get_mut(n)) {
            *d = v;
        }
    } else {
        for (d, &v) in dst.iter_mut().zip(src.iter().step_by(s)) {
            *d = v;
        }
    }
}

/// The forward im2col matrix of one sample from its phase planes ([`split_phases`]): row
/// `(ci, ky, kx)` is the [`ConvShape::span`] values of plane `(ci, ky mod s, kx mod s)` from
/// `(ky/s, kx/s)` on, one copy, written at `cols[r·ld..]`.
pub(super) fn im2col_phased(phases: &[f32], cols: &mut [f32], ld: usize, g: &ConvShape) {
    let (k, s, span) = (g.k, g.stride, g.span());
    let (qh, qw) = g.phase_dims();
    for r in 0..g.rows() {
        let (ci, ky, kx) = (r / (k * k), (r / k) % k, r % k);
        let plane = (ci * s + ky % s) * s + kx % s;
        let from = plane * qh * qw + (ky / s) * qw + kx / s;
        cols[r * ld..r * ld + span].copy_from_slice(&phases[from..from + span]);
    }
}

/// The im2col matrix of one sample: row `(ci, ky, kx)`, column `(oy, ox)` holds input pixel
/// `(ci, oy·s + ky − p, ox·s + kx − p)`, zero outside the image. Row `r` is written at
/// `cols[r·ld..r·ld + oh·ow]` (`ld ≥ oh·ow`: several samples side by side), every entry of it.
/// Rows are filled by segment copies (contiguous at stride 1).
pub(super) fn im2col(src: &[f32], cols: &mut [f32], ld: usize, g: &ConvShape) {
    let (k, plane, (h, w)) = (g.k, g.plane(), (g.h, g.w));
    for r in 0..g.rows() {
        let row = &mut cols[r * ld..r * ld + plane];
        let (ci, ky, kx) = (r / (k * k), (r / k) % k, r % k);
        let (ox0, ox1) = g.columns(kx);
        if ox0 > 0 || ox1 < g.ow || g.pad > 0 {
            // One fill per row rather than one per padded segment: on a strided layer's 7-pixel
            // rows the per-segment calls cost more than the copies.
            row.fill(0.0);
        }
        let src = &src[ci * h * w..(ci + 1) * h * w];
        for (oy, out) in row.chunks_mut(g.ow).enumerate() {
            let Some(iy) = g.row(ky, oy) else { continue };
            let from = iy * w + ox0 * g.stride + kx - g.pad;
            let out = &mut out[ox0..ox1];
            match g.stride {
                1 => out.copy_from_slice(&src[from..from + out.len()]),
                s => every_nth(&src[from..], s, out),
            }
        }
    }
}

wide! {
    /// The adjoint of [`im2col`] (same `ld`): each column entry added back into the pixel it was
    /// read from. `dst` (`c_in × h × w`) is overwritten.
    pub(super) fn col2im(cols: &[f32], ld: usize, dst: &mut [f32], g: &ConvShape) {
        let (k, plane, (h, w)) = (g.k, g.plane(), (g.h, g.w));
        dst[..g.c_in * h * w].fill(0.0);
        for r in 0..g.rows() {
            let row = &cols[r * ld..r * ld + plane];
            let (ci, ky, kx) = (r / (k * k), (r / k) % k, r % k);
            let (ox0, ox1) = g.columns(kx);
            let dst = &mut dst[ci * h * w..(ci + 1) * h * w];
            for (oy, seg) in row.chunks(g.ow).enumerate() {
                let Some(iy) = g.row(ky, oy) else { continue };
                let from = iy * w + ox0 * g.stride + kx - g.pad;
                let seg = &seg[ox0..ox1];
                if g.stride == 1 {
                    for (d, v) in dst[from..from + seg.len()].iter_mut().zip(seg) {
                        *d += v;
                    }
                } else {
                    for (d, v) in dst[from..].iter_mut().step_by(g.stride).zip(seg) {
                        *d += v;
                    }
                }
            }
        }
    }
}

/// The geometry of a pooling layer on one `h × w` plane: `k × k` windows, stride `stride`, no
/// padding, floor mode.
#[derive(Debug, Clone, Copy)]
pub(super) struct PoolShape {
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub stride: usize,
    pub oh: usize,
    pub ow: usize,
}

/// Max pooling of one plane; `arg[o]` is the position (in the plane) of window `o`'s first
/// maximum in row-major order, as PyTorch's kernels choose it.
pub(super) fn max_pool(src: &[f32], out: &mut [f32], arg: &mut [u32], g: &PoolShape) {
    if g.k == 2 && g.stride == 2 {
        max_pool_2x2(src, out, arg, g)
    } else {
        max_pool_any(src, out, arg, g)
    }
}

/// [`max_pool`] for any window and stride.
fn max_pool_any(src: &[f32], out: &mut [f32], arg: &mut [u32], g: &PoolShape) {
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let mut best = oy * g.stride * g.w + ox * g.stride;
            let mut max = src[best];
            for dy in 0..g.k {
                let row = (oy * g.stride + dy) * g.w + ox * g.stride;
                for (i, &v) in src[row..row + g.k].iter().enumerate() {
                    if v > max {
                        (best, max) = (row + i, v);
                    }
                }
            }
            out[oy * g.ow + ox] = max;
            arg[oy * g.ow + ox] = best as u32;
        }
    }
}

wide! {
    /// [`max_pool`] for the common 2×2 window of stride 2, without the general loop's index work.
    fn max_pool_2x2(src: &[f32], out: &mut [f32], arg: &mut [u32], g: &PoolShape) {
        let (w, ow) = (g.w, g.ow);
        for (oy, (out, arg)) in out.chunks_mut(ow).zip(arg.chunks_mut(ow)).enumerate() {
            let top = 2 * oy * w;
            let (r0, r1) = (&src[top..top + 2 * ow], &src[top + w..top + w + 2 * ow]);
            for (ox, (o, a)) in out.iter_mut().zip(arg.iter_mut()).enumerate() {
                // Row-major order: the first of equal values wins.
                let (mut best, mut max) = (top + 2 * ox, r0[2 * ox]);
                for (pos, v) in [
                    (top + 2 * ox + 1, r0[2 * ox + 1]),
                    (top + w + 2 * ox, r1[2 * ox]),
                    (top + w + 2 * ox + 1, r1[2 * ox + 1]),
                ] {
                    if v > max {
                        (best, max) = (pos, v);
                    }
                }
                *o = max;
                *a = best as u32;
            }
        }
    }
}

/// The backward pass of [`max_pool`] on one plane: each window's gradient to its first maximum.
/// `dst` (`h × w`) is overwritten.
pub(super) fn max_pool_back(grad: &[f32], arg: &[u32], dst: &mut [f32]) {
    dst.fill(0.0);
    for (&g, &a) in grad.iter().zip(arg) {
        dst[a as usize] += g;
    }
}

/// Average pooling of one plane (the window's sum over `k²`, as candle and PyTorch without
/// padding).
pub(super) fn avg_pool(src: &[f32], out: &mut [f32], g: &PoolShape) {
    let area = (g.k * g.k) as f32;
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let mut sum = 0.0;
            for dy in 0..g.k {
                let row = (oy * g.stride + dy) * g.w + ox * g.stride;
                sum += src[row..row + g.k].iter().sum::<f32>();
            }
            out[oy * g.ow + ox] = sum / area;
        }
    }
}

/// The backward pass of [`avg_pool`] on one plane. `dst` (`h × w`) is overwritten.
pub(super) fn avg_pool_back(grad: &[f32], dst: &mut [f32], g: &PoolShape) {
    let area = (g.k * g.k) as f32;
    dst.fill(0.0);
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let share = grad[oy * g.ow + ox] / area;
            for dy in 0..g.k {
                let row = (oy * g.stride + dy) * g.w + ox * g.stride;
                for d in &mut dst[row..row + g.k] {
                    *d += share;
                }
            }
        }
    }
}

#[cfg(test)]
mod should {
    use super::*;

    fn shape(c_in: usize, h: usize, w: usize, k: usize, stride: usize, pad: usize) -> ConvShape {
        ConvShape {
            c_in,
            h,
            w,
            k,
            stride,
            pad,
            oh: (h + 2 * pad - k) / stride + 1,
            ow: (w + 2 * pad - k) / stride + 1,
        }
    }

    /// The im2col entry by its definition.
    fn entry(src: &[f32], g: &ConvShape, r: usize, oy: usize, ox: usize) -> f32 {
        let (ci, ky, kx) = (r / (g.k * g.k), (r / g.k) % g.k, r % g.k);
        let (iy, ix) = (oy * g.stride + ky, ox * g.stride + kx);
        if iy < g.pad || ix < g.pad || iy - g.pad >= g.h || ix - g.pad >= g.w {
            return 0.0;
        }
        src[ci * g.h * g.w + (iy - g.pad) * g.w + ix - g.pad]
    }

    #[test]
    fn read_every_phased_im2col_entry_as_defined() {
        for g in [
            shape(3, 9, 9, 4, 2, 1),
            shape(1, 28, 28, 4, 2, 1),
            shape(16, 14, 14, 4, 2, 1),
            shape(2, 8, 7, 3, 2, 1),
            shape(2, 11, 10, 3, 3, 2),
            shape(1, 6, 6, 2, 2, 0),
            shape(2, 9, 8, 5, 2, 0),
            shape(2, 13, 12, 5, 4, 2),
        ] {
            assert!(g.is_phased());
            let src: Vec<f32> = (0..g.c_in * g.h * g.w).map(|i| i as f32 + 1.0).collect();
            let mut phases = vec![f32::NAN; g.phases_len()];
            split_phases(&src, &mut phases, &g);
            // Two samples side by side, as a group of samples lays them out.
            let ld = 2 * g.span() + 3;
            let mut cols = vec![f32::NAN; g.rows() * ld];
            im2col_phased(&phases, &mut cols[g.span()..], ld, &g);
            for r in 0..g.rows() {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let at = r * ld + g.span() + oy * g.pitch() + ox;
                        assert_eq!(
                            cols[at],
                            entry(&src, &g, r, oy, ox),
                            "{g:?} row {r} ({oy}, {ox})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn write_every_im2col_entry_as_defined_and_sum_it_back_as_the_adjoint() {
        for g in [
            shape(2, 7, 6, 3, 1, 1),
            shape(3, 9, 9, 4, 2, 1),
            shape(1, 5, 5, 5, 1, 2),
            shape(2, 8, 5, 1, 2, 0),
        ] {
            let src: Vec<f32> = (0..g.c_in * g.h * g.w).map(|i| i as f32 + 1.0).collect();
            let mut cols = vec![f32::NAN; g.rows() * g.plane()];
            im2col(&src, &mut cols, g.plane(), &g);
            for r in 0..g.rows() {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        assert_eq!(
                            cols[r * g.plane() + oy * g.ow + ox],
                            entry(&src, &g, r, oy, ox)
                        );
                    }
                }
            }
            // <im2col(x), c> = <x, col2im(c)> for every x and c.
            let c: Vec<f32> = (0..cols.len())
                .map(|i| ((i * 7) % 5) as f32 - 2.0)
                .collect();
            let mut back = vec![f32::NAN; src.len()];
            col2im(&c, g.plane(), &mut back, &g);
            let lhs: f32 = cols.iter().zip(&c).map(|(a, b)| a * b).sum();
            let rhs: f32 = src.iter().zip(&back).map(|(a, b)| a * b).sum();
            assert!(
                (lhs - rhs).abs() <= 1e-3 * lhs.abs().max(1.0),
                "{lhs} vs {rhs}"
            );
        }
    }

    #[test]
    fn pool_2x2_windows_as_the_general_loop_does_ties_included() {
        let g = PoolShape {
            h: 7,
            w: 9,
            k: 2,
            stride: 2,
            oh: 3,
            ow: 4,
        };
        // Values on a coarse grid, so that windows hold ties.
        let src: Vec<f32> = (0..63).map(|i| ((i * 7919) % 5) as f32).collect();
        let (mut fast, mut fast_arg) = (vec![0.0; 12], vec![0u32; 12]);
        let (mut slow, mut slow_arg) = (vec![0.0; 12], vec![0u32; 12]);
        max_pool_2x2(&src, &mut fast, &mut fast_arg, &g);
        max_pool_any(&src, &mut slow, &mut slow_arg, &g);
        assert_eq!((fast, fast_arg), (slow, slow_arg));
    }

    #[test]
    fn send_the_pool_gradient_to_the_first_maximum_of_each_window() {
        let g = PoolShape {
            h: 2,
            w: 4,
            k: 2,
            stride: 2,
            oh: 1,
            ow: 2,
        };
        let src = [2.0, 2.0, 0.0, 1.0, 2.0, 2.0, 3.0, 1.0];
        let (mut out, mut arg) = ([0.0; 2], [0u32; 2]);
        max_pool(&src, &mut out, &mut arg, &g);
        assert_eq!((out, arg), ([2.0, 3.0], [0, 6]));
        let mut back = [f32::NAN; 8];
        max_pool_back(&[10.0, 100.0], &arg, &mut back);
        assert_eq!(back, [10.0, 0.0, 0.0, 0.0, 0.0, 0.0, 100.0, 0.0]);
    }
}
