//! 2-D convolution whose backward pass computes the input gradient only.

use candle_core::{DType, Device, Module, Result, Tensor, WithDType};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::cpu_values;
use super::graft::graft;

/// A 2-D convolution with stride 1, zero padding and a square kernel, as PyTorch's
/// `nn.Conv2d(c_in, c_out, k, padding=p)`.
///
/// The forward value is candle's `conv2d` plus the bias. When the weights are plain tensors
/// (a loaded model), the backward pass computes the input gradient only, as the convolution of
/// the output gradient with the flipped, transposed kernel, `conv2d(∇y, flip(W)ᵀ, padding =
/// k − 1 − p)`: candle's own backward would also compute the (unused) kernel gradient and take
/// the input gradient through its much slower CPU `conv_transpose2d`. With trainable weights
/// (variables), the layer is candle's `conv2d` and autograd as usual.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    padding: usize,
    stride: usize,
    /// `flip(W)ᵀ`, `c_in × c_out × k × k`, for the input gradient off the CPU.
    grad_kernel: Tensor,
    /// `W` as a `c_in·k·k × c_out` matrix, for the input gradient on the CPU.
    weight_cols: Tensor,
    /// `W` as a `c_out × c_in·k·k` matrix, for the forward pass on the CPU.
    weight_rows: Tensor,
}

impl Conv2d {
    /// A convolution with `weight` (`c_out × c_in × k × k`), an optional `bias` (`c_out`) and
    /// zero padding `padding < k` on each side.
    pub fn new(weight: Tensor, bias: Option<Tensor>, padding: usize) -> Result<Self> {
        let (c_out, _, kh, kw) = weight.dims4()?;
        if kh != kw {
            candle_core::bail!("Conv2d needs a square kernel, got {kh}×{kw}")
        }
        if padding >= kh {
            candle_core::bail!("Conv2d needs padding < kernel size, got {padding} ≥ {kh}")
        }
        if let Some(b) = &bias {
            if b.dims() != [c_out] {
                candle_core::bail!("Conv2d bias of shape {:?} for {c_out} channels", b.dims())
            }
        }
        let grad_kernel = flipped_kernel(&weight.detach())?;
        let weight_rows = weight.detach().flatten_from(1)?.contiguous()?;
        let weight_cols = weight_rows.t()?.contiguous()?;
        Ok(Conv2d {
            weight,
            bias,
            padding,
            stride: 1,
            grad_kernel,
            weight_cols,
            weight_rows,
        })
    }

    /// Loads `weight` (`c_out × c_in × k × k`) and `bias` (`c_out`), PyTorch's names, from `vb`.
    pub fn load(
        c_in: usize,
        c_out: usize,
        k: usize,
        padding: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = vb.get((c_out, c_in, k, k), "weight")?;
        let bias = vb.get(c_out, "bias")?;
        Self::new(weight, Some(bias), padding)
    }

    /// The same convolution with stride `stride` on both axes (`nn.Conv2d(…, stride=s)`). Its
    /// input gradient is the strided adjoint, [`conv_transpose2d`].
    pub fn with_stride(mut self, stride: usize) -> Result<Self> {
        if stride == 0 {
            candle_core::bail!("Conv2d needs a stride of at least 1")
        }
        self.stride = stride;
        Ok(self)
    }

    /// The same convolution as a [`Layer`](super::Layer) of a network (a missing bias as
    /// zeros).
    pub(crate) fn layer(&self) -> Result<super::Layer> {
        let bias = super::bias_or_zeros(self.bias.as_ref(), &self.weight)?;
        Ok(super::Layer::Conv2d {
            weight: self.weight.clone(),
            bias,
            stride: self.stride,
            padding: self.padding,
        })
    }

