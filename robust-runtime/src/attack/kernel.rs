//! The hot path of every gradient attack, in one place: the forward pass with the input gradient,
//! the ascent step and the projection onto the threat model. FGSM and PGD (and the attacks that
//! come after them) call only these, so a faster backend (fused kernels, a hand-written
//! backward for known architectures) replaces this file and nothing else.
//!
//! Semantics follow torchattacks, so that numbers agree with it sample for sample:
//! L∞ step `x + α·sign(∇)`; L2 step `x + α·∇/(‖∇‖₂ + 1e-10)`; projection of the perturbation
//! onto the ε-ball (clamp for L∞, rescale for L2), then clamp of the point into the domain.

use candle_core::{DType, Tensor, Var};
use rayon::prelude::*;

use super::loss::Objective;
use super::{Norm, ThreatModel};
use crate::model::{InputDomain, Model};
use crate::nn::cpu_values;
use crate::nn::simd::wide;
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
    // expectation: the gradient is averaged over its draws. The objective and the logits are
    // the last draw's, as AutoAttack's EOT has them (`autopgd_base.py`): an attack judges its
    // iterate by one forward pass of the randomized model, the pass a user's model makes, not
    // by the average of 20 that no single prediction sees.
    let draws = model.eot_draws().max(1);
    if draws == 1 {
        if let Some(engine) = model.engine_for(x) {
            // The compiled network: the objective's gradient at the logits (candle's autograd
            // on `N × classes` values), then the network's vector–Jacobian product.
            let (logits, value, grad) = engine.forward_backward(x, |logits| {
                let (n, classes) = logits.dims2()?;
                let host = logits.flatten_all()?.to_vec1::<f32>()?;
                if let Some((v, g)) = objective.cross_entropy_host(&host, classes) {
                    let g = Tensor::from_vec(g, (n, classes), logits.device())?;
                    return Ok((Tensor::from_vec(v, n, logits.device())?, g));
                }
                let var = Var::from_tensor(logits)?;
                let per_sample = objective.per_sample(var.as_tensor())?;
                let grads = per_sample.sum_all()?.backward()?;
                let g = match grads.get(var.as_tensor()) {
                    Some(g) => g.clone(),
                    None => logits.zeros_like()?,
                };
                Ok((per_sample.detach(), g))
            })?;
            return Ok((value, grad, logits));
        }
    }
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
            Some((_, tg, _)) => (v, (tg + grad)?, l),
        });
    }
    let (v, g, l) = total.expect("at least one draw");
    if draws == 1 {
        return Ok((v, g, l));
    }
    Ok((v, (g / draws as f64)?, l))
}

