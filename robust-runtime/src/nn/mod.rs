//! Layers whose gradients the attacks depend on.
//!
//! Two candle 0.11 behaviours are avoided here:
//!
//! - **Wrong gradients at tied maxima.** candle's own `max_pool2d` backward gives *every* tied
//!   maximum of a window the full gradient. Ties are not rare: on a blank background a
//!   convolution outputs its bias everywhere, so after ReLU each 2×2 window holds four equal
//!   positive values, and candle's input gradient there is four times too large and spread over
//!   pixels PyTorch leaves alone. That changes which pixels FGSM/PGD move (5 of 500 CNN
//!   predictions under FGSM at ε = 0.1 differed from torchattacks before this layer).
//!   [`max_pool2d`] sends the gradient to the first maximum of each window in row-major order,
//!   as PyTorch's CPU and CUDA kernels do.
//! - **Slow, wasted backward work.** candle's backward of `conv2d` and `matmul` always computes
//!   the weight gradient, even when the weights are plain tensors that nothing asks about, and
//!   takes the convolution's input gradient through its slow CPU `conv_transpose2d`. An attack
//!   only needs the gradient with respect to the input. [`Conv2d`] and [`Linear`] keep candle's
//!   forward kernels but, for loaded (non-variable) weights, compute the input gradient only —
//!   for the convolution as a `conv2d` with the flipped, transposed kernel, which candle runs
//!   through its fast im2col + GEMM path. With trainable weights they are plain candle layers.
//!
//! All three attach their backward pass to candle's forward value with a custom op whose
//! forward hands over that value's storage, so they run on every device candle supports.
//!
//! On the CPU, a [`Sequential`] or a zoo network with plain f32 weights does not go through
//! these layers at all during attacks: [`crate::Model`] compiles it into the engine (`engine`,
//! a forward pass and input gradient on reused f32 buffers without autograd; see the README's
//! "Speed: the engine"), with the same semantics, first-maximum pooling included.

mod conv;
pub(crate) mod engine;
mod graft;
mod graph;
mod linear;
mod sequential;
pub(crate) mod simd;

pub use conv::{conv2d, conv_transpose2d, flipped_kernel, Conv2d};
pub(crate) use engine::{Engine, Node, Source, Spec};
pub use graph::Graph;
pub use linear::Linear;
pub(crate) use sequential::channel_shape;
pub use sequential::{Layer, Sequential, SequentialBuilder};

use candle_core::{DType, Device, Result, Storage, Tensor, WithDType, D};

use graft::graft;
use rayon::prelude::*;

/// Max pooling with a `k × k` window and stride `k` (PyTorch's `nn.MaxPool2d(k)`: floor mode,
/// trailing rows and columns that do not fill a window are dropped), on `N × C × H × W`.
///
/// The forward value is candle's `max_pool2d`; the backward pass sends each window's
/// gradient to its first maximum (row-major) only.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// let x = Var::new(&[[[[1.0f32, 1.0], [0.0, 1.0]]]], &Device::Cpu)?;
/// let y = robust_runtime::nn::max_pool2d(x.as_tensor(), 2)?;
/// let grad = y.sum_all()?.backward()?.get(x.as_tensor()).unwrap().flatten_all()?.to_vec1::<f32>()?;
/// assert_eq!(grad, vec![1.0, 0.0, 0.0, 0.0]); // candle's own max_pool2d gives [1, 1, 0, 1]
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn max_pool2d(x: &Tensor, k: usize) -> Result<Tensor> {
    x.dims4()?;
    let value = x.detach().max_pool2d(k)?;
    graft(x, value, "max_pool2d-first-max", move |arg, _, grad| {
        first_max_grad(arg, grad, k, false)
    })
}

