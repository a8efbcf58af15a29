//! Attack objectives: cross-entropy and the Carlini–Wagner margin.
//!
//! Every objective is written as a per-sample quantity that the attack *increases*:
//!
//! | loss | untargeted (label y) | targeted (target t) |
//! |---|---|---|
//! | cross-entropy | `CE(z, y)` | `−CE(z, t)` |
//! | CW margin (Carlini & Wagner 2017, f₆ with κ = 0) | `max_{j≠y} z_j − z_y` | `z_t − max_{j≠t} z_j` |
//! | DLR (Croce & Hein 2020) | `(max_{j≠y} z_j − z_y) / (z_π1 − z_π3)` | `(z_t − z_y) / (z_π1 − (z_π3 + z_π4)/2)` |
//!
//! where `z_π1 ≥ z_π2 ≥ …` are the sorted logits (+1e-12 in the denominators). DLR is invariant
//! to shifting and rescaling the logits, so it does not saturate like cross-entropy; it needs at
//! least 3 classes untargeted and 4 targeted.
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
    /// Difference of logits ratio (`"dlr"`), Croce & Hein 2020.
    Dlr,
}

impl Loss {
    /// Names accepted by [`Loss::from_name`].
    pub const NAMES: &'static [&'static str] = robust_spec::names::LOSSES;

    /// `"ce"` or `"cw"`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "ce" => Ok(Loss::CrossEntropy),
            "cw" => Ok(Loss::CwMargin),
            "dlr" => Ok(Loss::Dlr),
            other => Err(Error::unknown("loss", other, Self::NAMES)),
        }
    }

    /// The short name.
    pub fn name(&self) -> &'static str {
        match self {
            Loss::CrossEntropy => "ce",
            Loss::CwMargin => "cw",
            Loss::Dlr => "dlr",
        }
    }

    /// The fewest classes the loss is defined for (targeted or not).
    pub fn min_classes(&self, targeted: bool) -> usize {
        match (self, targeted) {
            (Loss::Dlr, false) => 3,
            (Loss::Dlr, true) => 4,
            _ => 2,
        }
    }
}

/// `N × C` masks of one class per sample, as u8 and as f32.
struct ClassMask {
    mask: Tensor,
    onehot: Tensor,
}

impl ClassMask {
    fn new(classes: &Tensor, num_classes: usize) -> Result<Self> {
        let all = Tensor::arange(0u32, num_classes as u32, classes.device())?;
        let mask = classes
            .to_dtype(DType::U32)?
            .unsqueeze(1)?
            .broadcast_eq(&all.unsqueeze(0)?)?;
        let onehot = mask.to_dtype(DType::F32)?;
        Ok(ClassMask { mask, onehot })
    }

    /// `z_c` per sample.
    fn pick(&self, logits: &Tensor) -> Result<Tensor> {
        Ok((logits * &self.onehot)?.sum(D::Minus1)?)
    }

    /// `max_{j≠c} z_j` per sample.
    fn best_other(&self, logits: &Tensor) -> Result<Tensor> {
        let neg_inf = Tensor::full(f32::NEG_INFINITY, logits.shape(), logits.device())?;
        Ok(self.mask.where_cond(&neg_inf, logits)?.max(D::Minus1)?)
    }
}

/// A loss bound to one batch: its true labels and, for a targeted attack, its targets.
pub(crate) struct Objective {
    loss: Loss,
    labels: ClassMask,
    targets: Option<ClassMask>,
    /// The labels and targets as host indices, for [`Objective::cross_entropy_host`].
    ids: (Vec<u32>, Option<Vec<u32>>),
}

impl Objective {
    /// `labels` and `targets` are `N` u32 class indices; `num_classes` is `C`.
    pub(crate) fn new(
        loss: Loss,
        labels: &Tensor,
        targets: Option<&Tensor>,
        num_classes: usize,
    ) -> Result<Self> {
        let needed = loss.min_classes(targets.is_some());
        if num_classes < needed {
            return Err(Error::param(
                "loss",
                format!("{} on a model with {num_classes} classes", loss.name()),
                format!("a model with at least {needed} classes (use loss = \"ce\" or \"cw\")"),
            ));
        }
        let ids = (
            labels.to_dtype(DType::U32)?.to_vec1::<u32>()?,
            targets
                .map(|t| t.to_dtype(DType::U32)?.to_vec1::<u32>())
                .transpose()?,
        );
        Ok(Objective {
            loss,
            ids,
            labels: ClassMask::new(labels, num_classes)?,
            targets: targets
                .map(|t| ClassMask::new(t, num_classes))
                .transpose()?,
        })
    }

