//! FAB, the fast adaptive boundary attack (Croce & Hein, "Minimally distorted adversarial
//! examples with a fast adaptive boundary attack", ICML 2020), in L∞ and L2: a
//! minimal-perturbation attack, and AutoAttack's third member as FAB-T.
//!
//! Each step linearises the classifier at the iterate `x₁`: untargeted, the nearest linearised
//! boundary among the other classes `k` (distance `|z_k − z_y| / ‖∇z_k − ∇z_y‖_q`, `q` the dual
//! norm); targeted, the boundary between the label and the target `t`. Both `x₁` and the
//! original point `x₀` are projected onto that hyperplane *inside the input domain* (the
//! minimal-norm projection onto a hyperplane ∩ box, solved exactly below), giving `δ₁` and
//! `δ₀`. The step is the biased combination (eq. 8 of the paper)
//!
//! `x₁ ← clip((x₁ + η·δ₁)·(1 − α) + (x₀ + η·δ₀)·α)`, `α = min(‖δ₁‖ / (‖δ₁‖ + ‖δ₀‖), α_max)`,
//!
//! and whenever `x₁` is misclassified it is kept if it is the closest so far, then pulled back
//! towards `x₀` by the factor β (`x₁ ← x₀ + β·(x₁ − x₀)`). Every step runs on every sample
//! (there is no early stop: later steps shrink the perturbation). Defaults as the paper and
//! AutoAttack: 100 steps, α_max 0.1, η 1.05, β 0.9; restarts after the first start from a
//! random point at half the radius ε of the threat model.
//!
//! FAB-T (AutoAttack's version) attacks the 2nd, 3rd, … most likely classes of the clean logits
//! in turn, `target_classes` of them. [`Attack::perturb`] follows the reference code: each pass
//! (target × restart) runs on the samples not yet broken within ε, and a sample's result is the
//! first example found within ε. [`Attack::minimal_perturbation`] runs every pass on every
//! correctly classified sample and keeps the smallest perturbation, so one run gives the whole
//! ε-curve; with one restart (no random draws) both agree at every ε.
//!
//! The hyperplane projection: after orienting `w` so that the point `p` lies on the side
//! `⟨w, p⟩ − b = c ≥ 0`, coordinate `i` may move by `u_i` towards the plane, up to the room
//! `r_i` the domain leaves in that direction. L∞: the smallest `λ` with
//! `Σ |w_i|·min(λ, r_i) ≥ c`, and `δ_i = min(λ, r_i)` along `−sign(w_i)`; L2 (Lagrange): the
//! same with weights `w_i²` and breakpoints `r_i/|w_i|`, and `δ_i = |w_i|·min(λ, r_i/|w_i|)`.
//! One sort of the breakpoints gives `λ` exactly. When even the whole box cannot reach the
//! plane, every coordinate moves to its bound (the reference code's choice).

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::{check_at_least_one, check_positive, kernel, Attack, AttackBatch, Norm, ThreatModel};
use crate::model::Model;
use crate::rng::Rng;
use crate::{Error, Result};

/// Added to the dual norm of a gradient before dividing by it (the reference code).
const DIV_EPS: f64 = 1e-12;
/// The smallest step length used in α's ratio (the reference code).
const MIN_STEP: f64 = 1e-8;
/// |w_i| below this gives coordinate `i` no part in an L2 projection (the reference code).
const L2_ZERO: f32 = 1e-8;

/// Hyper-parameters of [`Fab`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FabConfig {
    /// The budget [`Attack::perturb`] keeps an example within, and the radius of the random
    /// starts (default 0.1; finite and > 0).
    pub eps: f64,
    /// Norm of the threat model and of the distance minimised (default L∞).
    pub norm: Norm,
    /// Steps per start (default 100; ≥ 1).
    pub steps: usize,
    /// Starts per sample (and per target), the first from the clean input (default 1; ≥ 1).
    pub restarts: usize,
    /// Largest weight of the step from the original point (default 0.1; in (0, 1]).
    pub alpha_max: f64,
    /// Overshoot of each projection (default 1.05; ≥ 1).
    pub eta: f64,
    /// Factor of the backward step after a success (default 0.9; in (0, 1]).
    pub beta: f64,
}

