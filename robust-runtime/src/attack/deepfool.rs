//! DeepFool (Moosavi-Dezfooli, Fawzi & Frossard, "DeepFool: a simple and accurate method to fool
//! deep neural networks", CVPR 2016): a minimal-perturbation attack. At each step the classifier
//! is linearised around the current point; the step goes to the nearest linearised decision
//! boundary over *all* other classes `k` (as `torchattacks.DeepFool`), at distance
//! `|f_k − f_y| / ‖∇f_k − ∇f_y‖_q` along the corresponding direction, where `q` is the dual norm
//! (Section 3.1: `q = 2` for L2, `q = 1` for L∞, where the step is along `sign(∇f_k − ∇f_y)`).
//!
//! As the authors' code: the steps add up to `r_tot`, the iterate is `x + (1 + overshoot)·r_tot`
//! (clamped into the domain), each step is lengthened by 1e-4 so that it crosses the boundary,
//! and a sample stops as soon as its prediction changes (at most `steps` steps). Unlike
//! torchattacks, the overshoot multiplies the total perturbation, not each step.
//!
//! Foolbox 3's `L2DeepFoolAttack` / `LinfDeepFoolAttack` (with `candidates = 10`) compute the
//! same steps; on the committed MNIST models every per-sample norm agrees with theirs to 1e-3
//! relative (`tests/reference_minimal.rs`).
//!
//! The whole batch goes through the model at once: the gradient of every class logit for every
//! still-active sample comes from `C` backward passes (`kernel::logits_and_class_grads`).

use candle_core::{DType, Tensor, D};

use super::{
    check_at_least_one, check_non_negative, check_positive, kernel, minimal_within_budget, Attack,
    AttackBatch, Norm, ThreatModel,
};
use crate::model::Model;
use crate::rng::Rng;
use crate::{Error, Result};

/// Added to the length of each step so that it lands beyond the linearised boundary (the
/// authors' code).
const CROSS: f64 = 1e-4;
/// Added to gradient norms before dividing.
const DIV_EPS: f64 = 1e-10;

/// Hyper-parameters of [`DeepFool`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeepFoolConfig {
    /// Budget used by [`Attack::perturb`]: a minimal adversarial example farther than ε from its
    /// input does not count (default 0.1; finite and > 0). The search itself is unbounded.
    pub eps: f64,
    /// Norm of the threat model and of the linearised distance (default L∞).
    pub norm: Norm,
    /// Most linearisation steps per sample (default 50, as torchattacks and the authors' code;
    /// ≥ 1).
    pub steps: usize,
    /// The perturbation is `(1 + overshoot)·r_tot` (default 0.02, as the paper; finite and ≥ 0).
    pub overshoot: f64,
}

impl Default for DeepFoolConfig {
    fn default() -> Self {
        DeepFoolConfig {
            eps: 0.1,
            norm: Norm::Linf,
            steps: 50,
            overshoot: 0.02,
        }
    }
}

/// DeepFool, validated.
#[derive(Debug, Clone)]
pub struct DeepFool {
    cfg: DeepFoolConfig,
}

impl DeepFool {
    /// Checks the configuration before any tensor work.
    pub fn new(cfg: DeepFoolConfig) -> Result<Self> {
        check_positive("eps", cfg.eps)?;
        check_at_least_one("steps", cfg.steps)?;
        check_non_negative("overshoot", cfg.overshoot)?;
        Ok(DeepFool { cfg })
    }

    /// One step from the logits (`n × C`) and class gradients (`n × C × …`) of `n` samples with
    /// true labels `labels`: the perturbation `r_i` to the nearest linearised boundary, `n × D`.
    fn step(&self, logits: &Tensor, jac: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let (n, classes) = logits.dims2()?;
        let all = Tensor::arange(0u32, classes as u32, logits.device())?;
        let own_mask = labels.unsqueeze(1)?.broadcast_eq(&all.unsqueeze(0)?)?;
        let own = own_mask.to_dtype(DType::F32)?;
        // f'_k = f_k − f_y and w'_k = ∇f_k − ∇f_y, for every class k.
        let f_own = (logits * &own)?.sum_keepdim(1)?;
        let f_diff = logits.broadcast_sub(&f_own)?;
        let jac = jac.flatten_from(2)?;
        let w_own = jac.broadcast_mul(&own.unsqueeze(2)?)?.sum_keepdim(1)?;
        let w_diff = jac.broadcast_sub(&w_own)?;
        let w_norm = match self.cfg.norm {
            Norm::L2 => w_diff.sqr()?.sum(2)?.sqrt()?,
            Norm::Linf => w_diff.abs()?.sum(2)?,
        };
        let dist = (f_diff.abs()? / (w_norm + DIV_EPS)?)?;
        // The true class is no candidate.
        let inf = Tensor::full(f32::INFINITY, (n, classes), logits.device())?;
        let dist = own_mask.where_cond(&inf, &dist)?;
        let nearest = dist.argmin_keepdim(1)?;
        let length = (dist.gather(&nearest, 1)? + CROSS)?;
        let pick = nearest
            .broadcast_eq(&all.unsqueeze(0)?)?
            .to_dtype(DType::F32)?;
        let w = w_diff.broadcast_mul(&pick.unsqueeze(2)?)?.sum(1)?;
        let dir = match self.cfg.norm {
            Norm::L2 => w.broadcast_div(&(w.sqr()?.sum_keepdim(1)?.sqrt()? + DIV_EPS)?)?,
            Norm::Linf => w.sign()?,
        };
        Ok(dir.broadcast_mul(&length)?)
    }
}

