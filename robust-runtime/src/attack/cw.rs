//! The Carlini–Wagner L2 attack (Carlini & Wagner, "Towards Evaluating the Robustness of Neural
//! Networks", IEEE S&P 2017): a minimal-perturbation attack that minimises
//! `‖x' − x‖₂² + c·f(x')` with `f(x') = max(z_y − max_{j≠y} z_j, −κ)` (untargeted; targeted:
//! `max(max_{j≠t} z_j − z_t, −κ)`), by Adam on `w` where `x' = lo + (hi − lo)·(tanh(w) + 1)/2`
//! (the change of variables of Section V, mapped onto the model's input domain, so that every
//! iterate is a valid input and no clamping is needed).
//!
//! A binary search over `c`, per sample, as the authors' code (`l2_attack.py`): every round
//! restarts Adam from `x`; after a round in which the sample was broken, `c` moves halfway
//! towards the lower bound, otherwise halfway towards the upper bound, or ×10 while no upper
//! bound is known. Across all rounds the smallest successful perturbation is kept.
//!
//! Within a round the bookkeeping is `torchattacks.CW`'s: the logits of the iterate *before*
//! each Adam step decide success (`pred ≠ y`, and a margin of at least κ), the iterate with the
//! smallest L2 distance among the successes is kept, and every `max(steps / 10, 1)` steps the
//! round ends early if the batch's total cost went up. With `binary_search_steps = 1` and
//! `initial_const = 1` this is `torchattacks.CW(c=1, kappa=0, steps=100, lr=0.01)`. Two
//! deliberate differences: `max_{j≠y} z_j` is the true maximum over the other classes
//! (torchattacks takes the maximum of `(1 − onehot)·z`, which is 0 when every other logit is
//! negative), and c is a per-sample value.
//!
//! Inputs on the domain's bounds map to `w = ±∞`, where the gradient of `tanh` vanishes: they
//! stay put, as in torchattacks (the authors' code shrinks by 0.999999 and so moves them by at
//! most ~1e-5 in 100 Adam steps).

use candle_core::{DType, Tensor};

use super::loss::Objective;
use super::{
    check_at_least_one, check_non_negative, check_positive, kernel, within_budget, Attack,
    AttackBatch, Loss, Norm, ThreatModel,
};
use crate::model::Model;
use crate::rng::Rng;
use crate::Result;

/// Adam's moment decay rates and denominator guard (PyTorch's defaults).
const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;
/// An upper bound on c above this is "not found yet" (the authors' code).
const NO_UPPER: f64 = 1e9;

/// Hyper-parameters of [`CarliniWagner`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CwConfig {
    /// L2 budget used by [`Attack::perturb`]: a minimal adversarial example farther than ε from
    /// its input does not count (default 1.0; finite and > 0). The search itself is unbounded.
    pub eps: f64,
    /// Adam steps per binary-search round (default 100, as torchattacks; ≥ 1).
    pub steps: usize,
    /// The margin κ by which the adversarial class must win (default 0, as the paper's main
    /// experiments; finite and ≥ 0).
    pub confidence: f64,
    /// Rounds of the binary search over c (default 9, the authors' `BINARY_SEARCH_STEPS`; ≥ 1).
    pub binary_search_steps: usize,
    /// c in the first round (default 0.01, as ART: the authors' 1e-3 costs one more ×10 round
    /// before most samples break; finite and > 0).
    pub initial_const: f64,
    /// Adam's learning rate (default 0.01, as the paper and torchattacks; finite and > 0).
    pub learning_rate: f64,
}

impl Default for CwConfig {
    fn default() -> Self {
        CwConfig {
            eps: 1.0,
            steps: 100,
            confidence: 0.0,
            binary_search_steps: 9,
            initial_const: 0.01,
            learning_rate: 0.01,
        }
    }
}

/// The Carlini–Wagner L2 attack, validated.
#[derive(Debug, Clone)]
pub struct CarliniWagner {
    cfg: CwConfig,
}

impl CarliniWagner {
    /// Checks the configuration before any tensor work.
    pub fn new(cfg: CwConfig) -> Result<Self> {
        check_positive("eps", cfg.eps)?;
        check_at_least_one("steps", cfg.steps)?;
        check_non_negative("confidence", cfg.confidence)?;
        check_at_least_one("binary_search_steps", cfg.binary_search_steps)?;
        check_positive("initial_const", cfg.initial_const)?;
        check_positive("learning_rate", cfg.learning_rate)?;
        Ok(CarliniWagner { cfg })
    }