impl Default for FabConfig {
    fn default() -> Self {
        FabConfig {
            eps: 0.1,
            norm: Norm::Linf,
            steps: 100,
            restarts: 1,
            alpha_max: 0.1,
            eta: 1.05,
            beta: 0.9,
        }
    }
}

/// FAB (untargeted) or FAB-T, validated.
#[derive(Debug, Clone)]
pub struct Fab {
    cfg: FabConfig,
    /// 0: untargeted; else the number of most likely wrong classes attacked in turn.
    target_classes: usize,
}

impl Fab {
    /// Untargeted FAB.
    pub fn new(cfg: FabConfig) -> Result<Self> {
        check_positive("eps", cfg.eps)?;
        check_at_least_one("steps", cfg.steps)?;
        check_at_least_one("restarts", cfg.restarts)?;
        let fraction = |name: &'static str, v: f64| {
            if v > 0.0 && v <= 1.0 {
                Ok(())
            } else {
                Err(Error::param(name, v, "a fraction in (0, 1]"))
            }
        };
        fraction("alpha_max", cfg.alpha_max)?;
        fraction("beta", cfg.beta)?;
        if !(cfg.eta.is_finite() && cfg.eta >= 1.0) {
            return Err(Error::param("eta", cfg.eta, "a finite number ≥ 1"));
        }
        Ok(Fab {
            cfg,
            target_classes: 0,
        })
    }

    /// FAB-T against the `target_classes` most likely wrong classes, in turn (AutoAttack: 9).
    pub fn targeted(cfg: FabConfig, target_classes: usize) -> Result<Self> {
        check_at_least_one("target_classes", target_classes)?;
        Ok(Fab {
            target_classes,
            ..Fab::new(cfg)?
        })
    }

    /// The configuration.
    pub fn config(&self) -> &FabConfig {
        &self.cfg
    }

    /// The attack on the correctly classified samples of `batch`. With `budget`, each pass
    /// runs on the samples not yet broken within it and the first such example is kept; without,
    /// every pass runs on every correct sample and the smallest example is kept.
    fn search(
        &self,
        model: &Model,
        batch: &AttackBatch<'_>,
        rng: &mut Rng,
        budget: Option<f32>,
    ) -> Result<Tensor> {
        let x = batch.inputs;
        let labels = batch.labels.to_vec1::<u32>()?;
        let n = labels.len();
        let clean = model.checked_logits(x)?;
        let classes = clean.first().map_or(0, Vec::len);
        self.check_classes(classes)?;
        let x0 = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let dim = x0.len() / n.max(1);
        let mut adv = x0.clone();
        let mut best = vec![f32::INFINITY; n];
        let mut open: Vec<bool> = clean
            .iter()
            .zip(&labels)
            .map(|(row, &y)| crate::model::argmax(row) == y)
            .collect();
        // FAB-T: the classes by clean logit, most likely first (ties by index).
        let ranked: Vec<Vec<u32>> = if self.target_classes > 0 {
            clean
                .iter()
                .map(|row| {
                    let mut order: Vec<u32> = (0..row.len() as u32).collect();
                    order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
                    order
                })
                .collect()
        } else {
            Vec::new()
        };
        let passes = self.target_classes.max(1);
        for pass in 0..passes {
            for restart in 0..self.cfg.restarts {
                // With a budget, only what is still unbroken within it; without, every
                // correct sample on every pass.
                let rows: Vec<usize> = (0..n).filter(|&i| open[i]).collect();
                if rows.is_empty() {
                    break;
                }
                let sub_x0: Vec<f32> = rows
                    .iter()
                    .flat_map(|&i| x0[i * dim..(i + 1) * dim].iter().copied())
                    .collect();
                let sub_y: Vec<u32> = rows.iter().map(|&i| labels[i]).collect();
                let targets: Option<Vec<u32>> = (self.target_classes > 0)
                    .then(|| rows.iter().map(|&i| ranked[i][pass + 1]).collect());
                let mut shape = x.dims().to_vec();
                shape[0] = rows.len();
                let (found, norms) = self.single_run(
                    model,
                    (&sub_x0, &shape, x.device()),
                    &sub_y,
                    classes,
                    targets.as_deref(),
                    restart > 0,
                    rng,
                )?;
                for (j, &i) in rows.iter().enumerate() {
                    let t = norms[j];
                    let keep = match budget {
                        Some(eps) => t <= eps,
                        None => t < best[i],
                    };
                    if keep {
                        best[i] = t;
                        adv[i * dim..(i + 1) * dim].copy_from_slice(&found[j * dim..(j + 1) * dim]);
                        open[i] = budget.is_none();
                    }
                }
            }
        }
        Ok(Tensor::from_vec(adv, x.shape(), x.device())?.to_dtype(x.dtype())?)
    }

    /// One start on `n` samples (`x0`: their values, row-major, and the batch's shape): the
    /// closest misclassified point found per sample and its distance (∞ where none was).
    fn single_run(
        &self,
        model: &Model,
        (x0, shape, device): (&[f32], &[usize], &Device),
        labels: &[u32],
        classes: usize,
        targets: Option<&[u32]>,
        random_start: bool,
        rng: &mut Rng,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let n = labels.len();
        let dim = x0.len() / n;
        let domain = model.domain();
        let (lo, hi) = (domain.lo(), domain.hi());
        let cfg = &self.cfg;
        let mut x1 = x0.to_vec();
        if random_start {
            let noise = match cfg.norm {
                Norm::Linf => rng.uniform_vec(n * dim, -1.0, 1.0),
                Norm::L2 => rng.normal_vec(n * dim),
            };
            x1.par_chunks_mut(dim)
                .zip(noise.par_chunks(dim))
                .zip(x0.par_chunks(dim))
                .for_each(|((x1, t), x0)| {
                    let scale = 0.5 * cfg.eps / norm_of(t, cfg.norm).max(f64::MIN_POSITIVE);
                    for ((v, &t), &o) in x1.iter_mut().zip(t).zip(x0) {
                        *v = (o + (scale * f64::from(t)) as f32).clamp(lo, hi);
                    }
                });
        }
        let mut found = x0.to_vec();
        let mut dist = vec![f32::INFINITY; n];
        let cotangent = match targets {
            Some(t) => {
                let mut c = vec![0f32; n * classes];
                for (i, (&y, &t)) in labels.iter().zip(t).enumerate() {
                    c[i * classes + t as usize] += 1.0;
                    c[i * classes + y as usize] -= 1.0;
                }
                Some(Tensor::from_vec(c, (n, classes), device)?)
            }
            None => None,
        };
        for _ in 0..cfg.steps {
            let xt = Tensor::from_slice(&x1, shape, device)?;
            // Per sample: the hyperplane ⟨w, z⟩ = b of the linearised boundary, as (w, df)
            // with df = z_k − z_y at x₁ and w = ∇(z_k − z_y) (so b = ⟨w, x₁⟩ − df).
            let (df, w): (Vec<f64>, Vec<f32>) = match &cotangent {
                Some(cot) => {
                    let (logits, grad) = kernel::logits_and_vjp(model, &xt, cot)?;
                    let z = logits.flatten_all()?.to_vec1::<f32>()?;
                    let df = (0..n)
                        .map(|i| {
                            let (t, y) = (targets.unwrap()[i] as usize, labels[i] as usize);
                            f64::from(z[i * classes + t]) - f64::from(z[i * classes + y])
                        })
                        .collect();
                    (df, grad.flatten_all()?.to_vec1::<f32>()?)
                }
                None => {
                    let (logits, jac) = kernel::logits_and_class_grads(model, &xt)?;
                    let classes = logits.dim(1)?;
                    let z = logits.flatten_all()?.to_vec1::<f32>()?;
                    let jac = jac.flatten_all()?.to_vec1::<f32>()?;
                    nearest_boundaries(&z, &jac, labels, classes, cfg.norm)
                }
            };
            x1.par_chunks_mut(dim)
                .zip(x0.par_chunks(dim))
                .zip(w.par_chunks(dim).zip(&df))
                .for_each_init(
                    || (vec![0f32; dim], vec![0f32; dim], Vec::with_capacity(dim)),
                    |(d1, d0, scratch), ((x1, x0), (w, &df))| {
                        let b = dot(w, x1) - df;
                        project(x1, w, b, cfg.norm, (lo, hi), scratch, d1);
                        project(x0, w, b, cfg.norm, (lo, hi), scratch, d0);
                        let a1 = norm_of(d1, cfg.norm).max(MIN_STEP);
                        let a0 = norm_of(d0, cfg.norm).max(MIN_STEP);
                        let alpha = (a1 / (a1 + a0)).clamp(0.0, cfg.alpha_max) as f32;
                        let eta = cfg.eta as f32;
                        for i in 0..x1.len() {
                            let v = (x1[i] + eta * d1[i]) * (1.0 - alpha)
                                + (x0[i] + d0[i] * eta) * alpha;
                            x1[i] = v.clamp(lo, hi);
                        }
                    },
                );
            let pred = model.predict(&Tensor::from_slice(&x1, shape, device)?)?;
            let beta = cfg.beta as f32;
            x1.par_chunks_mut(dim)
                .zip(x0.par_chunks(dim))
                .zip(found.par_chunks_mut(dim).zip(dist.par_iter_mut()))
                .zip(pred.par_iter().zip(labels))
                .for_each(|(((x1, x0), (found, dist)), (&p, &y))| {
                    if p == y {
                        return;
                    }
                    let t = distance(x1, x0, cfg.norm);
                    if t < *dist {
                        *dist = t;
                        found.copy_from_slice(x1);
                    }
                    for (v, &o) in x1.iter_mut().zip(x0) {
                        *v = o + (*v - o) * beta;
                    }
                });
        }
        Ok((found, dist))
    }
}