impl Attack for DeepFool {
    fn id(&self) -> &'static str {
        "deepfool"
    }

    fn describe(&self) -> String {
        format!(
            "DeepFool-{} (ε = {}, ≤ {} steps, overshoot {})",
            self.cfg.norm.symbol(),
            self.cfg.eps,
            self.cfg.steps,
            self.cfg.overshoot
        )
    }

    fn threat(&self) -> ThreatModel {
        ThreatModel {
            norm: self.cfg.norm,
            eps: self.cfg.eps,
        }
    }

    fn perturb(&self, model: &Model, batch: &AttackBatch<'_>, rng: &mut Rng) -> Result<Tensor> {
        minimal_within_budget(self, model, batch, rng)
    }

    fn minimal_perturbation(
        &self,
        model: &Model,
        batch: &AttackBatch<'_>,
        _rng: &mut Rng,
    ) -> Result<Option<Tensor>> {
        if batch.targets.is_some() {
            return Err(Error::param(
                "targeting",
                "targeted",
                "untargeted (DeepFool moves to the nearest boundary, whatever the class)",
            ));
        }
        let x = batch.inputs;
        let domain = model.domain();
        let device = x.device();
        let labels = batch.labels.to_dtype(DType::U32)?;
        let label_vec = labels.to_vec1::<u32>()?;
        let scale = 1.0 + self.cfg.overshoot;
        let shape = x.dims()[1..].to_vec();
        let mut r_tot = x.zeros_like()?.to_dtype(DType::F32)?;
        let mut current = x.clone();
        let mut active: Vec<u32> = (0..label_vec.len() as u32).collect();
        let mut fooled = vec![false; label_vec.len()];
        for step in 0..=self.cfg.steps {
            if active.is_empty() {
                break;
            }
            let idx = Tensor::from_slice(&active, active.len(), device)?;
            let x_act = current.index_select(&idx, 0)?;
            // The last round only checks the predictions after the final step.
            let (logits, jac) = if step < self.cfg.steps {
                let (l, j) = kernel::logits_and_class_grads(model, &x_act)?;
                (l, Some(j))
            } else {
                (model.logits(&x_act)?.to_dtype(DType::F32)?, None)
            };
            let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
            let still: Vec<bool> = active
                .iter()
                .zip(&pred)
                .map(|(&i, &p)| p == label_vec[i as usize])
                .collect();
            for (&i, &s) in active.iter().zip(&still) {
                fooled[i as usize] = !s;
            }
            let Some(jac) = jac else { break };
            if still.iter().all(|s| !s) {
                break;
            }
            // Keep the samples whose prediction has not changed yet.
            let keep: Vec<u32> = (0..active.len() as u32)
                .filter(|&k| still[k as usize])
                .collect();
            let keep_t = Tensor::from_slice(&keep, keep.len(), device)?;
            let (logits, jac) = (
                logits.index_select(&keep_t, 0)?,
                jac.index_select(&keep_t, 0)?,
            );
            active = keep.iter().map(|&k| active[k as usize]).collect();
            let idx = Tensor::from_slice(&active, active.len(), device)?;
            let r = self.step(&logits, &jac, &labels.index_select(&idx, 0)?)?;
            let mut r_shape = vec![active.len()];
            r_shape.extend_from_slice(&shape);
            r_tot = r_tot.index_add(&idx, &r.reshape(r_shape)?, 0)?;
            current = domain.clamp(&(x + (&r_tot * scale)?.to_dtype(x.dtype())?)?)?;
        }
        // A sample DeepFool could not break comes back clean.
        let fooled: Vec<u8> = fooled.into_iter().map(u8::from).collect();
        let fooled = Tensor::from_slice(&fooled, fooled.len(), device)?;
        Ok(Some(kernel::select_samples(&fooled, &current, x)?))
    }
}

