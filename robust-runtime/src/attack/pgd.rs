//! Projected gradient descent (Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning
//! Models Resistant to Adversarial Attacks", ICLR 2018): iterated gradient-sign (L∞) or
//! normalised-gradient (L2) steps of size α, each followed by the projection onto the ε-ball and
//! the input domain, from a random point of the ball, with restarts that keep the worst case per
//! sample. Steps and projection follow `torchattacks.PGD` / `torchattacks.PGDL2`.

use candle_core::Tensor;

use super::{
    check_at_least_one, check_positive, kernel, Attack, AttackBatch, Loss, Norm, ThreatModel,
};
use crate::model::Model;
use crate::rng::Rng;
use crate::Result;

/// Hyper-parameters of [`Pgd`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PgdConfig {
    /// Radius of the threat model, in input units (default 0.1; finite and > 0).
    pub eps: f64,
    /// Norm of the threat model (default L∞).
    pub norm: Norm,
    /// Loss to ascend (default cross-entropy).
    pub loss: Loss,
    /// Iterations per restart (default 40, as Madry et al. on MNIST; ≥ 1).
    pub steps: usize,
    /// Step size α; `None` is 2.5·ε/steps, Madry et al.'s rule, so the iterates can cross the ball.
    pub step_size: Option<f64>,
    /// Runs from independent random starts; per sample the first success, else the highest loss,
    /// is kept (default 1; ≥ 1).
    pub restarts: usize,
    /// Start each run from a uniformly random point of the ball rather than the input (default true).
    pub random_start: bool,
}

impl Default for PgdConfig {
    fn default() -> Self {
        PgdConfig {
            eps: 0.1,
            norm: Norm::Linf,
            loss: Loss::CrossEntropy,
            steps: 40,
            step_size: None,
            restarts: 1,
            random_start: true,
        }
    }
}

/// PGD, validated.
#[derive(Debug, Clone)]
pub struct Pgd {
    cfg: PgdConfig,
    alpha: f64,
}

impl Pgd {
    /// Checks the configuration before any tensor work.
    pub fn new(cfg: PgdConfig) -> Result<Self> {
        check_positive("eps", cfg.eps)?;
        check_at_least_one("steps", cfg.steps)?;
        check_at_least_one("restarts", cfg.restarts)?;
        let alpha = cfg.step_size.unwrap_or(2.5 * cfg.eps / cfg.steps as f64);
        check_positive("step_size", alpha)?;
        Ok(Pgd { cfg, alpha })
    }

    /// The step size in use.
    pub fn step_size(&self) -> f64 {
        self.alpha
    }

    /// One run of `steps` iterations from `start`.
    fn run(
        &self,
        model: &Model,
        batch: &AttackBatch<'_>,
        objective: &super::loss::Objective,
        start: Tensor,
    ) -> Result<Tensor> {
        let threat = self.threat();
        let mut adv = start;
        for _ in 0..self.cfg.steps {
            let (_, grad) = kernel::objective_and_grad(model, &adv, objective)?;
            let step = (self.cfg.norm, self.alpha);
            adv = kernel::step(&adv, &grad, batch.inputs, step, &threat, model.domain())?;
        }
        Ok(adv)
    }
}

impl Attack for Pgd {
    fn id(&self) -> &'static str {
        "pgd"
    }

    fn describe(&self) -> String {
        let c = &self.cfg;
        format!(
            "PGD-{} (ε = {}, {} steps of α = {:.4}, {}, {} restart{}, {} loss)",
            c.norm.symbol(),
            c.eps,
            c.steps,
            self.alpha,
            if c.random_start {
                "random start"
            } else {
                "no random start"
            },
            c.restarts,
            if c.restarts == 1 { "" } else { "s" },
            c.loss.name().to_uppercase()
        )
    }

    fn threat(&self) -> ThreatModel {
        ThreatModel {
            norm: self.cfg.norm,
            eps: self.cfg.eps,
        }
    }

    fn perturb(&self, model: &Model, batch: &AttackBatch<'_>, rng: &mut Rng) -> Result<Tensor> {
        let objective = batch.objective(self.cfg.loss)?;
        let threat = self.threat();
        let mut best: Option<(Tensor, Vec<bool>, Vec<f32>)> = None;
        for _ in 0..self.cfg.restarts {
            let start = if self.cfg.random_start {
                kernel::random_start(batch.inputs, &threat, model.domain(), rng)?
            } else {
                batch.inputs.clone()
            };
            let adv = self.run(model, batch, &objective, start)?;
            if self.cfg.restarts == 1 {
                return Ok(adv);
            }
            let logits = model.logits(&adv)?;
            let value = objective.per_sample(&logits)?.to_vec1::<f32>()?;
            let pred: Vec<u32> = model.predict(&adv)?;
            let success = batch.successes(&pred)?;
            best = Some(match best {
                None => (adv, success, value),
                Some((old, old_success, old_value)) => {
                    // The worst case per sample: a success beats a failure, then the higher loss.
                    let take: Vec<u8> = (0..success.len())
                        .map(|i| u8::from((success[i], value[i]) > (old_success[i], old_value[i])))
                        .collect();
                    let take_t = Tensor::from_slice(&take, take.len(), adv.device())?;
                    let merged = kernel::select_samples(&take_t, &adv, &old)?;
                    (
                        merged,
                        pick(&take, &success, &old_success),
                        pick(&take, &value, &old_value),
                    )
                }
            });
        }
        // restarts ≥ 1 is checked in `new`, so at least one run happened.
        Ok(best
            .map(|(adv, _, _)| adv)
            .unwrap_or_else(|| batch.inputs.clone()))
    }
}

/// Per sample, `new[i]` where `take[i]` is set, else `old[i]`.
fn pick<T: Copy>(take: &[u8], new: &[T], old: &[T]) -> Vec<T> {
    take.iter()
        .zip(new.iter().zip(old))
        .map(|(&t, (&n, &o))| if t == 1 { n } else { o })
        .collect()
}
