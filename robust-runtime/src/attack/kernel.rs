//! The hot path of every gradient attack, in one place: the forward pass with the input gradient,
//! the ascent step and the projection onto the threat model. FGSM and PGD (and the attacks that
//! come after them) call only these, so a faster backend (fused kernels, a hand-written
//! backward for known architectures) replaces this file and nothing else.
//!
//! Semantics follow torchattacks, so that numbers agree with it sample for sample:
//! L∞ step `x + α·sign(∇)`; L2 step `x + α·∇/(‖∇‖₂ + 1e-10)`; projection of the perturbation
//! onto the ε-ball (clamp for L∞, rescale for L2), then clamp of the point into the domain.

use candle_core::{DType, Tensor, Var};

use super::loss::Objective;
use super::{Norm, ThreatModel};
use crate::model::{InputDomain, Model};
use crate::rng::Rng;
use crate::Result;

/// Added to gradient norms before dividing (torchattacks' `eps_for_division`).
const DIV_EPS: f64 = 1e-10;

/// The per-sample objective (to be increased) at `x` and its gradient with respect to `x`.
///
/// Only the input is a variable: the weights of a loaded model are plain tensors, so the
/// backward pass computes no weight gradients. A model that does not depend on its input gets
/// a zero gradient, not an error (the masking diagnostics are the place to flag that).
pub(crate) fn objective_and_grad(
    model: &Model,
    x: &Tensor,
    objective: &Objective,
) -> Result<(Tensor, Tensor)> {
    let (value, grad, _) = objective_grad_logits(model, x, objective)?;
    Ok((value, grad))
}

/// [`objective_and_grad`] that also returns the logits of the same forward pass.
pub(crate) fn objective_grad_logits(
    model: &Model,
    x: &Tensor,
    objective: &Objective,
) -> Result<(Tensor, Tensor, Tensor)> {
    // A randomized model (the EOT twin of a randomized defence) is differentiated in
    // expectation: objective, gradient and logits averaged over its draws.
    let draws = model.eot_draws().max(1);
    let mut total: Option<(Tensor, Tensor, Tensor)> = None;
    for _ in 0..draws {
        let var = Var::from_tensor(&x.detach())?;
        let logits = model.logits(var.as_tensor())?;
        let per_sample = objective.per_sample(&logits)?;
        let grads = per_sample.sum_all()?.backward()?;
        let grad = match grads.get(var.as_tensor()) {
            Some(g) => g.clone(),
            None => x.zeros_like()?,
        };
        let (v, l) = (per_sample.detach(), logits.detach());
        total = Some(match total {
            None => (v, grad, l),
            Some((tv, tg, tl)) => ((tv + v)?, (tg + grad)?, (tl + l)?),
        });
    }
    let (v, g, l) = total.expect("at least one draw");
    if draws == 1 {
        return Ok((v, g, l));
    }
    let n = draws as f64;
    Ok(((v / n)?, (g / n)?, (l / n)?))
}

/// The logits at `x` (`N × C`, f32) and the input gradient of every class logit, stacked as
/// `N × C × …` (the Jacobian of each sample, for DeepFool).
///
/// One forward pass and `C` backward passes. The gradient of `Σ_n z_k(x_n)` with respect to the
/// batch is, row by row, each sample's own `∇z_k`, because samples do not interact in the
/// forward pass: `C` backward passes instead of `N·C`.
pub(crate) fn logits_and_class_grads(model: &Model, x: &Tensor) -> Result<(Tensor, Tensor)> {
    let var = Var::from_tensor(&x.detach())?;
    let logits = model.logits(var.as_tensor())?.to_dtype(DType::F32)?;
    let classes = logits.dim(1)?;
    let mut grads = Vec::with_capacity(classes);
    for k in 0..classes {
        let g = logits.narrow(1, k, 1)?.sum_all()?.backward()?;
        grads.push(match g.get(var.as_tensor()) {
            Some(g) => g.to_dtype(DType::F32)?,
            None => x.zeros_like()?.to_dtype(DType::F32)?,
        });
    }
    Ok((logits.detach(), Tensor::stack(&grads, 1)?))
}

/// One ascent step of size `alpha` along `grad` in the geometry of `norm`.
pub(crate) fn ascend(x: &Tensor, grad: &Tensor, norm: Norm, alpha: f64) -> Result<Tensor> {
    let step = match norm {
        Norm::Linf => grad.sign()?,
        Norm::L2 => {
            grad.broadcast_div(&(per_sample_l2(grad)? + DIV_EPS)?.reshape(batch_shape(grad))?)?
        }
    };
    Ok((x + (step * alpha)?)?)
}