/// Untargeted FAB's hyperplane per sample: the class `k ≠ y` whose linearised boundary is
/// nearest in the dual norm, as `(z_k − z_y, ∇z_k − ∇z_y)`; `z`: `n × C`, `jac`: `n × C × D`.
fn nearest_boundaries(
    z: &[f32],
    jac: &[f32],
    labels: &[u32],
    classes: usize,
    norm: Norm,
) -> (Vec<f64>, Vec<f32>) {
    let n = labels.len();
    let dim = jac.len() / (n * classes).max(1);
    let mut w = vec![0f32; n * dim];
    let df: Vec<f64> = w
        .par_chunks_mut(dim)
        .enumerate()
        .map(|(i, w)| {
            let y = labels[i] as usize;
            let grads = &jac[i * classes * dim..(i + 1) * classes * dim];
            let own = &grads[y * dim..(y + 1) * dim];
            let zi = &z[i * classes..(i + 1) * classes];
            let mut pick = (f64::INFINITY, y);
            for k in (0..classes).filter(|&k| k != y) {
                let g = &grads[k * dim..(k + 1) * dim];
                let dual: f64 = match norm {
                    Norm::Linf => g.iter().zip(own).map(|(a, b)| f64::from(a - b).abs()).sum(),
                    Norm::L2 => g
                        .iter()
                        .zip(own)
                        .map(|(a, b)| f64::from(a - b).powi(2))
                        .sum::<f64>()
                        .sqrt(),
                };
                let d = (f64::from(zi[k]) - f64::from(zi[y])).abs() / (DIV_EPS + dual);
                if d < pick.0 {
                    pick = (d, k);
                }
            }
            let k = pick.1;
            let g = &grads[k * dim..(k + 1) * dim];
            for ((w, a), b) in w.iter_mut().zip(g).zip(own) {
                *w = a - b;
            }
            f64::from(zi[k]) - f64::from(zi[y])
        })
        .collect();
    (df, w)
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(a, b)| f64::from(*a) * f64::from(*b))
        .sum()
}