    /// The per-sample objective, shape `N`, differentiable in `logits`.
    pub(crate) fn per_sample(&self, logits: &Tensor) -> Result<Tensor> {
        let logits = logits.to_dtype(DType::F32)?;
        let y = &self.labels;
        let value = match (self.loss, &self.targets) {
            (Loss::CrossEntropy, None) => (logsumexp(&logits)? - y.pick(&logits)?)?,
            (Loss::CrossEntropy, Some(t)) => (t.pick(&logits)? - logsumexp(&logits)?)?,
            (Loss::CwMargin, None) => (y.best_other(&logits)? - y.pick(&logits)?)?,
            (Loss::CwMargin, Some(t)) => (t.pick(&logits)? - t.best_other(&logits)?)?,
            (Loss::Dlr, targets) => {
                // Sorted descending through gather, so the gradient reaches the ranked logits.
                let sorted = logits.gather(&logits.arg_sort_last_dim(false)?, D::Minus1)?;
                let rank = |i: usize| sorted.narrow(D::Minus1, i, 1)?.squeeze(D::Minus1);
                match targets {
                    None => {
                        let margin = (y.best_other(&logits)? - y.pick(&logits)?)?;
                        margin.div(&((rank(0)? - rank(2)?)? + 1e-12)?)?
                    }
                    Some(t) => {
                        let margin = (t.pick(&logits)? - y.pick(&logits)?)?;
                        let scale = ((rank(0)? - ((rank(2)? + rank(3)?)? * 0.5)?)? + 1e-12)?;
                        margin.div(&scale)?
                    }
                }
            }
        };
        Ok(value)
    }
}

