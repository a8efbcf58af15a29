//! Auto-PGD (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
//! diverse parameter-free attacks", ICML 2020): PGD with momentum whose step size starts at 2ε
//! and is halved at checkpoints where the loss stopped increasing, restarting from the best point
//! found. Untargeted with cross-entropy or DLR loss (APGD-CE, APGD-DLR), or targeted with the
//! targeted DLR loss against each of the `target_classes` most likely wrong classes in turn
//! (APGD-T).
//!
//! The schedule follows the reference implementation as torchattacks ships it (`APGD`,
//! `APGDT`): random start at ε·t/‖t‖ (t uniform in [−1, 1]ᵈ for L∞, Gaussian for L2); momentum
//! 0.75 (none on the first step); checkpoints every k steps, k starting at 0.22·N and shrinking by
//! 0.03·N down to 0.06·N; at a checkpoint a sample's step is halved if its loss increased in at
//! most 75 % of the last k steps, or if neither its step nor its best loss changed since the last
//! checkpoint. Only samples classified correctly are attacked; a sample's output is the last
//! iterate that fooled the model, or the clean input if none did.

use candle_core::Tensor;

use super::loss::{Loss, Objective};
use super::{check_at_least_one, check_positive, kernel, Attack, AttackBatch, Norm, ThreatModel};
use crate::model::Model;
use crate::rng::Rng;
use crate::{Error, Result};

/// Hyper-parameters of [`Apgd`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ApgdConfig {
    /// Radius of the threat model, in input units (default 0.1; finite and > 0).
    pub eps: f64,
    /// Norm of the threat model (default L∞).
    pub norm: Norm,
    /// Loss: cross-entropy (APGD-CE, default) or DLR (APGD-DLR). Targeted runs always use the
    /// targeted DLR loss.
    pub loss: Loss,
    /// Iterations per run (default 100, as AutoAttack; ≥ 1).
    pub steps: usize,
    /// Independent random starts; a sample fooled by one is not attacked again (default 1; ≥ 1).
    pub restarts: usize,
    /// APGD-T: attack towards each of the `target_classes` highest-scoring wrong classes in turn
    /// (AutoAttack uses 9 on 10-class problems). 0 (default) is untargeted.
    pub target_classes: usize,
    /// Share of the last checkpoint interval in which the loss must have increased for the step
    /// size to be kept (default 0.75).
    pub rho: f64,
}

impl Default for ApgdConfig {
    fn default() -> Self {
        ApgdConfig {
            eps: 0.1,
            norm: Norm::Linf,
            loss: Loss::CrossEntropy,
            steps: 100,
            restarts: 1,
            target_classes: 0,
            rho: 0.75,
        }
    }
}

/// APGD, validated.
#[derive(Debug, Clone)]
pub struct Apgd {
    cfg: ApgdConfig,
}

impl Apgd {
    /// Checks the configuration before any tensor work.
    pub fn new(cfg: ApgdConfig) -> Result<Self> {
        check_positive("eps", cfg.eps)?;
        check_at_least_one("steps", cfg.steps)?;
        check_at_least_one("restarts", cfg.restarts)?;
        if !(cfg.rho > 0.0 && cfg.rho <= 1.0) {
            return Err(Error::param("rho", cfg.rho, "a fraction in (0, 1]"));
        }
        if cfg.target_classes == 0 && !matches!(cfg.loss, Loss::CrossEntropy | Loss::Dlr) {
            return Err(Error::param(
                "loss",
                cfg.loss.name(),
                "\"ce\" or \"dlr\" for APGD",
            ));
        }
        Ok(Apgd { cfg })
    }

    /// APGD-T against the `targets` highest wrong classes, DLR loss.
    pub fn targeted(cfg: ApgdConfig, target_classes: usize) -> Result<Self> {
        check_at_least_one("target_classes", target_classes)?;
        Apgd::new(ApgdConfig {
            target_classes,
            loss: Loss::Dlr,
            ..cfg
        })
    }