/// `‖v‖` in `norm`.
fn norm_of(v: &[f32], norm: Norm) -> f64 {
    match norm {
        Norm::Linf => v.iter().fold(0f32, |m, x| m.max(x.abs())).into(),
        Norm::L2 => v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt(),
    }
}

/// `‖a − b‖` in `norm`, in f32 as the distances the budget is compared with.
fn distance(a: &[f32], b: &[f32], norm: Norm) -> f32 {
    match norm {
        Norm::Linf => a.iter().zip(b).fold(0f32, |m, (a, b)| m.max((a - b).abs())),
        Norm::L2 => a
            .iter()
            .zip(b)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum::<f64>()
            .sqrt() as f32,
    }
}

/// The minimal-`norm` move `out` taking `p` onto the hyperplane `⟨w, z⟩ = b` inside the box
/// `[lo, hi]`, or to the box corner nearest the plane when the plane does not meet it (see the
/// module docs). `scratch` holds the breakpoints.
fn project(
    p: &[f32],
    w: &[f32],
    b: f64,
    norm: Norm,
    (lo, hi): (f32, f32),
    scratch: &mut Vec<(f32, f32)>,
    out: &mut [f32],
) {
    let c = dot(w, p) - b;
    // Moving coordinate i by one unit along `dir_i = −sign(c)·sign(w_i)` lowers |c| by |w_i|.
    let toward = if c >= 0.0 { -1.0f32 } else { 1.0 };
    let need = c.abs();
    let active = |w: f32| match norm {
        Norm::Linf => w != 0.0,
        Norm::L2 => w.abs() >= L2_ZERO,
    };
    // Per coordinate: (breakpoint, weight) of f(λ) = Σ weight·min(λ, breakpoint).
    let term = |p: f32, w: f32| -> (f32, f32) {
        let room = if toward * w > 0.0 { hi - p } else { p - lo }.max(0.0);
        match norm {
            Norm::Linf => (room, w.abs()),
            Norm::L2 => (room / w.abs(), w * w),
        }
    };
    scratch.clear();
    let mut capacity = 0f64;
    for (&p, &w) in p.iter().zip(w) {
        if active(w) {
            let (r, a) = term(p, w);
            capacity += f64::from(r) * f64::from(a);
            scratch.push((r, a));
        }
    }
    let lambda = if capacity <= need {
        f64::INFINITY
    } else {
        scratch.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
        let mut rest: f64 = scratch.iter().map(|&(_, a)| f64::from(a)).sum();
        let mut acc = 0f64;
        let mut lambda = 0f64;
        for &(r, a) in scratch.iter() {
            let (r, a) = (f64::from(r), f64::from(a));
            if acc + r * rest >= need {
                lambda = ((need - acc) / rest).max(0.0);
                break;
            }
            acc += a * r;
            rest -= a;
        }
        lambda
    };
    for ((o, &p), &w) in out.iter_mut().zip(p).zip(w) {
        *o = if active(w) {
            let (r, _) = term(p, w);
            let step = match norm {
                Norm::Linf => lambda.min(f64::from(r)),
                Norm::L2 => f64::from(w.abs()) * lambda.min(f64::from(r)),
            };
            toward * w.signum() * step as f32
        } else {
            0.0
        };
    }
}