/// `max_pool2d(relu(x), k)` in one step, as PyTorch's `nn.ReLU()` followed by
/// `nn.MaxPool2d(k)`.
///
/// The value is the same (ReLU and the maximum commute, so it is computed as ReLU of the pooled
/// tensor). The gradient goes to the first maximum of each window whose maximum is positive,
/// as PyTorch's ReLU backward passes gradient only where its output is positive. One graph node
/// instead of two saves candle's full-size ReLU backward (comparison, conversion, product) and
/// a gradient accumulation.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// let x = Var::new(&[[[[-1.0f32, -2.0, 3.0, 3.0]]]], &Device::Cpu)?;
/// let y = robust_runtime::nn::relu_max_pool2d(x.as_tensor(), 1)?;
/// let grad = y.sum_all()?.backward()?.get(x.as_tensor()).unwrap().flatten_all()?.to_vec1::<f32>()?;
/// assert_eq!(grad, vec![0.0, 0.0, 1.0, 1.0]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn relu_max_pool2d(x: &Tensor, k: usize) -> Result<Tensor> {
    x.dims4()?;
    let value = x.detach().max_pool2d(k)?.relu()?;
    graft(
        x,
        value,
        "relu_max_pool2d-first-max",
        move |arg, _, grad| first_max_grad(arg, grad, k, true),
    )
}

/// The input gradient of a `k × k`, stride-`k` max pool: each window's output gradient goes to
/// the window's first maximum (row-major), zeros elsewhere; with `relu`, only where that
/// maximum is positive.
fn first_max_grad(x: &Tensor, grad: &Tensor, k: usize, relu: bool) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == grad.dtype() {
        let (x, grad) = (x.contiguous()?, grad.contiguous()?);
        match x.dtype() {
            DType::F32 => return first_max_grad_cpu::<f32>(&x, &grad, k, relu),
            DType::F64 => return first_max_grad_cpu::<f64>(&x, &grad, k, relu),
            _ => {}
        }
    }
    first_max_grad_tensors(x, grad, k, relu)
}

/// [`first_max_grad`] in one pass over contiguous CPU tensors.
fn first_max_grad_cpu<T: WithDType + PartialOrd>(
    x: &Tensor,
    grad: &Tensor,
    k: usize,
    relu: bool,
) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (oh, ow) = (h / k, w / k);
    if n * c * oh * ow == 0 {
        return x.zeros_like();
    }
    let mut out = vec![T::zero(); n * c * h * w];
    cpu_values(x, "max_pool2d backward input", |xv: &[T]| {
        cpu_values(grad, "max_pool2d backward gradient", |gv: &[T]| {
            first_max_scatter(&mut out, xv, gv, (h, w), (oh, ow), k, relu);
            Ok(())
        })
    })?;
    Tensor::from_vec(out, x.shape(), &Device::Cpu)
}

/// `bias`, or zeros for each of `weight`'s output rows (dimension 0): a layer without a bias as a
/// [`Layer`] of a network, which always has one.
fn bias_or_zeros(bias: Option<&Tensor>, weight: &Tensor) -> Result<Tensor> {
    match bias {
        Some(b) => Ok(b.clone()),
        None => Tensor::zeros(weight.dim(0)?, weight.dtype(), weight.device()),
    }
}

/// Runs `f` on the values of a contiguous CPU tensor; an error naming `what` otherwise.
pub(crate) fn cpu_values<T: WithDType, R>(
    t: &Tensor,
    what: &str,
    f: impl FnOnce(&[T]) -> Result<R>,
) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(storage) = &*storage else {
        candle_core::bail!("{what}: not on the CPU")
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{what}: not contiguous")
    };
    f(&storage.as_slice::<T>()?[start..end])
}