    /// One run from a random start on `x` (all rows attacked). Returns the adversarial inputs
    /// (clean rows where the run failed) and which rows were fooled.
    fn run(
        &self,
        model: &Model,
        x: &Tensor,
        batch: &AttackBatch<'_>,
        objective: &Objective,
        rng: &mut Rng,
    ) -> Result<(Tensor, Vec<bool>)> {
        let c = &self.cfg;
        let n = x.dim(0)?;
        let threat = self.threat();
        let domain = model.domain();
        let labels = batch.labels.to_vec1::<u32>()?;
        let steps_2 = ((0.22 * c.steps as f64) as usize).max(1);
        let steps_min = ((0.06 * c.steps as f64) as usize).max(1);
        let size_decr = ((0.03 * c.steps as f64) as usize).max(1);

        // Random start ε·t/‖t‖, clamped into the domain.
        let t = match c.norm {
            Norm::Linf => Tensor::from_vec(
                rng.uniform_vec(x.elem_count(), -1.0, 1.0),
                x.shape(),
                x.device(),
            )?,
            Norm::L2 => Tensor::from_vec(rng.normal_vec(x.elem_count()), x.shape(), x.device())?,
        };
        let t_norm = match c.norm {
            Norm::Linf => kernel::per_sample_linf(&t)?,
            Norm::L2 => (kernel::per_sample_l2(&t)? + 1e-12)?,
        };
        let mut x_adv =
            domain.clamp(&(x + kernel::scale_samples(&t, &(t_norm.recip()? * c.eps)?)?)?)?;

        let (mut loss, mut grad, pred) = self.evaluate(model, &x_adv, objective)?;
        let mut fooled: Vec<bool> = pred.iter().zip(&labels).map(|(p, y)| p != y).collect();
        let mut best_adv = x_adv.clone();
        let mut best = x_adv.clone();
        let mut grad_best = grad.clone();
        let mut loss_best = loss.clone();
        let mut step = vec![2.0 * c.eps; n];
        let mut x_old = x_adv.clone();
        let mut k = steps_2;
        let mut since_check = 0;
        let mut loss_best_last_check = loss_best.clone();
        let mut reduced_last_check = vec![true; n];
        // Row `i` holds the losses after step i; rows not yet written are 0, and the first
        // checkpoint reads the last row through a wrapped index, as the reference does.
        let mut history = vec![vec![0f32; n]; c.steps];

        for i in 0..c.steps {
            let a = if i > 0 { 0.75 } else { 1.0 };
            let tensors = (&x_adv, &x_old, &grad, x);
            let next = match kernel::apgd_step_linf(tensors, &step, a, &threat, domain)? {
                Some(next) => next,
                None => {
                    let momentum_from = (&x_adv - &x_old)?;
                    let step_t = Tensor::from_vec(
                        step.iter().map(|&s| s as f32).collect::<Vec<_>>(),
                        n,
                        x.device(),
                    )?;
                    let z = kernel::project(
                        &kernel::ascend_scaled(&x_adv, &grad, c.norm, &step_t)?,
                        x,
                        &threat,
                        domain,
                    )?;
                    let moved = ((&x_adv + ((&z - &x_adv)? * a)?)? + (momentum_from * (1.0 - a))?)?;
                    kernel::project(&moved, x, &threat, domain)?
                }
            };
            x_old = std::mem::replace(&mut x_adv, next);

            let (new_loss, new_grad, pred) = self.evaluate(model, &x_adv, objective)?;
            loss = new_loss;
            grad = new_grad;
            let fooled_now: Vec<u8> = pred
                .iter()
                .zip(&labels)
                .map(|(p, y)| u8::from(p != y))
                .collect();
            for (f, &now) in fooled.iter_mut().zip(&fooled_now) {
                *f |= now == 1;
            }
            best_adv = kernel::select_samples(&mask(&fooled_now, x)?, &x_adv, &best_adv)?;
            let improved: Vec<u8> = loss
                .iter()
                .zip(&loss_best)
                .map(|(l, b)| u8::from(l > b))
                .collect();
            let improved_t = mask(&improved, x)?;
            best = kernel::select_samples(&improved_t, &x_adv, &best)?;
            grad_best = kernel::select_samples(&improved_t, &grad, &grad_best)?;
            for ((b, &l), &imp) in loss_best.iter_mut().zip(&loss).zip(&improved) {
                if imp == 1 {
                    *b = l;
                }
            }
            history[i] = loss.clone();

            since_check += 1;
            if since_check == k {
                let mut flag = vec![0u8; n];
                for s in 0..n {
                    let increases = (0..k)
                        .filter(|&back| {
                            let now = history[(i + c.steps - back) % c.steps][s];
                            let before = history[(i + 2 * c.steps - back - 1) % c.steps][s];
                            now > before
                        })
                        .count();
                    let oscillating = increases as f64 <= k as f64 * c.rho;
                    let stalled = !reduced_last_check[s] && loss_best_last_check[s] >= loss_best[s];
                    flag[s] = u8::from(oscillating || stalled);
                    reduced_last_check[s] = flag[s] == 1;
                    if flag[s] == 1 {
                        step[s] /= 2.0;
                    }
                }
                loss_best_last_check = loss_best.clone();
                if flag.contains(&1) {
                    let flag_t = mask(&flag, x)?;
                    x_adv = kernel::select_samples(&flag_t, &best, &x_adv)?;
                    grad = kernel::select_samples(&flag_t, &grad_best, &grad)?;
                }
                since_check = 0;
                k = k.saturating_sub(size_decr).max(steps_min);
            }
        }
        let fooled_t = mask(&fooled.iter().map(|&f| u8::from(f)).collect::<Vec<_>>(), x)?;
        Ok((kernel::select_samples(&fooled_t, &best_adv, x)?, fooled))
    }

