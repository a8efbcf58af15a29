//! Attack objectives: cross-entropy and the Carlini–Wagner margin.
//!
//! Every objective is written as a per-sample quantity that the attack *increases*:
//!
//! | loss | untargeted (label y) | targeted (target t) |
//! |---|---|---|
//! | cross-entropy | `CE(z, y)` | `−CE(z, t)` |
//! | CW margin (Carlini & Wagner 2017, f₆ with κ = 0) | `max_{j≠y} z_j − z_y` | `z_t − max_{j≠t} z_j` |
//!
//! The CW margin is not clamped: it keeps pushing past the decision boundary, which gives
//! PGD-CW (Madry et al. 2018 use it as a second attack) its use beside cross-entropy.

use candle_core::{DType, Tensor, D};

use crate::{Error, Result};

/// The loss an attack ascends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Loss {
    /// Cross-entropy of the softmax of the logits (`"ce"`).
    #[default]
    CrossEntropy,
    /// Carlini–Wagner logit margin (`"cw"`).
    CwMargin,
}

impl Loss {
    /// Names accepted by [`Loss::from_name`].
    pub const NAMES: &'static [&'static str] = &["ce", "cw"];

    /// `"ce"` or `"cw"`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "ce" => Ok(Loss::CrossEntropy),
            "cw" => Ok(Loss::CwMargin),
            other => Err(Error::unknown("loss", other, Self::NAMES)),
        }
    }

    /// The short name.
    pub fn name(&self) -> &'static str {
        match self {
            Loss::CrossEntropy => "ce",
            Loss::CwMargin => "cw",
        }
    }
}

/// A loss bound to the classes of one batch: the true labels, or the targets of a targeted attack.
pub(crate) struct Objective {
    loss: Loss,
    /// `N × C` u8 mask of the class each sample's objective refers to.
    class_mask: Tensor,
    /// The same mask as `f32`.
    onehot: Tensor,
    targeted: bool,
}

impl Objective {
    /// `classes` is `N` u32 labels (untargeted) or targets (targeted); `num_classes` is `C`.
    pub(crate) fn new(
        loss: Loss,
        classes: &Tensor,
        num_classes: usize,
        targeted: bool,
    ) -> Result<Self> {
        let all = Tensor::arange(0u32, num_classes as u32, classes.device())?;
        let class_mask = classes
            .to_dtype(DType::U32)?
            .unsqueeze(1)?
            .broadcast_eq(&all.unsqueeze(0)?)?;
        let onehot = class_mask.to_dtype(DType::F32)?;
        Ok(Objective {
            loss,
            class_mask,
            onehot,
            targeted,
        })
    }

    /// The per-sample objective, shape `N`, differentiable in `logits`.
    pub(crate) fn per_sample(&self, logits: &Tensor) -> Result<Tensor> {
        let logits = logits.to_dtype(DType::F32)?;
        let own = (&logits * &self.onehot)?.sum(D::Minus1)?;
        let value = match self.loss {
            Loss::CrossEntropy => {
                let ce = (logsumexp(&logits)? - own)?;
                if self.targeted {
                    ce.neg()?
                } else {
                    ce
                }
            }
            Loss::CwMargin => {
                let neg_inf = Tensor::full(f32::NEG_INFINITY, logits.shape(), logits.device())?;
                let other = self
                    .class_mask
                    .where_cond(&neg_inf, &logits)?
                    .max(D::Minus1)?;
                if self.targeted {
                    (own - other)?
                } else {
                    (other - own)?
                }
            }
        };
        Ok(value)
    }
}

/// `log Σ_j exp(z_j)` per row, stabilised by the row maximum.
fn logsumexp(logits: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let sum = logits.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?;
    Ok((sum.log()? + max)?.squeeze(D::Minus1)?)
}

#[cfg(test)]
mod should {
    use super::*;
    use candle_core::Device;

    fn logits() -> Tensor {
        Tensor::new(&[[2.0f32, 1.0, 0.0], [0.0, 0.0, 5.0]], &Device::Cpu).unwrap()
    }

    #[test]
    fn compute_cross_entropy_as_pytorch_does() -> Result<()> {
        let y = Tensor::new(&[0u32, 1], &Device::Cpu)?;
        let v = Objective::new(Loss::CrossEntropy, &y, 3, false)?
            .per_sample(&logits())?
            .to_vec1::<f32>()?;
        // torch.nn.functional.cross_entropy(z, y, reduction="none") = [0.4076059, 5.0133862] (torch 2.15)
        assert!(
            (v[0] - 0.407_606).abs() < 1e-5 && (v[1] - 5.013_386).abs() < 1e-5,
            "{v:?}"
        );
        Ok(())
    }

    #[test]
    fn compute_the_margin_to_the_best_other_class() -> Result<()> {
        let y = Tensor::new(&[0u32, 1], &Device::Cpu)?;
        let v = Objective::new(Loss::CwMargin, &y, 3, false)?
            .per_sample(&logits())?
            .to_vec1::<f32>()?;
        assert_eq!(v, vec![-1.0, 5.0]);
        let t = Objective::new(Loss::CwMargin, &y, 3, true)?
            .per_sample(&logits())?
            .to_vec1::<f32>()?;
        assert_eq!(t, vec![1.0, -5.0]);
        Ok(())
    }

    #[test]
    fn reject_unknown_loss_names() {
        assert_eq!(
            Loss::from_name("mse").unwrap_err().to_string(),
            "unknown loss `mse`; expected one of: ce, cw"
        );
    }
}