/// The scatter of [`first_max_grad_cpu`]: plane by plane, each window's gradient to its first
/// maximum.
fn first_max_scatter<T: WithDType + PartialOrd>(
    out: &mut [T],
    xv: &[T],
    gv: &[T],
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
    k: usize,
    relu: bool,
) {
    let planes = out.par_chunks_mut(h * w).zip(xv.par_chunks(h * w));
    planes
        .zip(gv.par_chunks(oh * ow))
        .for_each(|((out, xp), gp)| {
            for i in 0..oh {
                for j in 0..ow {
                    let mut best = (i * k) * w + j * k;
                    let mut max = xp[best];
                    for di in 0..k {
                        let row = (i * k + di) * w + j * k;
                        for (pos, &v) in xp[row..row + k].iter().enumerate() {
                            if v > max {
                                (best, max) = (row + pos, v);
                            }
                        }
                    }
                    if !relu || max > T::zero() {
                        out[best] = gp[i * ow + j];
                    }
                }
            }
        });
}

/// [`first_max_grad`] with tensor operations, for every device.
fn first_max_grad_tensors(x: &Tensor, grad: &Tensor, k: usize, relu: bool) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (oh, ow) = (h / k, w / k);
    let x = x.narrow(2, 0, oh * k)?.narrow(3, 0, ow * k)?;
    // N × C × OH × k × OW × k  →  N × C × OH × OW × k·k, each window's values in row-major order.
    let windows = x
        .reshape((n, c, oh, k, ow, k))?
        .permute((0, 1, 2, 4, 3, 5))?
        .reshape((n, c, oh, ow, k * k))?;
    // candle's argmax keeps the first maximum.
    let first_max = windows.argmax_keepdim(D::Minus1)?;
    let positions = Tensor::arange(0u32, (k * k) as u32, x.device())?;
    let mask = first_max.broadcast_eq(&positions)?.to_dtype(x.dtype())?;
    let grad = if relu {
        let pooled = x.max_pool2d(k)?;
        (grad * pooled.gt(&pooled.zeros_like()?)?.to_dtype(grad.dtype())?)?
    } else {
        grad.clone()
    };
    let g = mask
        .broadcast_mul(&grad.unsqueeze(D::Minus1)?)?
        .reshape((n, c, oh, ow, k, k))?
        .permute((0, 1, 2, 4, 3, 5))?
        .reshape((n, c, oh * k, ow * k))?;
    g.pad_with_zeros(2, 0, h - oh * k)?
        .pad_with_zeros(3, 0, w - ow * k)
}

/// Networks with seeded random weights, for the tests of the modules that run them.
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::HashMap;

    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};

    use super::{Sequential, SequentialBuilder};
    use crate::Rng;

    /// `builder`'s network with seeded normal weights (positive variances for batch norm), as
    /// plain tensors.
    pub(crate) fn random_network(
        builder: SequentialBuilder,
        seed: u64,
    ) -> crate::Result<Sequential> {
        let varmap = VarMap::new();
        builder
            .clone()
            .build(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
        let mut rng = Rng::seed_from_u64(seed);
        let mut tensors = HashMap::new();
        let mut names: Vec<_> = varmap.data().lock().unwrap().keys().cloned().collect();
        names.sort();
        for name in names {
            let shape = varmap.data().lock().unwrap()[&name].dims().to_vec();
            let n = shape.iter().product();
            let mut v = rng.normal_vec(n);
            if name.ends_with("running_var") {
                v.iter_mut().for_each(|v| *v = v.abs() + 0.5);
            }
            tensors.insert(name, Tensor::from_vec(v, shape, &Device::Cpu)?);
        }
        builder.build(VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu))
    }

    /// `net` with its weights as variables: the engine refuses it, so everything that runs it
    /// takes the tensor-operation path (the reference for the engine's numbers).
    pub(crate) fn on_tensors_only(net: &Sequential) -> crate::Result<Sequential> {
        let net = net.map_tensors(|t| Ok(candle_core::Var::from_tensor(t)?.as_tensor().clone()))?;
        assert!(super::Engine::compile(&net, None).is_none());
        Ok(net)
    }
}