    /// Per-sample loss (host), input gradient and predictions at `x`.
    fn evaluate(
        &self,
        model: &Model,
        x: &Tensor,
        objective: &Objective,
    ) -> Result<(Vec<f32>, Tensor, Vec<u32>)> {
        let (loss, grad, logits) = kernel::objective_grad_logits(model, x, objective)?;
        let pred = logits.argmax(1)?.to_vec1::<u32>()?;
        Ok((loss.to_vec1::<f32>()?, grad, pred))
    }

    /// Runs `run` on the rows of `batch` still classified correctly, `restarts` times per target.
    fn attack_remaining(
        &self,
        model: &Model,
        batch: &AttackBatch<'_>,
        rng: &mut Rng,
    ) -> Result<Tensor> {
        let x = batch.inputs;
        let labels = batch.labels.to_vec1::<u32>()?;
        let clean = model.predict(x)?;
        let mut robust: Vec<bool> = clean.iter().zip(&labels).map(|(p, y)| p == y).collect();
        let mut adv = x.clone();
        // Untargeted: one pass with the configured loss. Targeted: the k-th most likely class
        // (k = 2, 3, …) by the clean logits as target in pass k − 1.
        let passes = self.cfg.target_classes.max(1);
        let ranking = if self.cfg.target_classes > 0 {
            let ranked = model
                .logits(x)?
                .arg_sort_last_dim(false)?
                .to_vec2::<u32>()?;
            self.check_classes(ranked.first().map_or(0, Vec::len))?;
            Some(ranked)
        } else {
            None
        };
        for pass in 0..passes {
            for _ in 0..self.cfg.restarts {
                let rows: Vec<u32> = (0..robust.len())
                    .filter(|&i| robust[i])
                    .map(|i| i as u32)
                    .collect();
                if rows.is_empty() {
                    return Ok(adv);
                }
                let idx = Tensor::from_slice(&rows, rows.len(), x.device())?;
                let sub_x = x.index_select(&idx, 0)?;
                let sub_y = batch.labels.index_select(&idx, 0)?;
                let targets = ranking
                    .as_ref()
                    .map(|r| {
                        let t: Vec<u32> = rows.iter().map(|&i| r[i as usize][pass + 1]).collect();
                        Tensor::from_slice(&t, t.len(), x.device())
                    })
                    .transpose()?;
                let sub = AttackBatch {
                    inputs: &sub_x,
                    labels: &sub_y,
                    targets: targets.as_ref(),
                    num_classes: batch.num_classes,
                };
                let objective = sub.objective(self.cfg.loss)?;
                let (sub_adv, fooled) = self.run(model, &sub_x, &sub, &objective, rng)?;
                // Write fooled rows back into the batch.
                let mut take = vec![0u8; robust.len()];
                let mut source = vec![0u32; robust.len()];
                for (j, &row) in rows.iter().enumerate() {
                    if fooled[j] {
                        take[row as usize] = 1;
                        robust[row as usize] = false;
                    }
                    source[row as usize] = j as u32;
                }
                let scattered = sub_adv
                    .index_select(&Tensor::from_slice(&source, source.len(), x.device())?, 0)?;
                adv = kernel::select_samples(&mask(&take, x)?, &scattered, &adv)?;
            }
        }
        Ok(adv)
    }
}

/// A per-sample u8 mask on `like`'s device.
fn mask(values: &[u8], like: &Tensor) -> Result<Tensor> {
    Ok(Tensor::from_slice(values, values.len(), like.device())?)
}

impl Attack for Apgd {
    fn check_classes(&self, num_classes: usize) -> Result<()> {
        super::check_target_classes(self.cfg.target_classes, num_classes)
    }

    fn id(&self) -> &'static str {
        if self.cfg.target_classes > 0 {
            "apgd-t"
        } else {
            "apgd"
        }
    }

    fn describe(&self) -> String {
        let c = &self.cfg;
        let what = if c.target_classes > 0 {
            format!(
                "APGD-T-{} ({} target classes, DLR loss",
                c.norm.symbol(),
                c.target_classes
            )
        } else {
            format!(
                "APGD-{} ({} loss",
                c.norm.symbol(),
                c.loss.name().to_uppercase()
            )
        };
        format!(
            "{what}, ε = {}, {} steps, {} restart{})",
            c.eps,
            c.steps,
            c.restarts,
            if c.restarts == 1 { "" } else { "s" }
        )
    }

    fn threat(&self) -> ThreatModel {
        ThreatModel {
            norm: self.cfg.norm,
            eps: self.cfg.eps,
        }
    }

    fn perturb(&self, model: &Model, batch: &AttackBatch<'_>, rng: &mut Rng) -> Result<Tensor> {
        // APGD-T picks its own targets; a targeted evaluation's targets are not used.
        let untargeted = AttackBatch {
            targets: None,
            ..*batch
        };
        self.attack_remaining(model, &untargeted, rng)
    }
}