    fn conv(&self, x: &Tensor) -> Result<Tensor> {
        if !self.trainable() {
            return conv2d_rows(
                x,
                &self.weight,
                &self.weight_rows,
                self.bias.as_ref(),
                self.padding,
                self.stride,
            );
        }
        let y = x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?),
            None => Ok(y),
        }
    }

    fn trainable(&self) -> bool {
        self.weight.track_op() || self.bias.as_ref().is_some_and(Tensor::track_op)
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.trainable() {
            return self.conv(x);
        }
        let value = self.conv(&x.detach())?;
        let (kernel, cols) = (self.grad_kernel.clone(), self.weight_cols.clone());
        let weight = self.weight.detach();
        let (padding, stride) = (self.padding, self.stride);
        graft(x, value, "conv2d-input-grad", move |arg, _, grad| {
            let k = kernel.dim(2)?;
            if grad.device().is_cpu() && grad.dtype() == cols.dtype() {
                let shape = arg.dims4()?;
                match grad.dtype() {
                    DType::F32 => return col2im::<f32>(grad, &cols, shape, k, stride, padding),
                    DType::F64 => return col2im::<f64>(grad, &cols, shape, k, stride, padding),
                    _ => {}
                }
            }
            let (_, c_in, h, w) = arg.dims4()?;
            if stride == 1 && !direct_transpose_is_faster(c_in, stride) {
                return grad.conv2d(&kernel, k - 1 - padding, 1, 1, 1);
            }
            conv_transpose2d(grad, &weight, padding, stride, (h, w))
        })
    }
}

/// `conv2d(x, weight, padding, stride)` plus `bias` (per output channel) on plain tensors:
/// what every convolution of the attacks and certifiers runs (`nn::Conv2d`, `Sequential`'s
/// layers, IBP's centre and radius). On the CPU it is im2col by row copies and one GEMM per
/// chunk of samples; elsewhere candle's `conv2d`.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    stride: usize,
) -> Result<Tensor> {
    let rows = if x.device().is_cpu() {
        weight.flatten_from(1)?.contiguous()?
    } else {
        weight.clone()
    };
    conv2d_rows(x, weight, &rows, bias, padding, stride)
}

/// [`conv2d`] with `weight` also given as its `c_out × c_in·k·k` matrix (kept by `Conv2d`).
fn conv2d_rows(
    x: &Tensor,
    weight: &Tensor,
    weight_rows: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    stride: usize,
) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == weight.dtype() && weight_rows.rank() == 2 {
        let x = x.contiguous()?;
        let (_, _, k, _) = weight.dims4()?;
        match x.dtype() {
            DType::F32 => return conv_cpu::<f32>(&x, weight_rows, bias, k, padding, stride),
            DType::F64 => return conv_cpu::<f64>(&x, weight_rows, bias, k, padding, stride),
            _ => {}
        }
    }
    let y = x.conv2d(weight, padding, stride, 1, 1)?;
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?),
        None => Ok(y),
    }
}

/// The forward pass on the CPU: im2col columns copied as row segments (contiguous at stride 1,
/// gathered at larger strides), one GEMM per chunk of samples, the bias added on the way out.
/// candle's tiled im2col writes its columns one value at a time, and took most of the forward
/// time.
fn conv_cpu<T: WithDType>(
    x: &Tensor,
    weight_rows: &Tensor,
    bias: Option<&Tensor>,
    k: usize,
    p: usize,
    stride: usize,
) -> Result<Tensor> {
    let (n, c_in, h, w) = x.dims4()?;
    let c_out = weight_rows.dim(0)?;
    let (oh, ow) = ((h + 2 * p - k) / stride + 1, (w + 2 * p - k) / stride + 1);
    let (plane, in_size, rows) = (oh * ow, c_in * h * w, c_in * k * k);
    let bias = match bias {
        Some(b) => b.flatten_all()?.to_dtype(T::DTYPE)?.to_vec1::<T>()?,
        None => vec![T::zero(); c_out],
    };
    cpu_values(x, "conv2d input", |xv: &[T]| {
        let mut out = vec![T::zero(); n * c_out * plane];
        let chunk = ((1 << 22) / (rows * plane).max(1)).clamp(1, n.max(1));
        for (c, out) in out.chunks_mut(chunk * c_out * plane).enumerate() {
            let b = out.len() / (c_out * plane);
            let xv = &xv[c * chunk * in_size..(c * chunk + b) * in_size];
            let mut cols = vec![T::zero(); rows * b * plane];
            cols.par_chunks_mut(b * plane)
                .enumerate()
                .for_each(|(r, row)| {
                    let (ci, ky, kx) = (r / (k * k), (r / k) % k, r % k);
                    // Output pixel (oy, ox) reads input (oy·s + ky − p, ox·s + kx − p); the valid
                    // ox are those with 0 ≤ ox·s + kx − p < w.
                    let ox0 = p.saturating_sub(kx).div_ceil(stride);
                    let ox1 = ow.min((w + p).saturating_sub(kx).div_ceil(stride));
                    if ox0 >= ox1 {
                        return;
                    }
                    for s in 0..b {
                        let src = &xv[s * in_size + ci * h * w..s * in_size + (ci + 1) * h * w];
                        for oy in 0..oh {
                            let iy = oy * stride + ky;
                            if iy < p || iy - p >= h {
                                continue;
                            }
                            let from = (iy - p) * w + ox0 * stride + kx - p;
                            let to = s * plane + oy * ow + ox0;
                            let dst = &mut row[to..to + (ox1 - ox0)];
                            if stride == 1 {
                                dst.copy_from_slice(&src[from..from + (ox1 - ox0)]);
                            } else {
                                for (i, d) in dst.iter_mut().enumerate() {
                                    *d = src[from + i * stride];
                                }
                            }
                        }
                    }
                });
            let cols = Tensor::from_vec(cols, (rows, b * plane), &Device::Cpu)?;
            let y = weight_rows.matmul(&cols)?;
            cpu_values(&y, "conv2d output", |yv: &[T]| {
                out.par_chunks_mut(c_out * plane)
                    .enumerate()
                    .for_each(|(s, out)| {
                        for (co, out) in out.chunks_mut(plane).enumerate() {
                            let src =
                                &yv[co * b * plane + s * plane..co * b * plane + (s + 1) * plane];
                            for (o, &v) in out.iter_mut().zip(src) {
                                *o = v + bias[co];
                            }
                        }
                    });
                Ok(())
            })?;
        }
        Tensor::from_vec(out, (n, c_out, oh, ow), &Device::Cpu)
    })
}