impl Attack for Fab {
    fn id(&self) -> &'static str {
        if self.target_classes > 0 {
            "fab-t"
        } else {
            "fab"
        }
    }

    fn describe(&self) -> String {
        let c = &self.cfg;
        let what = if self.target_classes > 0 {
            format!(
                "FAB-T-{} ({} targets, ",
                c.norm.symbol(),
                self.target_classes
            )
        } else {
            format!("FAB-{} (", c.norm.symbol())
        };
        format!(
            "{what}ε = {}, {} steps, {} restart{}, α_max {}, η {}, β {})",
            c.eps,
            c.steps,
            c.restarts,
            if c.restarts == 1 { "" } else { "s" },
            c.alpha_max,
            c.eta,
            c.beta
        )
    }

    fn threat(&self) -> ThreatModel {
        ThreatModel {
            norm: self.cfg.norm,
            eps: self.cfg.eps,
        }
    }

    fn check_classes(&self, num_classes: usize) -> Result<()> {
        super::check_target_classes(self.target_classes, num_classes)
    }

    fn perturb(&self, model: &Model, batch: &AttackBatch<'_>, rng: &mut Rng) -> Result<Tensor> {
        let batch = self.own_targets(batch)?;
        self.search(model, &batch, rng, Some(self.cfg.eps as f32))
    }

    fn minimal_perturbation(
        &self,
        model: &Model,
        batch: &AttackBatch<'_>,
        rng: &mut Rng,
    ) -> Result<Option<Tensor>> {
        let batch = self.own_targets(batch)?;
        self.search(model, &batch, rng, None).map(Some)
    }
}