/// [`ascend`] with a per-sample step size `alpha` (shape `N`).
pub(crate) fn ascend_scaled(
    x: &Tensor,
    grad: &Tensor,
    norm: Norm,
    alpha: &Tensor,
) -> Result<Tensor> {
    let direction = match norm {
        Norm::Linf => grad.sign()?,
        Norm::L2 => {
            grad.broadcast_div(&(per_sample_l2(grad)? + DIV_EPS)?.reshape(batch_shape(grad))?)?
        }
    };
    Ok((x + scale_samples(&direction, alpha)?)?)
}

/// Each sample of `t` multiplied by its own factor (`factor` has shape `N`).
pub(crate) fn scale_samples(t: &Tensor, factor: &Tensor) -> Result<Tensor> {
    Ok(t.broadcast_mul(&factor.to_dtype(t.dtype())?.reshape(batch_shape(t))?)?)
}

/// `x_adv` moved back into the threat model around `x`, then into the domain.
pub(crate) fn project(
    x_adv: &Tensor,
    x: &Tensor,
    threat: &ThreatModel,
    domain: InputDomain,
) -> Result<Tensor> {
    let delta = (x_adv - x)?;
    let delta = match threat.norm {
        Norm::Linf => delta.clamp(-threat.eps, threat.eps)?,
        Norm::L2 => {
            let norms = per_sample_l2(&delta)?;
            // ε / 0 = inf, and min(inf, 1) = 1: a zero perturbation stays zero.
            let factor = (norms.recip()? * threat.eps)?.minimum(1.0)?;
            delta.broadcast_mul(&factor.reshape(batch_shape(&delta))?)?
        }
    };
    domain.clamp(&(x + delta)?)
}

/// A uniformly random starting point: uniform in the L∞ box, or for L2 a uniformly random
/// direction scaled by ε·u with u uniform in [0, 1] (torchattacks' PGDL2), then clamped into
/// the domain. Random numbers come from `rng`, never from candle.
pub(crate) fn random_start(
    x: &Tensor,
    threat: &ThreatModel,
    domain: InputDomain,
    rng: &mut Rng,
) -> Result<Tensor> {
    let n = x.elem_count();
    let delta = match threat.norm {
        Norm::Linf => Tensor::from_vec(
            rng.uniform_vec(n, -threat.eps, threat.eps),
            x.shape(),
            x.device(),
        )?,
        Norm::L2 => {
            let batch = x.dim(0)?;
            let dir = Tensor::from_vec(rng.normal_vec(n), x.shape(), x.device())?;
            let radius =
                Tensor::from_vec(rng.uniform_vec(batch, 0.0, threat.eps), batch, x.device())?;
            let scale = (radius / (per_sample_l2(&dir)? + DIV_EPS)?)?;
            dir.broadcast_mul(&scale.reshape(batch_shape(x))?)?
        }
    };
    domain.clamp(&(x + delta.to_dtype(x.dtype())?)?)
}

/// Per-sample L2 norms of a batch, shape `N`.
pub(crate) fn per_sample_l2(t: &Tensor) -> Result<Tensor> {
    Ok(t.flatten_from(1)?.sqr()?.sum(1)?.sqrt()?)
}

/// Per-sample L∞ norms of a batch, shape `N`.
pub(crate) fn per_sample_linf(t: &Tensor) -> Result<Tensor> {
    Ok(t.flatten_from(1)?.abs()?.max(1)?)
}

/// `x_new` where `take` (u8, shape `N`) is set, `x_old` elsewhere, per sample.
pub(crate) fn select_samples(take: &Tensor, x_new: &Tensor, x_old: &Tensor) -> Result<Tensor> {
    let mask = take
        .to_dtype(DType::U8)?
        .reshape(batch_shape(x_new))?
        .broadcast_as(x_new.shape())?;
    Ok(mask.where_cond(x_new, x_old)?)
}

/// `[N, 1, 1, …]` for a batch tensor, to broadcast a per-sample value over it.
pub(crate) fn batch_shape(t: &Tensor) -> Vec<usize> {
    let mut shape = vec![1; t.rank()];
    shape[0] = t.dims()[0];
    shape
}