/// The adjoint of `conv2d(·, weight, padding, stride)` applied to `y` (`n × c_out × oh × ow`),
/// for inputs of spatial size `h × w`: what the input gradient of a convolution is, and what
/// CROWN pushes its linear bounds through. On the CPU this is one GEMM plus col2im;
/// elsewhere it is candle's `conv_transpose2d`, with the output padding that restores the rows
/// and columns the forward size formula dropped, cut back to `h × w`.
pub fn conv_transpose2d(
    y: &Tensor,
    weight: &Tensor,
    padding: usize,
    stride: usize,
    (h, w): (usize, usize),
) -> Result<Tensor> {
    let n = y.dim(0)?;
    let (c_out, c_in, k, _) = weight.dims4()?;
    if y.device().is_cpu() && y.dtype() == weight.dtype() {
        let cols = weight.flatten_from(1)?.t()?.contiguous()?; // c_in·k·k × c_out
        let y = y.contiguous()?;
        let shape = (n, c_in, h, w);
        match y.dtype() {
            DType::F32 => return col2im::<f32>(&y, &cols, shape, k, stride, padding),
            DType::F64 => return col2im::<f64>(&y, &cols, shape, k, stride, padding),
            _ => {}
        }
    }
    debug_assert_eq!(y.dim(1)?, c_out);
    if direct_transpose_is_faster(c_in, stride) {
        // The output padding restores the rows and columns the forward size formula dropped.
        let size = |o: usize| ((o - 1) * stride + k).saturating_sub(2 * padding);
        let (oh, ow) = (y.dim(2)?, y.dim(3)?);
        let extra = h.saturating_sub(size(oh)).max(w.saturating_sub(size(ow)));
        let back = y.conv_transpose2d(weight, padding, extra, stride, 1)?;
        return back.narrow(2, 0, h)?.narrow(3, 0, w);
    }
    conv_transpose2d_dilated(y, weight, padding, stride, (h, w))
}

/// Off the CPU, whether candle's direct `conv_transpose2d` kernel beats a convolution of the
/// (dilated) adjoint with the flipped kernel, for an adjoint producing `c_in` channels. Measured
/// on an H100 at batch 256 (BENCHMARKS.md). With candle's own im2col convolutions the direct
/// kernel is 30× faster for the MNIST CNN's first layer (`c_in = 1`: 0.12 against 3.76 ms), 2×
/// for its second (`c_in = 32`), 1.6× for ResNet's strided 64→128 (5.2 against 8.4 ms), but
/// slower for ResNet's 64- and 256-channel layers (4.6 against 4.1 ms, 3.9 against 1.2 ms).
/// With cuDNN convolutions only `c_in = 1` is faster direct (0.13 against 0.52 ms).
fn direct_transpose_is_faster(c_in: usize, stride: usize) -> bool {
    if cfg!(feature = "cudnn") {
        stride == 1 && c_in < 8
    } else {
        c_in <= 32 || stride > 1
    }
}

