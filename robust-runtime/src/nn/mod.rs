//! Layers whose gradients the attacks depend on.
//!
//! candle 0.11's own `max_pool2d` backward gives *every* tied maximum of a window the full
//! gradient. Ties are not rare: on a blank background a convolution outputs its bias everywhere,
//! so after ReLU each 2×2 window holds four equal positive values, and candle's input gradient
//! there is four times too large and spread over pixels PyTorch leaves alone. That changes which
//! pixels FGSM/PGD move (5 of 500 CNN predictions under FGSM at ε = 0.1 differed from
//! torchattacks before this layer). [`max_pool2d`] sends the gradient to the first maximum of
//! each window in row-major order, as PyTorch's CPU and CUDA kernels do.

use candle_core::{Result, Tensor, D};

/// Max pooling with a `k × k` window and stride `k` (PyTorch's `nn.MaxPool2d(k)`: floor mode,
/// trailing rows and columns that do not fill a window are dropped), on `N × C × H × W`.
///
/// The forward value equals candle's `max_pool2d`; the backward pass sends each window's
/// gradient to its first maximum only.
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
    let (n, c, h, w) = x.dims4()?;
    let (oh, ow) = (h / k, w / k);
    let x = x.narrow(2, 0, oh * k)?.narrow(3, 0, ow * k)?;
    // N × C × OH × k × OW × k  →  N × C × OH × OW × k·k, each window's values in row-major order.
    let windows = x
        .reshape((n, c, oh, k, ow, k))?
        .permute((0, 1, 2, 4, 3, 5))?
        .reshape((n, c, oh, ow, k * k))?;
    // candle's argmax keeps the first maximum; the mask is a constant for autograd, so the
    // gradient of Σ windows·mask reaches that one position only.
    let first_max = windows.detach().argmax_keepdim(D::Minus1)?;
    let positions = Tensor::arange(0u32, (k * k) as u32, x.device())?;
    let mask = first_max.broadcast_eq(&positions)?.to_dtype(x.dtype())?;
    (windows * mask)?.sum(D::Minus1)
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