/// The logits at `x` (`N × C`, f32) and the input gradient of every class logit, stacked as
/// `N × C × …` (the Jacobian of each sample, for DeepFool).
///
/// One forward pass and `C` backward passes. The gradient of `Σ_n z_k(x_n)` with respect to the
/// batch is, row by row, each sample's own `∇z_k`, because samples do not interact in the
/// forward pass: `C` backward passes instead of `N·C`.
pub(crate) fn logits_and_class_grads(model: &Model, x: &Tensor) -> Result<(Tensor, Tensor)> {
    if let Some(engine) = model.engine_for(x) {
        return Ok(engine.class_grads(x)?);
    }
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

/// The logits at `x` (`N × C`, f32) and the input gradient of `Σ_n ⟨cotangent_n, z(x_n)⟩`: per
/// sample, the gradient of its own weighted sum of logits (FAB-T's `∇(z_t − z_y)`). One forward
/// and one backward pass.
pub(crate) fn logits_and_vjp(
    model: &Model,
    x: &Tensor,
    cotangent: &Tensor,
) -> Result<(Tensor, Tensor)> {
    if let Some(engine) = model.engine_for(x) {
        let (logits, (), grad) = engine.forward_backward(x, |_| Ok(((), cotangent.clone())))?;
        return Ok((logits, grad));
    }
    let var = Var::from_tensor(&x.detach())?;
    let logits = model.logits(var.as_tensor())?.to_dtype(DType::F32)?;
    let g = (&logits * cotangent)?.sum_all()?.backward()?;
    let grad = match g.get(var.as_tensor()) {
        Some(g) => g.to_dtype(DType::F32)?,
        None => x.zeros_like()?.to_dtype(DType::F32)?,
    };
    Ok((logits.detach(), grad))
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

/// `project(ascend(x_adv, grad, norm, alpha), x, threat, domain)`: one step and its projection.
/// For L∞ on contiguous CPU f32 batches it is one pass over the values, with the same
/// arithmetic in the same order as the tensor operations (so the same values, bit for bit),
/// instead of seven tensor operations that each allocate their result.
pub(crate) fn step(
    x_adv: &Tensor,
    grad: &Tensor,
    x: &Tensor,
    (norm, alpha): (Norm, f64),
    threat: &ThreatModel,
    domain: InputDomain,
) -> Result<Tensor> {
    let fused = norm == Norm::Linf
        && threat.norm == Norm::Linf
        && [x_adv, grad, x]
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.shape() == x.shape());
    if !fused {
        return project(&ascend(x_adv, grad, norm, alpha)?, x, threat, domain);
    }
    let (x_adv, grad, x) = (x_adv.contiguous()?, grad.contiguous()?, x.contiguous()?);
    let (alpha, eps, lo, hi) = (alpha as f32, threat.eps as f32, domain.lo(), domain.hi());
    let out = cpu_values(&x_adv, "step iterate", |a: &[f32]| {
        cpu_values(&grad, "step gradient", |g: &[f32]| {
            cpu_values(&x, "step origin", |x: &[f32]| {
                let mut out = vec![0f32; a.len()];
                const CHUNK: usize = 1 << 14;
                out.par_chunks_mut(CHUNK)
                    .zip(a.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
                    .zip(x.par_chunks(CHUNK))
                    .for_each(|((out, (a, g)), x)| step_linf(out, (a, g, x), alpha, (eps, lo, hi)));
                Ok(out)
            })
        })
    })?;
    Ok(Tensor::from_vec(out, x.shape(), x.device())?)
}

wide! {
    /// [`step`]'s L∞ arithmetic on a run of values: `a` the iterate, `g` the gradient, `x` the
    /// origin, `(eps, lo, hi)` the ball's radius and the domain.
    fn step_linf(
        out: &mut [f32],
        values: (&[f32], &[f32], &[f32]),
        alpha: f32,
        bounds: (f32, f32, f32),
    ) {
        let ((a, g, x), (eps, lo, hi)) = (values, bounds);
        for (o, ((&a, &g), &x)) in out.iter_mut().zip(a.iter().zip(g).zip(x)) {
            // sign(g)·α + 0, as candle's `sign` and `affine`.
            let sign = f32::from(g > 0.0) - f32::from(g < 0.0);
            let moved = a + (sign * alpha + 0.0);
            let delta = (moved - x).max(-eps).min(eps);
            *o = (x + delta).max(lo).min(hi);
        }
    }
}

/// APGD's momentum step (Croce & Hein 2020, eq. 4 and 5) for L∞ on contiguous CPU f32
/// batches, in one pass with the arithmetic of the tensor version in `apgd.rs` (so the same
/// values): `z = P(x_adv + η_s·sign(∇))`, then `P(x_adv + a·(z − x_adv) + (1 − a)·(x_adv −
/// x_old))`, with `P` the projection onto the ball around `x` and the domain. `None` where
/// the batch is not such a batch (the caller runs the tensor version).
pub(crate) fn apgd_step_linf(
    (x_adv, x_old, grad, x): (&Tensor, &Tensor, &Tensor, &Tensor),
    step: &[f64],
    a: f64,
    threat: &ThreatModel,
    domain: InputDomain,
) -> Result<Option<Tensor>> {
    let tensors = [x_adv, x_old, grad, x];
    if threat.norm != Norm::Linf
        || !tensors
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.shape() == x.shape())
    {
        return Ok(None);
    }
    let n = x.dim(0)?;
    let per = x.elem_count() / n.max(1);
    let c: Vec<Tensor> = tensors
        .iter()
        .map(|t| t.contiguous())
        .collect::<candle_core::Result<_>>()?;
    let (eps, lo, hi) = (threat.eps as f32, domain.lo(), domain.hi());
    let (a, b) = (a as f32, (1.0 - a) as f32);
    let project = |v: f32, x: f32| (x + (v - x).max(-eps).min(eps)).max(lo).min(hi);
    let out = cpu_values(&c[0], "APGD iterate", |xa: &[f32]| {
        cpu_values(&c[1], "APGD previous iterate", |xo: &[f32]| {
            cpu_values(&c[2], "APGD gradient", |g: &[f32]| {
                cpu_values(&c[3], "APGD origin", |x0: &[f32]| {
                    let mut out = vec![0f32; xa.len()];
                    for (i, out) in out.chunks_mut(per.max(1)).enumerate() {
                        let eta = step[i] as f32;
                        let r = i * per..(i + 1) * per;
                        let rows = xa[r.clone()].iter().zip(&xo[r.clone()]);
                        let rows = rows.zip(g[r.clone()].iter().zip(&x0[r]));
                        for (o, ((&xa, &xo), (&g, &x0))) in out.iter_mut().zip(rows) {
                            let sign = f32::from(g > 0.0) - f32::from(g < 0.0);
                            let z = project(xa + sign * eta, x0);
                            let moved = (xa + ((z - xa) * a + 0.0)) + ((xa - xo) * b + 0.0);
                            *o = project(moved, x0);
                        }
                    }
                    Ok(out)
                })
            })
        })
    })?;
    Ok(Some(Tensor::from_vec(out, x.shape(), x.device())?))
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

#[cfg(test)]
mod should {
    use candle_core::Device;

    use super::*;

    fn random(rng: &mut Rng, lo: f64, hi: f64) -> Result<Tensor> {
        Ok(Tensor::from_vec(
            rng.uniform_vec(4 * 50, lo, hi),
            (4, 2, 5, 5),
            &Device::Cpu,
        )?)
    }

    fn values(t: &Tensor) -> Result<Vec<f32>> {
        Ok(t.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Inputs that reach every branch: some zero gradients, iterates past the ball and the
    /// domain.
    fn inputs(seed: u64) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
        let mut rng = Rng::seed_from_u64(seed);
        let x = random(&mut rng, 0.0, 1.0)?;
        let adv = (&x + random(&mut rng, -0.15, 0.15)?)?;
        let old = (&x + random(&mut rng, -0.15, 0.15)?)?;
        let grad = random(&mut rng, -1.0, 1.0)?.round()?;
        Ok((x, adv, old, grad))
    }

    #[test]
    fn step_and_project_in_one_pass_to_the_values_of_the_tensor_operations() -> Result<()> {
        let (x, adv, _, grad) = inputs(1)?;
        let threat = ThreatModel {
            norm: Norm::Linf,
            eps: 0.1,
        };
        let domain = InputDomain::new(0.05, 0.95)?;
        let fused = step(&adv, &grad, &x, (Norm::Linf, 0.03), &threat, domain)?;
        let apart = project(&ascend(&adv, &grad, Norm::Linf, 0.03)?, &x, &threat, domain)?;
        assert_eq!(values(&fused)?, values(&apart)?);
        assert_ne!(values(&fused)?, values(&adv)?);
        Ok(())
    }

    #[test]
    fn take_apgds_momentum_step_in_one_pass_to_the_values_of_the_tensor_operations() -> Result<()> {
        let (x, adv, old, grad) = inputs(2)?;
        let threat = ThreatModel {
            norm: Norm::Linf,
            eps: 0.1,
        };
        let domain = InputDomain::default();
        let step = [0.2, 0.05, 0.1, 0.025];
        for a in [1.0, 0.75] {
            let fused = apgd_step_linf((&adv, &old, &grad, &x), &step, a, &threat, domain)?
                .expect("a CPU f32 batch");
            let eta = Tensor::from_vec(step.iter().map(|&s| s as f32).collect(), 4, &Device::Cpu)?;
            let z = project(
                &ascend_scaled(&adv, &grad, Norm::Linf, &eta)?,
                &x,
                &threat,
                domain,
            )?;
            let moved = ((&adv + ((&z - &adv)? * a)?)? + ((&adv - &old)? * (1.0 - a))?)?;
            let apart = project(&moved, &x, &threat, domain)?;
            assert_eq!(values(&fused)?, values(&apart)?, "a = {a}");
        }
        Ok(())
    }
}