/// `flip(W)ᵀ`: the `c_in × c_out × k × k` kernel whose convolution (at padding `k − 1 − p`) is
/// the adjoint of a stride-1 convolution with `weight` (`c_out × c_in × k × k`).
pub fn flipped_kernel(weight: &Tensor) -> Result<Tensor> {
    weight
        .transpose(0, 1)?
        .contiguous()?
        .flip(&[2, 3])?
        .contiguous()
}

/// [`conv_transpose2d`] off the CPU: `y` dilated by the stride (zeros between its pixels) and
/// convolved with the flipped, transposed kernel at padding `k − 1 − p`. That is im2col + GEMM,
/// the path candle runs fast on a GPU, where its direct `conv_transpose2d` kernel is slow.
fn conv_transpose2d_dilated(
    y: &Tensor,
    weight: &Tensor,
    padding: usize,
    stride: usize,
    (h, w): (usize, usize),
) -> Result<Tensor> {
    let (n, c_out, oh, ow) = y.dims4()?;
    let k = weight.dim(2)?;
    let flipped = flipped_kernel(weight)?;
    // The dilated gradient needs `h + 2p − k + 1` rows (and the same for columns): the forward
    // pass read input rows up to `(oh − 1)·s + k − 1 − p`; rows it never read get zeros.
    let (lh, lw) = (h + 2 * padding + 1 - k, w + 2 * padding + 1 - k);
    let y = if stride == 1 {
        y.clone()
    } else {
        y.reshape((n, c_out, oh, 1, ow, 1))?
            .pad_with_zeros(3, 0, stride - 1)?
            .pad_with_zeros(5, 0, stride - 1)?
            .reshape((n, c_out, oh * stride, ow * stride))?
    };
    let (dh, dw) = (y.dim(2)?, y.dim(3)?);
    let y = match dh.cmp(&lh) {
        std::cmp::Ordering::Less => y.pad_with_zeros(2, 0, lh - dh)?,
        _ => y.narrow(2, 0, lh)?,
    };
    let y = match dw.cmp(&lw) {
        std::cmp::Ordering::Less => y.pad_with_zeros(3, 0, lw - dw)?,
        _ => y.narrow(3, 0, lw)?,
    };
    y.contiguous()?.conv2d(&flipped, k - 1 - padding, 1, 1, 1)
}

/// The adjoint of a convolution on the CPU: the columns `Wᵀ y` (`c_in·k·k × pixels`, one GEMM
/// per chunk of samples) added back onto the input positions they came from (col2im). This
/// touches `c_in·k²` values per output pixel, where the flipped-kernel `conv2d` builds im2col
/// columns of `c_out·k²`: much cheaper for the first layer (`c_in = 1`), and far faster than
/// candle's CPU `conv_transpose2d` for strided convolutions.
fn col2im<T: WithDType>(
    grad: &Tensor,
    weight_cols: &Tensor,
    (n, c_in, h, w): (usize, usize, usize, usize),
    k: usize,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let (_, c_out, oh, ow) = grad.dims4()?;
    let (plane, in_size) = (oh * ow, c_in * h * w);
    // c_out × (n·oh·ow): one GEMM per chunk of samples, columns in sample order.
    let g = grad
        .transpose(0, 1)?
        .contiguous()?
        .reshape((c_out, n * plane))?;
    let rows = c_in * k * k;
    let chunk = ((1 << 22) / (rows * plane)).clamp(1, n);
    let mut out = vec![T::zero(); n * in_size];
    for (c, out) in out.chunks_mut(chunk * in_size).enumerate() {
        let b = out.len() / in_size;
        // Contiguous: MKL's GEMM (the `mkl` feature) rejects a strided right-hand side.
        let cols = weight_cols.matmul(&g.narrow(1, c * chunk * plane, b * plane)?.contiguous()?)?;
        cpu_values(&cols, "conv2d adjoint columns", |cols: &[T]| {
            let row_stride = b * plane;
            out.par_chunks_mut(in_size).enumerate().for_each(|(s, dx)| {
                for ci in 0..c_in {
                    let dx = &mut dx[ci * h * w..(ci + 1) * h * w];
                    for ky in 0..k {
                        for kx in 0..k {
                            let row = ((ci * k + ky) * k + kx) * row_stride + s * plane;
                            let row = &cols[row..row + plane];
                            // Output pixel (oy, ox) read input (oy·s + ky − p, ox·s + kx − p); the
                            // valid ox are those with 0 ≤ ox·s + kx − p < w.
                            let ox0 = padding.saturating_sub(kx).div_ceil(stride);
                            let ox1 = ow.min((w + padding).saturating_sub(kx).div_ceil(stride));
                            if ox0 >= ox1 {
                                continue;
                            }
                            for oy in 0..oh {
                                let iy = oy * stride + ky;
                                if iy < padding || iy - padding >= h {
                                    continue;
                                }
                                let src = &row[oy * ow + ox0..oy * ow + ox1];
                                let dst = (iy - padding) * w + ox0 * stride + kx - padding;
                                if stride == 1 {
                                    let dst = &mut dx[dst..dst + (ox1 - ox0)];
                                    for (d, v) in dst.iter_mut().zip(src) {
                                        *d += *v;
                                    }
                                } else {
                                    for (i, v) in src.iter().enumerate() {
                                        dx[dst + i * stride] += *v;
                                    }
                                }
                            }
                        }
                    }
                }
            });
            Ok(())
        })?;
    }
    Tensor::from_vec(out, (n, c_in, h, w), &Device::Cpu)
}