impl Fab {
    /// FAB-T picks its own targets (a targeted evaluation's are not used); untargeted FAB
    /// refuses them.
    fn own_targets<'a>(&self, batch: &AttackBatch<'a>) -> Result<AttackBatch<'a>> {
        if batch.targets.is_some() && self.target_classes == 0 {
            return Err(Error::param(
                "targeting",
                "targeted",
                "untargeted (FAB moves to the nearest boundary; FAB-T, `fab-t`, attacks the \
                 most likely wrong classes)",
            ));
        }
        Ok(AttackBatch {
            targets: None,
            ..*batch
        })
    }
}

#[cfg(test)]
mod should {
    use super::*;
    use candle_core::Device;

    /// The slow obvious projection: bisection on λ of the same KKT form, with the residual
    /// evaluated directly, and the feasibility / optimality conditions checked separately.
    fn bisect(p: &[f32], w: &[f32], b: f64, norm: Norm) -> Vec<f64> {
        let c = dot(w, p) - b;
        let toward = if c >= 0.0 { -1.0 } else { 1.0 };
        let step = |lambda: f64| -> Vec<f64> {
            p.iter()
                .zip(w)
                .map(|(&p, &w)| {
                    let dir = toward * f64::from(w.signum());
                    let room = if dir > 0.0 { 1.0 - p } else { p } as f64;
                    match norm {
                        Norm::Linf => dir * lambda.min(room),
                        Norm::L2 => dir * (lambda * f64::from(w.abs())).min(room),
                    }
                })
                .collect()
        };
        let reached = |d: &[f64]| {
            d.iter()
                .zip(w)
                .map(|(d, &w)| d * f64::from(w))
                .sum::<f64>()
                .abs()
        };
        let (mut lo, mut hi) = (0.0, 1e6);
        for _ in 0..200 {
            let mid = 0.5 * (lo + hi);
            if reached(&step(mid)) >= c.abs() {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        step(hi)
    }

    #[test]
    fn project_onto_a_hyperplane_in_the_box_as_bisection_does() {
        let mut rng = Rng::seed_from_u64(3);
        for norm in [Norm::Linf, Norm::L2] {
            let mut scratch = Vec::new();
            for case in 0..200 {
                let dim = 1 + rng.below(40);
                let p: Vec<f32> = rng.uniform_vec(dim, 0.0, 1.0);
                let w: Vec<f32> = rng.normal_vec(dim);
                // A plane through a random point of the box (reachable), or far away.
                let target: Vec<f32> = rng.uniform_vec(dim, 0.0, 1.0);
                let far = case % 5 == 0;
                let b = dot(&w, &target) + if far { 1e3 } else { 0.0 };
                let mut d = vec![0f32; dim];
                project(&p, &w, b, norm, (0.0, 1.0), &mut scratch, &mut d);
                let slow = bisect(&p, &w, b, norm);
                for (i, (&fast, &slow)) in d.iter().zip(&slow).enumerate() {
                    assert!(
                        (f64::from(fast) - slow).abs() < 1e-5,
                        "{norm:?} case {case} coordinate {i}: {fast} vs {slow}"
                    );
                }
                // Inside the box, and on the plane when the plane meets the box.
                let moved: Vec<f32> = p.iter().zip(&d).map(|(p, d)| p + d).collect();
                assert!(moved.iter().all(|&v| (-1e-6..=1.0 + 1e-6).contains(&v)));
                if !far {
                    let residual = dot(&w, &moved) - b;
                    assert!(residual.abs() < 1e-4, "{norm:?} case {case}: {residual}");
                    // No point of the box on the plane is closer: the target is one such point.
                    let to_target: Vec<f32> = target.iter().zip(&p).map(|(t, p)| t - p).collect();
                    assert!(norm_of(&d, norm) <= norm_of(&to_target, norm) + 1e-5);
                }
            }
        }
    }

    /// Three classes, logits `W·x`, in a domain wide enough never to clamp.
    fn linear() -> Result<(Model, Tensor, Vec<[f64; 3]>)> {
        let rows = vec![[1.0f64, -2.0, 0.5], [0.0, 1.0, -1.0], [-1.0, 0.5, 2.0]];
        let w = Tensor::new(
            &[[1.0f32, -2.0, 0.5], [0.0, 1.0, -1.0], [-1.0, 0.5, 2.0]],
            &Device::Cpu,
        )?;
        let model = Model::new(move |x: &Tensor| x.matmul(&w))
            .with_domain(crate::model::InputDomain::new(-10.0, 10.0)?);
        Ok((
            model,
            Tensor::new(&[[1.0f32, 0.2, 0.1]], &Device::Cpu)?,
            rows,
        ))
    }

    /// On a linear model the minimal perturbation is known in closed form:
    /// `min_k |z_k − z_y| / ‖w_k − w_y‖_q` untargeted, the target's own term for FAB-T. FAB
    /// reaches it from above (each success is pulled back by β, then projected again).
    #[test]
    fn reach_the_closed_form_minimal_perturbation_of_a_linear_model() -> Result<()> {
        let (model, x, rows) = linear()?;
        let xs = [1.0f64, 0.2, 0.1];
        let z: Vec<f64> = (0..3)
            .map(|k| (0..3).map(|i| xs[i] * rows[i][k]).sum())
            .collect();
        let y = (0..3).fold(0, |b, k| if z[k] > z[b] { k } else { b });
        let labels = Tensor::new(&[y as u32], &Device::Cpu)?;
        for norm in [Norm::L2, Norm::Linf] {
            let dist = |k: usize| {
                let w: Vec<f64> = (0..3).map(|i| rows[i][k] - rows[i][y]).collect();
                let q = match norm {
                    Norm::L2 => w.iter().map(|v| v * v).sum::<f64>().sqrt(),
                    _ => w.iter().map(|v| v.abs()).sum(),
                };
                (z[k] - z[y]).abs() / q
            };
            let nearest = (0..3)
                .filter(|&k| k != y)
                .map(dist)
                .fold(f64::INFINITY, f64::min);
            let cfg = FabConfig {
                norm,
                eps: 10.0,
                ..FabConfig::default()
            };
            for (attack, expected) in [
                (Fab::new(cfg)?, nearest),
                // One target: the second most likely class.
                (Fab::targeted(cfg, 1)?, {
                    let mut order: Vec<usize> = (0..3).collect();
                    order.sort_by(|&a, &b| z[b].total_cmp(&z[a]));
                    dist(order[1])
                }),
            ] {
                let adv = attack
                    .minimal_perturbation(
                        &model,
                        &AttackBatch::untargeted(&x, &labels, 3),
                        &mut Rng::seed_from_u64(0),
                    )?
                    .unwrap();
                let found = f64::from(distance(
                    &adv.flatten_all()?.to_vec1::<f32>()?,
                    &x.flatten_all()?.to_vec1::<f32>()?,
                    norm,
                ));
                assert_ne!(model.predict(&adv)?[0], y as u32);
                assert!(
                    found >= expected * (1.0 - 1e-5) && found <= expected * 1.01,
                    "{}: found {found}, closed form {expected}",
                    attack.describe()
                );
            }
        }
        Ok(())
    }

    #[test]
    fn reject_out_of_range_parameters() {
        for (cfg, message) in [
            (
                FabConfig {
                    alpha_max: 0.0,
                    ..FabConfig::default()
                },
                "invalid value for `alpha_max`: 0; expected a fraction in (0, 1]",
            ),
            (
                FabConfig {
                    eta: 0.9,
                    ..FabConfig::default()
                },
                "invalid value for `eta`: 0.9; expected a finite number ≥ 1",
            ),
            (
                FabConfig {
                    beta: 1.5,
                    ..FabConfig::default()
                },
                "invalid value for `beta`: 1.5; expected a fraction in (0, 1]",
            ),
            (
                FabConfig {
                    steps: 0,
                    ..FabConfig::default()
                },
                "invalid value for `steps`: 0; expected an integer ≥ 1",
            ),
        ] {
            assert_eq!(Fab::new(cfg).unwrap_err().to_string(), message);
        }
        assert!(Fab::targeted(FabConfig::default(), 0).is_err());
    }
}