    /// One round of Adam with per-sample constants `c`. Updates `best_l2` / `best_adv` (squared
    /// distances) and returns, per sample, whether any iterate was a success.
    #[allow(clippy::too_many_arguments)]
    fn round(
        &self,
        model: &Model,
        x: &Tensor,
        w0: &Tensor,
        objective: &Objective,
        c: &[f64],
        best_l2: &mut [f32],
        best_adv: &mut Tensor,
    ) -> Result<Vec<bool>> {
        let domain = model.domain();
        let (lo, half) = (
            domain.lo() as f64,
            (domain.hi() as f64 - domain.lo() as f64) / 2.0,
        );
        let n = c.len();
        let device = x.device();
        let per_sample = kernel::batch_shape(x);
        let c32: Vec<f32> = c.iter().map(|&v| v as f32).collect();
        let c_t = Tensor::from_slice(&c32, n, device)?.reshape(per_sample.as_slice())?;
        let kappa = self.cfg.confidence;
        let lr = self.cfg.learning_rate;
        let check_every = (self.cfg.steps / 10).max(1);

        let mut w = w0.clone();
        let mut m = w0.zeros_like()?;
        let mut v = w0.zeros_like()?;
        let mut prev_cost = f64::INFINITY;
        let mut succeeded = vec![false; n];
        for step in 0..self.cfg.steps {
            let t = w.tanh()?;
            let adv = (((&t + 1.0)? * half)? + lo)?;
            let diff = (&adv - x)?;
            let l2 = diff.flatten_from(1)?.sqr()?.sum(1)?;
            // margin = max_{j≠y} z_j − z_y (untargeted); f = max(−margin, −κ).
            let (margin, grad_margin) = kernel::objective_and_grad(model, &adv, objective)?;
            let f = margin.neg()?.maximum(-kappa)?;
            let cost = (l2.sum_all()?.to_scalar::<f32>()? as f64)
                + (f.to_vec1::<f32>()?.iter().zip(c))
                    .map(|(&f, &c)| c * f as f64)
                    .sum::<f64>();

            // Bookkeeping on the iterate before the step (torchattacks).
            let margin_v = margin.to_vec1::<f32>()?;
            let l2_v = l2.to_vec1::<f32>()?;
            let mut take = vec![0u8; n];
            for i in 0..n {
                // A strictly positive margin is a changed arg-max; κ > 0 asks for more.
                let success = margin_v[i] > 0.0 && margin_v[i] as f64 >= kappa;
                succeeded[i] |= success;
                if success && l2_v[i] < best_l2[i] {
                    best_l2[i] = l2_v[i];
                    take[i] = 1;
                }
            }
            if take.contains(&1) {
                let take = Tensor::from_slice(&take, n, device)?;
                *best_adv = kernel::select_samples(&take, &adv, best_adv)?;
            }

            // ∂cost/∂x' = 2(x' − x) − c·∂margin/∂x' where f is not clamped; then the chain
            // rule through x' = lo + (hi − lo)(tanh w + 1)/2.
            let unclamped = margin.neg()?.ge(-kappa)?.to_dtype(DType::F32)?;
            let coef = (c_t.broadcast_mul(&unclamped.reshape(per_sample.as_slice())?))?;
            let grad_x = ((diff * 2.0)? - grad_margin.broadcast_mul(&coef)?)?;
            let grad_w = (grad_x * ((t.sqr()?.neg()? + 1.0)? * half)?)?;

            // Adam (PyTorch's update, bias-corrected).
            let k = (step + 1) as i32;
            m = ((m * BETA1)? + (&grad_w * (1.0 - BETA1))?)?;
            v = ((v * BETA2)? + (grad_w.sqr()? * (1.0 - BETA2))?)?;
            let denom = ((v.sqrt()? / (1.0 - BETA2.powi(k)).sqrt())? + ADAM_EPS)?;
            w = (w - ((&m / denom)? * (lr / (1.0 - BETA1.powi(k))))?)?;

            if step % check_every == 0 {
                if cost > prev_cost {
                    break;
                }
                prev_cost = cost;
            }
        }
        Ok(succeeded)
    }
}

impl Attack for CarliniWagner {
    fn id(&self) -> &'static str {
        "cw"
    }

    fn describe(&self) -> String {
        let c = &self.cfg;
        format!(
            "C&W-L2 (ε = {}, {} × {} Adam steps of lr {}, c₀ = {}, κ = {})",
            c.eps, c.binary_search_steps, c.steps, c.learning_rate, c.initial_const, c.confidence
        )
    }

    fn threat(&self) -> ThreatModel {
        ThreatModel {
            norm: Norm::L2,
            eps: self.cfg.eps,
        }
    }

    fn perturb(&self, model: &Model, batch: &AttackBatch<'_>, rng: &mut Rng) -> Result<Tensor> {
        match self.minimal_perturbation(model, batch, rng)? {
            Some(adv) => within_budget(&adv, batch.inputs, &self.threat()),
            None => Ok(batch.inputs.clone()),
        }
    }

    fn minimal_perturbation(
        &self,
        model: &Model,
        batch: &AttackBatch<'_>,
        _rng: &mut Rng,
    ) -> Result<Option<Tensor>> {
        let x = &batch.inputs.to_dtype(DType::F32)?;
        let n = x.dim(0)?;
        let domain = model.domain();
        let (lo, half) = (
            domain.lo() as f64,
            (domain.hi() as f64 - domain.lo() as f64) / 2.0,
        );
        // w₀ = atanh(u) with u = (x − lo)/half − 1 clamped into [−1, 1]: ±∞ on the bounds.
        let u = (((x - lo)? / half)? - 1.0)?.clamp(-1f32, 1f32)?;
        let w0 = ((((&u + 1.0)? / (u.neg()? + 1.0)?)?.log()?) * 0.5)?;
        let objective = batch.objective(Loss::CwMargin)?;

        let mut best_l2 = vec![f32::INFINITY; n];
        let mut best_adv = x.clone();
        let mut c = vec![self.cfg.initial_const; n];
        let mut lower = vec![0.0f64; n];
        let mut upper = vec![1e10f64; n];
        for _ in 0..self.cfg.binary_search_steps {
            let succeeded =
                self.round(model, x, &w0, &objective, &c, &mut best_l2, &mut best_adv)?;
            for i in 0..n {
                if succeeded[i] {
                    upper[i] = upper[i].min(c[i]);
                    if upper[i] < NO_UPPER {
                        c[i] = (lower[i] + upper[i]) / 2.0;
                    }
                } else {
                    lower[i] = lower[i].max(c[i]);
                    c[i] = if upper[i] < NO_UPPER {
                        (lower[i] + upper[i]) / 2.0
                    } else {
                        c[i] * 10.0
                    };
                }
            }
        }
        Ok(Some(best_adv.to_dtype(batch.inputs.dtype())?))
    }
}