#[cfg(test)]
mod should {
    use super::*;
    use candle_core::{Device, Var};

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        assert_eq!(a.dims(), b.dims());
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// Output and input gradient of `layer` and of candle's conv2d + bias + autograd.
    fn compare(
        n: usize,
        c_in: usize,
        c_out: usize,
        hw: (usize, usize),
        k: usize,
        p: usize,
        s: usize,
    ) -> Result<()> {
        let dev = Device::Cpu;
        let weight = Tensor::randn(0f32, 1.0, (c_out, c_in, k, k), &dev)?;
        let bias = Tensor::randn(0f32, 1.0, c_out, &dev)?;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, c_in, hw.0, hw.1), &dev)?)?;
        let layer = Conv2d::new(weight.clone(), Some(bias.clone()), p)?.with_stride(s)?;

        let ours = layer.forward(x.as_tensor())?;
        let theirs = x
            .as_tensor()
            .conv2d(&weight, p, s, 1, 1)?
            .broadcast_add(&bias.reshape((1, c_out, 1, 1))?)?;
        assert!(max_abs_diff(&ours, &theirs)? < 1e-4);

        let r = Tensor::randn(0f32, 1.0, ours.shape(), &dev)?;
        let g_ours = (ours * &r)?.sum_all()?.backward()?;
        let g_theirs = (theirs * &r)?.sum_all()?.backward()?;
        let (g_ours, g_theirs) = (
            g_ours.get(x.as_tensor()).unwrap(),
            g_theirs.get(x.as_tensor()).unwrap(),
        );
        let diff = max_abs_diff(g_ours, g_theirs)?;
        assert!(diff < 1e-4, "input gradients differ by {diff}");
        Ok(())
    }

    #[test]
    fn match_candle_conv2d_and_its_input_gradient() -> Result<()> {
        compare(3, 1, 4, (9, 9), 5, 2, 1)?;
        compare(2, 3, 5, (8, 11), 3, 0, 1)?;
        compare(4, 6, 2, (12, 10), 5, 0, 1)?;
        compare(2, 5, 7, (7, 6), 5, 2, 1)?;
        compare(2, 4, 3, (6, 6), 3, 1, 1)?;
        // ResNet's downsampling: 3×3 stride 2 padding 1, 1×1 stride 2, odd and even sizes.
        compare(2, 4, 6, (8, 8), 3, 1, 2)?;
        compare(2, 3, 5, (9, 7), 3, 1, 2)?;
        compare(2, 4, 6, (8, 8), 1, 0, 2)
    }

    /// The adjoint of a convolution, the obvious slow way: every product `g·w` lands on the
    /// input pixel it came from.
    fn adjoint_slow(
        g: &Tensor,
        w: &Tensor,
        s: usize,
        p: usize,
        (h, wd): (usize, usize),
    ) -> Result<Tensor> {
        let (n, c_out, oh, ow) = g.dims4()?;
        let (_, c_in, k, _) = w.dims4()?;
        let gv = g.flatten_all()?.to_vec1::<f32>()?;
        let wv = w.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; n * c_in * h * wd];
        for b in 0..n {
            for co in 0..c_out {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let gval = gv[((b * c_out + co) * oh + oy) * ow + ox];
                        for ci in 0..c_in {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let (iy, ix) = (oy * s + ky, ox * s + kx);
                                    if iy < p || ix < p || iy - p >= h || ix - p >= wd {
                                        continue;
                                    }
                                    let wval = wv[((co * c_in + ci) * k + ky) * k + kx];
                                    out[((b * c_in + ci) * h + iy - p) * wd + ix - p] +=
                                        gval * wval;
                                }
                            }
                        }
                    }
                }
            }
        }
        Tensor::from_vec(out, (n, c_in, h, wd), &Device::Cpu)
    }

    /// The adjoint (input gradient) of strided convolutions, where candle's own autograd
    /// returns the wrong shape whenever the size formula drops input rows.
    #[test]
    fn transpose_strided_convolutions_as_their_adjoint() -> Result<()> {
        let dev = Device::Cpu;
        for (c_in, c_out, k, (h, w), stride, padding) in [
            (1, 16, 4, (28, 28), 2, 1),
            (16, 32, 4, (14, 14), 2, 1),
            (3, 5, 3, (9, 8), 2, 0),
            (2, 4, 3, (11, 10), 3, 1),
            (2, 3, 5, (7, 7), 1, 2),
            // ResNet-18's downsampling: 3×3 and 1×1 at stride 2, even and odd sizes.
            (4, 6, 3, (8, 8), 2, 1),
            (4, 6, 3, (9, 9), 2, 1),
            (4, 6, 1, (8, 8), 2, 0),
        ] {
            let weight = Tensor::randn(0f32, 1.0, (c_out, c_in, k, k), &dev)?;
            let x = Tensor::randn(0f32, 1.0, (3, c_in, h, w), &dev)?;
            let y = x.conv2d(&weight, padding, stride, 1, 1)?;
            let g = Tensor::randn(0f32, 1.0, y.dims(), &dev)?;
            let expected = adjoint_slow(&g, &weight, stride, padding, (h, w))?;
            let ours = conv_transpose2d(&g, &weight, padding, stride, (h, w))?;
            let diff = max_abs_diff(&ours, &expected)?;
            assert!(
                diff < 1e-4,
                "{c_in}→{c_out} k{k} s{stride} p{padding} {h}×{w}: {diff}"
            );
            // The path taken off the CPU, run here on the CPU.
            let dilated = conv_transpose2d_dilated(&g, &weight, padding, stride, (h, w))?;
            let diff = max_abs_diff(&dilated, &expected)?;
            assert!(
                diff < 1e-4,
                "dilated {c_in}→{c_out} k{k} s{stride} p{padding} {h}×{w}: {diff}"
            );
        }
        Ok(())
    }

    #[test]
    fn compute_no_weight_gradient_for_plain_weights() -> Result<()> {
        let dev = Device::Cpu;
        let layer = Conv2d::new(Tensor::ones((2, 1, 3, 3), DType::F32, &dev)?, None, 1)?;
        let x = Var::from_tensor(&Tensor::ones((1, 1, 4, 4), DType::F32, &dev)?)?;
        let grads = layer.forward(x.as_tensor())?.sum_all()?.backward()?;
        assert!(grads.get(&layer.weight).is_none());
        assert!(grads.get(x.as_tensor()).is_some());
        Ok(())
    }

    #[test]
    fn train_like_candle_with_variable_weights() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 3, 3), &dev)?)?;
        let layer = Conv2d::new(w.as_tensor().clone(), None, 1)?;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 5, 5), &dev)?;
        let ours = layer.forward(&x)?.sum_all()?.backward()?;
        let theirs = x.conv2d(w.as_tensor(), 1, 1, 1, 1)?.sum_all()?.backward()?;
        let diff = max_abs_diff(
            ours.get(w.as_tensor()).unwrap(),
            theirs.get(w.as_tensor()).unwrap(),
        )?;
        assert!(diff < 1e-4);
        Ok(())
    }
}