impl Objective {
    /// For cross-entropy, the per-sample objective and its gradient with respect to the logits
    /// (`logits`: `N × classes` row-major, host values), computed directly: `softmax(z) − e_y`
    /// untargeted, `e_t − softmax(z)` targeted, with the values of [`Objective::per_sample`]
    /// (`log Σ exp(z − max) + max − z_y`). `None` for the other losses, whose gradient comes
    /// from candle's autograd.
    pub(crate) fn cross_entropy_host(
        &self,
        logits: &[f32],
        classes: usize,
    ) -> Option<(Vec<f32>, Vec<f32>)> {
        if self.loss != Loss::CrossEntropy || classes == 0 {
            return None;
        }
        let (labels, targets) = &self.ids;
        let n = logits.len() / classes;
        let fits = |ids: &[u32]| ids.len() == n && ids.iter().all(|&c| (c as usize) < classes);
        if !fits(labels) || targets.as_ref().is_some_and(|t| !fits(t)) {
            return None;
        }
        let (mut value, mut grad) = (vec![0f32; n], vec![0f32; n * classes]);
        for (i, (z, g)) in logits
            .chunks(classes)
            .zip(grad.chunks_mut(classes))
            .enumerate()
        {
            let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            for (g, &z) in g.iter_mut().zip(z) {
                *g = (z - max).exp();
            }
            let sum: f32 = g.iter().sum();
            let lse = sum.ln() + max;
            g.iter_mut().for_each(|g| *g /= sum);
            let class = targets.as_ref().map_or(labels[i], |t| t[i]) as usize;
            g[class] -= 1.0;
            if targets.is_some() {
                value[i] = z[class] - lse;
                g.iter_mut().for_each(|g| *g = -*g);
            } else {
                value[i] = lse - z[class];
            }
        }
        Some((value, grad))
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

    fn eval(
        loss: Loss,
        z: &Tensor,
        y: &[u32],
        t: Option<&[u32]>,
        classes: usize,
    ) -> Result<Vec<f32>> {
        let y = Tensor::new(y, &Device::Cpu)?;
        let t = t.map(|t| Tensor::new(t, &Device::Cpu)).transpose()?;
        Ok(Objective::new(loss, &y, t.as_ref(), classes)?
            .per_sample(z)?
            .to_vec1::<f32>()?)
    }

    #[test]
    fn give_cross_entropy_and_its_gradient_on_the_host_as_autograd_does() -> Result<()> {
        let z = Tensor::new(
            &[
                [2.0f32, 1.0, 0.0, -3.0],
                [0.0, 0.0, 5.0, 1.0],
                [30.0, -2.0, 29.5, 0.0],
            ],
            &Device::Cpu,
        )?;
        let y = Tensor::new(&[0u32, 1, 2], &Device::Cpu)?;
        let t = Tensor::new(&[3u32, 2, 0], &Device::Cpu)?;
        for targets in [None, Some(&t)] {
            let objective = Objective::new(Loss::CrossEntropy, &y, targets, 4)?;
            let var = candle_core::Var::from_tensor(&z)?;
            let value = objective.per_sample(var.as_tensor())?;
            let grads = value.sum_all()?.backward()?;
            let grad = grads
                .get(var.as_tensor())
                .unwrap()
                .flatten_all()?
                .to_vec1::<f32>()?;
            let flat = z.flatten_all()?.to_vec1::<f32>()?;
            let (v, g) = objective.cross_entropy_host(&flat, 4).unwrap();
            for (a, b) in v.iter().zip(value.to_vec1::<f32>()?) {
                assert!((a - b).abs() < 1e-5, "{v:?}");
            }
            for (a, b) in g.iter().zip(&grad) {
                assert!((a - b).abs() < 1e-6, "{g:?} vs {grad:?}");
            }
        }
        let cw = Objective::new(Loss::CwMargin, &y, None, 4)?;
        assert!(cw.cross_entropy_host(&[0.0; 12], 4).is_none());
        Ok(())
    }

    #[test]
    fn compute_cross_entropy_as_pytorch_does() -> Result<()> {
        let v = eval(Loss::CrossEntropy, &logits(), &[0, 1], None, 3)?;
        // torch.nn.functional.cross_entropy(z, y, reduction="none") = [0.4076059, 5.0133862] (torch 2.15)
        assert!(
            (v[0] - 0.407_606).abs() < 1e-5 && (v[1] - 5.013_386).abs() < 1e-5,
            "{v:?}"
        );
        // Targeted: minus the cross-entropy of the target.
        let t = eval(Loss::CrossEntropy, &logits(), &[2, 2], Some(&[0, 1]), 3)?;
        assert!(
            (t[0] + 0.407_606).abs() < 1e-5 && (t[1] + 5.013_386).abs() < 1e-5,
            "{t:?}"
        );
        Ok(())
    }

    #[test]
    fn compute_the_margin_to_the_best_other_class() -> Result<()> {
        assert_eq!(
            eval(Loss::CwMargin, &logits(), &[0, 1], None, 3)?,
            vec![-1.0, 5.0]
        );
        // Targets 1 and 2; the labels play no part in the targeted CW margin.
        assert_eq!(
            eval(Loss::CwMargin, &logits(), &[0, 1], Some(&[1, 2]), 3)?,
            vec![-1.0, 5.0]
        );
        Ok(())
    }

    #[test]
    fn compute_dlr_as_autoattack_does() -> Result<()> {
        // torchattacks' APGD.dlr_loss: −(z_y − max_{j≠y} z_j)/(z_π1 − z_π3 + 1e-12). For
        // z = [4, 1, 2, 0]: y = 0 gives −(4 − 2)/3 = −2/3; y = 3 gives −(0 − 4)/3 = 4/3.
        let z = Tensor::new(
            &[[4.0f32, 1.0, 2.0, 0.0], [4.0, 1.0, 2.0, 0.0]],
            &Device::Cpu,
        )?;
        let v = eval(Loss::Dlr, &z, &[0, 3], None, 4)?;
        assert!(
            (v[0] + 2.0 / 3.0).abs() < 1e-6 && (v[1] - 4.0 / 3.0).abs() < 1e-6,
            "{v:?}"
        );
        // APGDT's targeted DLR: −(z_y − z_t)/(z_π1 − (z_π3 + z_π4)/2 + 1e-12);
        // y = 0, t = 2: −(4 − 2)/(4 − 0.5) = −4/7.
        let v = eval(Loss::Dlr, &z, &[0, 3], Some(&[2, 2]), 4)?;
        assert!(
            (v[0] + 4.0 / 7.0).abs() < 1e-6 && (v[1] - 4.0 / 7.0).abs() < 1e-6,
            "{v:?}"
        );
        Ok(())
    }

    #[test]
    fn send_the_dlr_gradient_to_the_ranked_logits() -> Result<()> {
        let z = candle_core::Var::new(&[[4.0f32, 1.0, 2.0, 0.0]], &Device::Cpu)?;
        let y = Tensor::new(&[0u32], &Device::Cpu)?;
        let v = Objective::new(Loss::Dlr, &y, None, 4)?.per_sample(z.as_tensor())?;
        let g = v
            .sum_all()?
            .backward()?
            .get(z.as_tensor())
            .unwrap()
            .flatten_all()?
            .to_vec1::<f32>()?;
        // f = (z2 − z0)/(z0 − z1): ∂/∂z0 = (−(z0 − z1) − (z2 − z0))/(z0 − z1)² = −1/9,
        // ∂/∂z1 = (z2 − z0)/(z0 − z1)² = −2/9, ∂/∂z2 = 1/3, ∂/∂z3 = 0.
        let want = [-1.0 / 9.0, -2.0 / 9.0, 1.0 / 3.0, 0.0];
        assert!(
            g.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
            "{g:?}"
        );
        Ok(())
    }

    #[test]
    fn reject_dlr_on_too_few_classes() {
        let err = eval(Loss::Dlr, &logits(), &[0, 1], Some(&[1, 2]), 3).unwrap_err();
        assert!(err.to_string().contains("at least 4 classes"), "{err}");
        assert!(eval(Loss::Dlr, &logits(), &[0, 1], None, 3).is_ok());
    }

    #[test]
    fn reject_unknown_loss_names() {
        let err = Loss::from_name("mse").unwrap_err().to_string();
        assert_eq!(err, "unknown loss `mse`; expected one of: ce, cw, dlr");
    }
}