#[cfg(test)]
mod should {
    use super::*;
    use candle_core::Device;

    fn rejects(cfg: DeepFoolConfig, message: &str) {
        let err = DeepFool::new(cfg).unwrap_err();
        assert_eq!(err.to_string(), message);
    }

    #[test]
    fn reject_a_negative_overshoot() {
        rejects(
            DeepFoolConfig {
                overshoot: -0.01,
                ..DeepFoolConfig::default()
            },
            "invalid value for `overshoot`: -0.01; expected a finite number ≥ 0",
        );
    }

    #[test]
    fn reject_zero_steps() {
        rejects(
            DeepFoolConfig {
                steps: 0,
                ..DeepFoolConfig::default()
            },
            "invalid value for `steps`: 0; expected an integer ≥ 1",
        );
    }

    #[test]
    fn reject_a_zero_eps() {
        rejects(
            DeepFoolConfig {
                eps: 0.0,
                ..DeepFoolConfig::default()
            },
            "invalid value for `eps`: 0; expected a finite number > 0",
        );
    }

    /// Three classes, logits `W·x`, in a domain wide enough never to clamp.
    fn linear() -> Result<(Model, Tensor)> {
        let w = Tensor::new(
            &[[1.0f32, -2.0, 0.5], [0.0, 1.0, -1.0], [-1.0, 0.5, 2.0]],
            &Device::Cpu,
        )?;
        let model = Model::new(move |x: &Tensor| x.matmul(&w))
            .with_domain(crate::model::InputDomain::new(-10.0, 10.0)?);
        Ok((model, Tensor::new(&[[1.0f32, 0.2, 0.1]], &Device::Cpu)?))
    }

    /// On a linear model the nearest boundary is known in closed form:
    /// `min_k |z_k − z_y| / ‖w_k − w_y‖_q`. DeepFool reaches it in one step,
    /// lengthened by 1e-4 and then by the overshoot.
    #[test]
    fn reach_the_closed_form_boundary_of_a_linear_model() -> Result<()> {
        let (model, x) = linear()?;
        let rows = [[1.0f64, -2.0, 0.5], [0.0, 1.0, -1.0], [-1.0, 0.5, 2.0]];
        let xs = [1.0f64, 0.2, 0.1];
        let z: Vec<f64> = (0..3)
            .map(|k| (0..3).map(|i| xs[i] * rows[i][k]).sum())
            .collect();
        let y = (0..3).fold(0, |b, k| if z[k] > z[b] { k } else { b });
        for (norm, dual) in [(Norm::L2, 2.0f64), (Norm::Linf, 1.0)] {
            let dist = (0..3)
                .filter(|&k| k != y)
                .map(|k| {
                    let w: Vec<f64> = (0..3).map(|i| rows[i][k] - rows[i][y]).collect();
                    let q = if dual == 2.0 {
                        w.iter().map(|v| v * v).sum::<f64>().sqrt()
                    } else {
                        w.iter().map(|v| v.abs()).sum()
                    };
                    (z[k] - z[y]).abs() / q
                })
                .fold(f64::INFINITY, f64::min);
            let attack = DeepFool::new(DeepFoolConfig {
                norm,
                ..DeepFoolConfig::default()
            })?;
            let labels = Tensor::new(&[y as u32], &Device::Cpu)?;
            let adv = attack
                .minimal_perturbation(
                    &model,
                    &AttackBatch::untargeted(&x, &labels, 3),
                    &mut Rng::seed_from_u64(0),
                )?
                .unwrap();
            let delta = (&adv - &x)?;
            let found = match norm {
                Norm::L2 => kernel::per_sample_l2(&delta)?,
                _ => kernel::per_sample_linf(&delta)?,
            }
            .to_vec1::<f32>()?[0] as f64;
            let expected = 1.02 * (dist + CROSS);
            assert!(
                (found - expected).abs() < 1e-5,
                "{norm:?}: found {found}, expected {expected}"
            );
            assert_ne!(model.predict(&adv)?[0], y as u32);
        }
        Ok(())
    }

    #[test]
    fn refuse_targeted_batches() -> Result<()> {
        let (model, x) = linear()?;
        let labels = Tensor::new(&[0u32], &Device::Cpu)?;
        let batch = AttackBatch {
            targets: Some(&labels),
            ..AttackBatch::untargeted(&x, &labels, 3)
        };
        let err = DeepFool::new(DeepFoolConfig::default())?
            .perturb(&model, &batch, &mut Rng::seed_from_u64(0))
            .unwrap_err();
        assert!(err.to_string().contains("untargeted"), "{err}");
        Ok(())
    }
}
