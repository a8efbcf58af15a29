//! Fully connected layer whose backward pass computes the input gradient only.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::graft::graft;

/// `y = x Wᵀ + b`, as PyTorch's `nn.Linear` and candle's `candle_nn::Linear`, on `N × in`
/// (or more leading dimensions).
///
/// The forward value is candle's. When the weights are plain tensors (a loaded model), the
/// backward pass computes the input gradient `∇y W` only: candle's matmul backward would also
/// compute the weight gradient `xᵀ ∇y`, as costly as the forward pass, and throw it away. With
/// trainable weights (variables), the layer is candle's matmul and autograd as usual.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// A layer with `weight` (`out × in`) and an optional `bias` (`out`).
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear { weight, bias }
    }

    /// Loads `weight` (`out × in`) and `bias` (`out`), PyTorch's names, from `vb`.
    pub fn load(d_in: usize, d_out: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((d_out, d_in), "weight")?;
        let bias = vb.get(d_out, "bias")?;
        Ok(Self::new(weight, Some(bias)))
    }

    /// The same layer as a [`Layer`](super::Layer) of a network (a missing bias as zeros).
    pub(crate) fn layer(&self) -> Result<super::Layer> {
        let bias = super::bias_or_zeros(self.bias.as_ref(), &self.weight)?;
        Ok(super::Layer::Linear {
            weight: self.weight.clone(),
            bias,
        })
    }

    fn affine(&self, x: &Tensor) -> Result<Tensor> {
        let y = match x.rank() {
            2 => x.matmul(&self.weight.t()?)?,
            _ => {
                let (lead, d_in) = (x.dims()[..x.rank() - 1].to_vec(), x.dim(x.rank() - 1)?);
                let y = x.reshape(((), d_in))?.matmul(&self.weight.t()?)?;
                let mut dims = lead;
                dims.push(self.weight.dim(0)?);
                y.reshape(dims)?
            }
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    fn trainable(&self) -> bool {
        self.weight.track_op() || self.bias.as_ref().is_some_and(Tensor::track_op)
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.trainable() {
            return self.affine(x);
        }
        let value = self.affine(&x.detach())?;
        let weight = self.weight.clone();
        graft(x, value, "linear-input-grad", move |arg, _, grad| {
            let d_out = weight.dim(0)?;
            grad.reshape(((), d_out))?
                .matmul(&weight)?
                .reshape(arg.shape())
        })
    }
}

#[cfg(test)]
mod should {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn match_candle_linear_and_its_input_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let (w, b) = (
            Tensor::randn(0f32, 1.0, (7, 13), &dev)?,
            Tensor::randn(0f32, 1.0, 7, &dev)?,
        );
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (5, 13), &dev)?)?;
        let ours = Linear::new(w.clone(), Some(b.clone())).forward(x.as_tensor())?;
        let theirs = candle_nn::Linear::new(w.clone(), Some(b)).forward(x.as_tensor())?;
        let diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
            (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
        };
        assert!(diff(&ours, &theirs)? < 1e-5);
        let r = Tensor::randn(0f32, 1.0, (5, 7), &dev)?;
        let g_ours = (ours * &r)?.sum_all()?.backward()?;
        let g_theirs = (theirs * &r)?.sum_all()?.backward()?;
        let d = diff(
            g_ours.get(x.as_tensor()).unwrap(),
            g_theirs.get(x.as_tensor()).unwrap(),
        )?;
        assert!(d < 1e-4, "input gradients differ by {d}");
        assert!(g_ours.get(&w).is_none());
        Ok(())
    }
}