#[cfg(test)]
mod should {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn pool_to_the_same_values_as_candle() -> Result<()> {
        let x = Tensor::arange(0f32, 2.0 * 3.0 * 6.0 * 5.0, &Device::Cpu)?
            .reshape((2, 3, 6, 5))?
            .sin()?;
        let ours = max_pool2d(&x, 2)?;
        let theirs = x.max_pool2d(2)?;
        assert_eq!(ours.dims(), theirs.dims());
        assert_eq!(
            ours.flatten_all()?.to_vec1::<f32>()?,
            theirs.flatten_all()?.to_vec1::<f32>()?
        );
        Ok(())
    }

    fn input_grad(
        f: impl Fn(&Tensor) -> Result<Tensor>,
        x: &Tensor,
        r: &Tensor,
    ) -> Result<Vec<f32>> {
        let v = Var::from_tensor(x)?;
        let grads = (f(v.as_tensor())? * r)?.sum_all()?.backward()?;
        grads
            .get(v.as_tensor())
            .unwrap()
            .flatten_all()?
            .to_vec1::<f32>()
    }

    /// Random values rounded to a coarse grid, so that windows hold ties.
    fn tied(shape: (usize, usize, usize, usize)) -> Result<Tensor> {
        (Tensor::randn(0f32, 1.0, shape, &Device::Cpu)? * 2.0)?.round()? / 2.0
    }

    #[test]
    fn fuse_relu_into_the_pool_with_the_same_value_and_gradient() -> Result<()> {
        let x = (Tensor::randn(0f32, 1.0, (3, 4, 7, 9), &Device::Cpu)? + 0.3)?;
        let r = Tensor::randn(0f32, 1.0, (3, 4, 3, 4), &Device::Cpu)?;
        let fused = relu_max_pool2d(&x, 2)?.flatten_all()?.to_vec1::<f32>()?;
        let apart = max_pool2d(&x.relu()?, 2)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(fused, apart);
        assert_eq!(
            input_grad(|x| relu_max_pool2d(x, 2), &x, &r)?,
            input_grad(|x| max_pool2d(&x.relu()?, 2), &x, &r)?
        );
        Ok(())
    }

    #[test]
    fn pass_no_gradient_through_a_window_without_a_positive_value() -> Result<()> {
        let x = Var::new(
            &[[[[0.0f32, -1.0, 2.0, 0.0], [-1.0, -3.0, 1.0, 2.0]]]],
            &Device::Cpu,
        )?;
        let y = relu_max_pool2d(x.as_tensor(), 2)?;
        let g = y.sum_all()?.backward()?;
        let g = g
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(g, vec![0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        Ok(())
    }

    #[test]
    fn give_the_same_gradient_on_the_cpu_path_and_the_tensor_path() -> Result<()> {
        for (shape, k) in [((2, 3, 6, 5), 2), ((1, 2, 9, 9), 3)] {
            let x = tied(shape)?;
            let out = (shape.0, shape.1, shape.2 / k, shape.3 / k);
            let g = Tensor::randn(0f32, 1.0, out, &Device::Cpu)?;
            for relu in [false, true] {
                let cpu = first_max_grad(&x, &g, k, relu)?;
                let tensors = first_max_grad_tensors(&x, &g, k, relu)?;
                assert_eq!(
                    cpu.flatten_all()?.to_vec1::<f32>()?,
                    tensors.flatten_all()?.to_vec1::<f32>()?
                );
            }
        }
        Ok(())
    }

    #[test]
    fn send_the_gradient_to_the_first_maximum_only() -> Result<()> {
        let x = Var::new(
            &[[[[2.0f32, 2.0, 0.0, 1.0], [2.0, 2.0, 3.0, 1.0]]]],
            &Device::Cpu,
        )?;
        let y = max_pool2d(x.as_tensor(), 2)?;
        let grads = (y * Tensor::new(&[[[[10.0f32, 100.0]]]], &Device::Cpu)?)?
            .sum_all()?
            .backward()?;
        let g = grads
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(g, vec![10.0, 0.0, 0.0, 0.0, 0.0, 0.0, 100.0, 0.0]);
        Ok(())
    }
}
