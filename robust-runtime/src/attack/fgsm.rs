//! The fast gradient sign method (Goodfellow, Shlens & Szegedy, "Explaining and Harnessing
//! Adversarial Examples", ICLR 2015): one step of size ε along the sign of the input gradient
//! (L∞), or along the normalised gradient (L2, the "fast gradient method"), then a clamp into the
//! input domain. As `torchattacks.FGSM`.

use candle_core::Tensor;

use super::{check_positive, kernel, Attack, AttackBatch, Loss, Norm, ThreatModel};
use crate::model::Model;
use crate::rng::Rng;
use crate::Result;

/// Hyper-parameters of [`Fgsm`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FgsmConfig {
    /// Radius of the threat model, in input units (default 0.1; must be finite and > 0).
    pub eps: f64,
    /// Norm of the threat model (default L∞).
    pub norm: Norm,
    /// Loss whose gradient is followed (default cross-entropy).
    pub loss: Loss,
}

impl Default for FgsmConfig {
    fn default() -> Self {
        FgsmConfig {
            eps: 0.1,
            norm: Norm::Linf,
            loss: Loss::CrossEntropy,
        }
    }
}

/// FGSM, validated.
#[derive(Debug, Clone)]
pub struct Fgsm {
    cfg: FgsmConfig,
}

impl Fgsm {
    /// Checks the configuration before any tensor work.
    pub fn new(cfg: FgsmConfig) -> Result<Self> {
        check_positive("eps", cfg.eps)?;
        Ok(Fgsm { cfg })
    }
}

impl Attack for Fgsm {
    fn id(&self) -> &'static str {
        "fgsm"
    }

    fn describe(&self) -> String {
        format!(
            "FGSM-{} (ε = {}, {} loss)",
            self.cfg.norm.symbol(),
            self.cfg.eps,
            self.cfg.loss.name().to_uppercase()
        )
    }

    fn threat(&self) -> ThreatModel {
        ThreatModel {
            norm: self.cfg.norm,
            eps: self.cfg.eps,
        }
    }

    fn perturb(&self, model: &Model, batch: &AttackBatch<'_>, _rng: &mut Rng) -> Result<Tensor> {
        let objective = batch.objective(self.cfg.loss)?;
        let (_, grad) = kernel::objective_and_grad(model, batch.inputs, &objective)?;
        let step = (self.cfg.norm, self.cfg.eps);
        kernel::step(
            batch.inputs,
            &grad,
            batch.inputs,
            step,
            &self.threat(),
            model.domain(),
        )
    }
}
