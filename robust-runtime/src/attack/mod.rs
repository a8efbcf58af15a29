//! Adversarial attacks.
//!
//! An [`Attack`] turns a batch of inputs into adversarial inputs inside a [`ThreatModel`]
//! (an Lp ball of radius ε around each input, intersected with the model's input domain). It
//! works on the whole batch on the tensor's device; randomness comes from the run's [`Rng`].
//! An attack that fails to change a prediction is a result, not an error.
//!
//! | attack | file | paper |
//! |---|---|---|
//! | [`Fgsm`] | `fgsm.rs` | Goodfellow, Shlens & Szegedy 2015 |
//! | [`Pgd`] | `pgd.rs` | Madry et al. 2018 |
//! | [`Apgd`] (`apgd`, `apgd-t`) | `apgd.rs` | Croce & Hein 2020 |
//! | [`Ensemble`] (`autoattack`) | `ensemble.rs` | Croce & Hein 2020 (the cascade) |
//! | [`Square`] | `square.rs` | Andriushchenko, Croce, Flammarion & Hein 2020 |
//! | [`CarliniWagner`] | `cw.rs` | Carlini & Wagner 2017 |
//! | [`DeepFool`] | `deepfool.rs` | Moosavi-Dezfooli, Fawzi & Frossard 2016 |
//! | [`Fab`] (`fab`, `fab-t`) | `fab.rs` | Croce & Hein 2020 (FAB) |
//!
//! The forward pass, input gradient and projection that they share live in `kernel.rs`.
//!
//! C&W, DeepFool and FAB are *minimal-perturbation* attacks: they look for the smallest perturbation
//! that changes the prediction, with no ε bound ([`Attack::minimal_perturbation`]). Their
//! [`Attack::perturb`] keeps a sample's adversarial input only when its norm is within ε, so
//! ε keeps meaning the budget, and one unbounded run gives the whole ε-sweep.
//!
//! ```
//! use robust_runtime::prelude::*;
//! use robust_runtime::attack::{Attack, AttackBatch, Pgd, PgdConfig};
//! use candle_core::{Device, Tensor};
//!
//! // A linear two-class model: logit difference x₀ − x₁.
//! let w = Tensor::new(&[[1.0f32, -1.0], [-1.0, 1.0]], &Device::Cpu)?;
//! let model = Model::new(move |x: &Tensor| x.matmul(&w));
//! let x = Tensor::new(&[[0.6f32, 0.4]], &Device::Cpu)?;
//! let y = Tensor::new(&[0u32], &Device::Cpu)?;
//! let pgd = Pgd::new(PgdConfig { eps: 0.15, steps: 10, random_start: false, ..PgdConfig::default() })?;
//! let adv = pgd.perturb(&model, &AttackBatch::untargeted(&x, &y, 2), &mut Rng::seed_from_u64(0))?;
//! assert_eq!(model.predict(&adv)?, vec![1]); // 0.45 < 0.55: flipped within ε = 0.15
//! # Ok::<(), robust_runtime::Error>(())
//! ```

mod apgd;
mod cw;
mod deepfool;
mod ensemble;
mod fab;
mod fgsm;
pub(crate) mod kernel;
mod loss;
mod pgd;
mod square;

use candle_core::Tensor;

pub use apgd::{Apgd, ApgdConfig};
pub use cw::{CarliniWagner, CwConfig};
pub use deepfool::{DeepFool, DeepFoolConfig};
pub use ensemble::{CascadeOutcome, Ensemble, Version, MEMBERS, RAND_EOT_DRAWS};
pub use fab::{Fab, FabConfig};
pub use fgsm::{Fgsm, FgsmConfig};
pub use loss::Loss;
pub use pgd::{Pgd, PgdConfig};
pub use square::{Square, SquareConfig};

use crate::model::{argmax, Model};
use crate::rng::Rng;
use crate::{Error, Result};

/// The attacks that [`build`] knows, by the names the macro accepts (the key table's list).
pub use robust_spec::names::ATTACKS;

/// The norm of a threat model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Norm {
    /// L∞: every input coordinate moves by at most ε (`"linf"`).
    #[default]
    Linf,
    /// L2: the Euclidean length of the perturbation is at most ε (`"l2"`).
    L2,
}

impl Norm {
    /// Names accepted by [`Norm::from_name`].
    pub const NAMES: &'static [&'static str] = robust_spec::names::NORMS;

    /// `"linf"` or `"l2"`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "linf" => Ok(Norm::Linf),
            "l2" => Ok(Norm::L2),
            other => Err(Error::unknown("norm", other, Self::NAMES)),
        }
    }

    /// The short name.
    pub fn name(&self) -> &'static str {
        match self {
            Norm::Linf => "linf",
            Norm::L2 => "l2",
        }
    }

    /// The name as printed in reports (`L∞`, `L2`).
    pub fn symbol(&self) -> &'static str {
        match self {
            Norm::Linf => "L∞",
            Norm::L2 => "L2",
        }
    }
}

/// What the adversary may do: move each input by at most ε in `norm`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ThreatModel {
    /// The norm.
    pub norm: Norm,
    /// The radius, in input units.
    pub eps: f64,
}

impl ThreatModel {
    /// A threat model with a finite ε > 0.
    pub fn new(norm: Norm, eps: f64) -> Result<Self> {
        check_positive("eps", eps)?;
        Ok(ThreatModel { norm, eps })
    }
}

/// How a targeted attack chooses its target classes.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub enum Targeting {
    /// Push the prediction away from the true label.
    #[default]
    Untargeted,
    /// A target drawn uniformly among the other classes, from the run's RNG.
    Random,
    /// The class with the lowest clean logit.
    LeastLikely,
}

impl Targeting {
    /// Whether a target class is chosen.
    pub fn is_targeted(&self) -> bool {
        !matches!(self, Targeting::Untargeted)
    }

    /// Target classes for a batch given its labels and clean logits (`None` when untargeted).
    pub fn choose(
        &self,
        labels: &[u32],
        clean_logits: &[Vec<f32>],
        rng: &mut Rng,
    ) -> Option<Vec<u32>> {
        let classes = clean_logits.first().map_or(0, Vec::len);
        match self {
            Targeting::Untargeted => None,
            Targeting::Random => Some(
                labels
                    .iter()
                    .map(|&y| {
                        // Uniform over the classes other than y.
                        let t = rng.below(classes - 1) as u32;
                        if t >= y {
                            t + 1
                        } else {
                            t
                        }
                    })
                    .collect(),
            ),
            Targeting::LeastLikely => Some(
                clean_logits
                    .iter()
                    .map(|row| argmax(&row.iter().map(|v| -v).collect::<Vec<_>>()))
                    .collect(),
            ),
        }
    }
}

/// One batch handed to an attack.
#[derive(Debug, Clone, Copy)]
pub struct AttackBatch<'a> {
    /// Clean inputs, `N × …`.
    pub inputs: &'a Tensor,
    /// True labels, `N` u32.
    pub labels: &'a Tensor,
    /// Target classes of a targeted attack, `N` u32.
    pub targets: Option<&'a Tensor>,
    /// Number of classes of the model.
    pub num_classes: usize,
}

impl<'a> AttackBatch<'a> {
    /// An untargeted batch.
    pub fn untargeted(inputs: &'a Tensor, labels: &'a Tensor, num_classes: usize) -> Self {
        AttackBatch {
            inputs,
            labels,
            targets: None,
            num_classes,
        }
    }

    /// The loss bound to this batch's labels (and targets, if targeted).
    pub(crate) fn objective(&self, loss: Loss) -> Result<loss::Objective> {
        loss::Objective::new(loss, self.labels, self.targets, self.num_classes)
    }

    /// Per sample, whether `pred` is a success: a target hit, or a label missed.
    fn successes(&self, pred: &[u32]) -> Result<Vec<bool>> {
        Ok(match self.targets {
            Some(t) => t
                .to_vec1::<u32>()?
                .iter()
                .zip(pred)
                .map(|(t, p)| t == p)
                .collect(),
            None => self
                .labels
                .to_vec1::<u32>()?
                .iter()
                .zip(pred)
                .map(|(y, p)| y != p)
                .collect(),
        })
    }
}

/// An adversarial attack on a batch.
pub trait Attack {
    /// The name used by the macro (`"pgd"`).
    fn id(&self) -> &'static str;

    /// One line with the hyper-parameters, for reports.
    fn describe(&self) -> String;

    /// The threat model the adversarial examples stay in.
    fn threat(&self) -> ThreatModel;

    /// Adversarial versions of `batch.inputs`, inside the threat model and the model's domain.
    fn perturb(&self, model: &Model, batch: &AttackBatch<'_>, rng: &mut Rng) -> Result<Tensor>;

    /// The cascade behind an ensemble, so evaluation can report each stage.
    fn as_ensemble(&self) -> Option<&Ensemble> {
        None
    }

    /// The attack to run instead on a randomized model (the EOT twin of a random defence), with
    /// the gradient draws it averages over: AutoAttack's `rand` version for `autoattack`.
    /// `None`: the attack itself, with the twin's draws.
    fn randomized_version(&self) -> Option<(&dyn Attack, usize)> {
        None
    }

    /// Rejects a configuration that cannot run on a model with `num_classes` outputs
    /// (APGD-T's `target_classes`), before any sample is attacked: an ensemble checks every
    /// member, including those that no sample may reach.
    fn check_classes(&self, num_classes: usize) -> Result<()> {
        let _ = num_classes;
        Ok(())
    }

    /// Whether the attack uses only the model's outputs, never its gradients (Square). A
    /// black-box attack that beats the gradient attacks is a sign of gradient masking.
    fn is_black_box(&self) -> bool {
        false
    }

    /// For minimal-perturbation attacks: the adversarial inputs found with no ε bound (the whole
    /// ε-sweep can be read off one run). `None` for attacks bounded by ε.
    ///
    /// A sample the attack could not break comes back as its clean input, so every returned
    /// input that differs from the clean one is adversarial.
    fn minimal_perturbation(
        &self,
        model: &Model,
        batch: &AttackBatch<'_>,
        rng: &mut Rng,
    ) -> Result<Option<Tensor>> {
        let _ = (model, batch, rng);
        Ok(None)
    }
}

/// A targeted attack against the `target_classes` most likely wrong classes needs that many
/// wrong classes (0: untargeted, always fine).
pub(crate) fn check_target_classes(target_classes: usize, num_classes: usize) -> Result<()> {
    if target_classes >= num_classes.max(1) {
        return Err(Error::param(
            "target_classes",
            target_classes,
            format!(
                "at most {} (the model's classes minus one)",
                num_classes.saturating_sub(1)
            ),
        ));
    }
    Ok(())
}

/// `perturb` of a minimal-perturbation attack: its unbounded result, kept per sample only where
/// it fits in the attack's ε ([`within_budget`]).
pub(crate) fn minimal_within_budget(
    attack: &(impl Attack + ?Sized),
    model: &Model,
    batch: &AttackBatch<'_>,
    rng: &mut Rng,
) -> Result<Tensor> {
    match attack.minimal_perturbation(model, batch, rng)? {
        Some(adv) => within_budget(&adv, batch.inputs, &attack.threat()),
        None => Ok(batch.inputs.clone()),
    }
}

/// Per sample, `adv` where its perturbation from `x` is at most `threat.eps` in `threat.norm`,
/// else `x`: a minimal adversarial example outside the budget does not break the sample.
pub(crate) fn within_budget(adv: &Tensor, x: &Tensor, threat: &ThreatModel) -> Result<Tensor> {
    let delta = (adv - x)?;
    let norms = match threat.norm {
        Norm::Linf => kernel::per_sample_linf(&delta)?,
        Norm::L2 => kernel::per_sample_l2(&delta)?,
    };
    let inside = norms.le(threat.eps)?;
    kernel::select_samples(&inside, adv, x)
}

/// Hyper-parameters for [`build`]: the union of what the attacks take. `None` means the
/// attack's default; parameters an attack does not use are ignored.
#[derive(Debug, Clone, Default)]
pub struct AttackParams {
    /// Norm of the threat model (default L∞).
    pub norm: Norm,
    /// Loss to ascend (default cross-entropy).
    pub loss: Loss,
    /// Iterations (PGD default 40; C&W default 100 per binary-search step; DeepFool default 50).
    pub steps: Option<usize>,
    /// Step size α (PGD, default 2.5·ε/steps).
    pub step_size: Option<f64>,
    /// Random restarts, keeping the worst case per sample (PGD, default 1).
    pub restarts: Option<usize>,
    /// Start from a random point in the ball (PGD, default true).
    pub random_start: Option<bool>,
    /// Target classes of APGD-T (default 9).
    pub target_classes: Option<usize>,
    /// Forward passes per sample (Square, default 5000).
    pub queries: Option<usize>,
    /// Initial fraction of the pixels a square covers (Square, default 0.8; in (0, 1]).
    pub p_init: Option<f64>,
    /// Logit margin κ the adversarial example must reach (C&W, default 0; ≥ 0).
    pub confidence: Option<f64>,
    /// Rounds of the binary search over the constant c (C&W, default 9).
    pub binary_search_steps: Option<usize>,
    /// The constant c of the first round (C&W, default 0.01).
    pub initial_const: Option<f64>,
    /// Adam's learning rate (C&W, default 0.1).
    pub learning_rate: Option<f64>,
    /// Factor by which the last step overshoots the boundary (DeepFool, default 0.02; ≥ 0).
    pub overshoot: Option<f64>,
    /// Fit Square's schedule of square sizes to `queries` (standalone Square, default true;
    /// `autoattack`'s Square never does, as AutoAttack).
    pub rescale_schedule: Option<bool>,
    /// Which AutoAttack `autoattack` runs (default [`Version::Standard`]).
    pub version: Version,
    /// The members of a custom AutoAttack ([`Version::Custom`]), by the names of
    /// [`MEMBERS`], in order.
    pub members: Vec<String>,
}

impl AttackParams {
    /// APGD's configuration at `eps`: these parameters over its defaults.
    pub(crate) fn apgd(&self, eps: f64) -> ApgdConfig {
        let d = ApgdConfig::default();
        ApgdConfig {
            eps,
            norm: self.norm,
            loss: self.loss,
            steps: self.steps.unwrap_or(d.steps),
            restarts: self.restarts.unwrap_or(d.restarts),
            ..d
        }
    }

    /// FAB's configuration at `eps`.
    pub(crate) fn fab(&self, eps: f64) -> FabConfig {
        let d = FabConfig::default();
        FabConfig {
            eps,
            norm: self.norm,
            steps: self.steps.unwrap_or(d.steps),
            restarts: self.restarts.unwrap_or(d.restarts),
            ..d
        }
    }

    /// Square's configuration at `eps`.
    pub(crate) fn square(&self, eps: f64) -> SquareConfig {
        let d = SquareConfig::default();
        SquareConfig {
            eps,
            norm: self.norm,
            queries: self.queries.unwrap_or(d.queries),
            p_init: self.p_init.unwrap_or(d.p_init),
            rescale_schedule: self.rescale_schedule.unwrap_or(d.rescale_schedule),
        }
    }
}

/// The attack called `name` at radius `eps`. `"cw"` is an L2 attack: with `norm` L∞ it is an
/// [`Error::InvalidParameter`].
pub fn build(name: &str, eps: f64, params: &AttackParams) -> Result<Box<dyn Attack>> {
    match name {
        "fgsm" => Ok(Box::new(Fgsm::new(FgsmConfig {
            eps,
            norm: params.norm,
            loss: params.loss,
        })?)),
        "pgd" => {
            let d = PgdConfig::default();
            Ok(Box::new(Pgd::new(PgdConfig {
                eps,
                norm: params.norm,
                loss: params.loss,
                steps: params.steps.unwrap_or(d.steps),
                step_size: params.step_size,
                restarts: params.restarts.unwrap_or(d.restarts),
                random_start: params.random_start.unwrap_or(d.random_start),
            })?))
        }
        "apgd" | "apgd-t" => {
            let cfg = params.apgd(eps);
            Ok(Box::new(if name == "apgd" {
                Apgd::new(cfg)?
            } else {
                Apgd::targeted(cfg, params.target_classes.unwrap_or(9))?
            }))
        }
        "autoattack" => Ok(Box::new(Ensemble::autoattack(eps, params)?)),
        "square" => Ok(Box::new(Square::new(params.square(eps))?)),
        "cw" => {
            if params.norm != Norm::L2 {
                return Err(Error::param(
                    "norm",
                    params.norm.name(),
                    "l2 (Carlini & Wagner's attack is an L2 attack)",
                ));
            }
            let d = CwConfig::default();
            Ok(Box::new(CarliniWagner::new(CwConfig {
                eps,
                steps: params.steps.unwrap_or(d.steps),
                confidence: params.confidence.unwrap_or(d.confidence),
                binary_search_steps: params.binary_search_steps.unwrap_or(d.binary_search_steps),
                initial_const: params.initial_const.unwrap_or(d.initial_const),
                learning_rate: params.learning_rate.unwrap_or(d.learning_rate),
            })?))
        }
        "fab" | "fab-t" => {
            let cfg = params.fab(eps);
            Ok(Box::new(if name == "fab" {
                Fab::new(cfg)?
            } else {
                Fab::targeted(cfg, params.target_classes.unwrap_or(9))?
            }))
        }
        "deepfool" => {
            let d = DeepFoolConfig::default();
            Ok(Box::new(DeepFool::new(DeepFoolConfig {
                eps,
                norm: params.norm,
                steps: params.steps.unwrap_or(d.steps),
                overshoot: params.overshoot.unwrap_or(d.overshoot),
            })?))
        }
        other => Err(Error::unknown("attack", other, ATTACKS)),
    }
}

// The validators of hyper-parameters live in `crate::check`, below every module that checks.
pub(crate) use crate::check::{
    check_at_least_one, check_non_negative, check_positive, check_positive_as,
};

#[cfg(test)]
mod should {
    use super::*;

    #[test]
    fn reject_non_finite_eps() {
        for eps in [0.0, -0.1, f64::NAN, f64::INFINITY] {
            let err = ThreatModel::new(Norm::Linf, eps).unwrap_err();
            assert!(
                err.to_string().contains("expected a finite number > 0"),
                "{err}"
            );
        }
    }

    #[test]
    fn reject_radii_that_are_infinite_or_zero_as_f32() {
        // Finite and positive as f64, but ∞ and 0 in the f32 tensors the attacks compute with.
        for eps in [1e39, 1e-50] {
            let err = ThreatModel::new(Norm::Linf, eps).unwrap_err();
            assert!(
                err.to_string().contains(&format!(
                    "invalid value for `eps`: {eps}; expected a finite number > 0 as f32, the \
                     tensors' type ({eps} becomes {} there",
                    eps as f32
                )),
                "{err}"
            );
            assert!(build("pgd", eps, &AttackParams::default()).is_err());
        }
        let params = AttackParams {
            overshoot: Some(1e39),
            ..AttackParams::default()
        };
        assert!(build("deepfool", 0.1, &params).is_err());
        assert!(ThreatModel::new(Norm::Linf, 3e38).is_ok());
    }

    #[test]
    fn reject_unknown_attacks_with_the_known_list() {
        let err = build("pgdd", 0.1, &AttackParams::default()).err().unwrap();
        assert_eq!(
            err.to_string(),
            "unknown attack `pgdd`; expected one of: fgsm, pgd, apgd, apgd-t, autoattack, square, cw, deepfool, fab, fab-t"
        );
    }

    #[test]
    fn build_every_known_attack_under_its_name() -> Result<()> {
        let params = AttackParams {
            norm: Norm::L2,
            ..AttackParams::default()
        };
        for name in ATTACKS {
            assert_eq!(build(name, 0.5, &params)?.id(), *name);
        }
        Ok(())
    }

    #[test]
    fn reject_cw_under_the_linf_norm() {
        let err = build("cw", 0.5, &AttackParams::default()).err().unwrap();
        assert_eq!(
            err.to_string(),
            "invalid value for `norm`: linf; expected l2 (Carlini & Wagner's attack is an L2 attack)"
        );
    }

    #[test]
    fn pass_the_new_parameters_through_to_the_configs() {
        let l2 = AttackParams {
            norm: Norm::L2,
            ..AttackParams::default()
        };
        let cases = [
            (
                "square",
                AttackParams {
                    queries: Some(0),
                    ..l2.clone()
                },
                "queries",
            ),
            (
                "square",
                AttackParams {
                    p_init: Some(1.5),
                    ..l2.clone()
                },
                "p_init",
            ),
            (
                "cw",
                AttackParams {
                    steps: Some(0),
                    ..l2.clone()
                },
                "steps",
            ),
            (
                "cw",
                AttackParams {
                    confidence: Some(-1.0),
                    ..l2.clone()
                },
                "confidence",
            ),
            (
                "cw",
                AttackParams {
                    binary_search_steps: Some(0),
                    ..l2.clone()
                },
                "binary_search_steps",
            ),
            (
                "cw",
                AttackParams {
                    initial_const: Some(0.0),
                    ..l2.clone()
                },
                "initial_const",
            ),
            (
                "cw",
                AttackParams {
                    learning_rate: Some(-0.1),
                    ..l2.clone()
                },
                "learning_rate",
            ),
            (
                "deepfool",
                AttackParams {
                    overshoot: Some(-0.1),
                    ..l2.clone()
                },
                "overshoot",
            ),
            (
                "deepfool",
                AttackParams {
                    steps: Some(0),
                    ..l2.clone()
                },
                "steps",
            ),
        ];
        for (name, params, key) in cases {
            match build(name, 0.5, &params) {
                Err(Error::InvalidParameter { name: found, .. }) => assert_eq!(found, key),
                other => panic!(
                    "{name} with a bad `{key}`: {:?}",
                    other.map(|a| a.describe())
                ),
            }
        }
    }

    #[test]
    fn draw_random_targets_other_than_the_label() {
        let mut rng = Rng::seed_from_u64(0);
        let labels: Vec<u32> = (0..1000).map(|i| i % 10).collect();
        let logits = vec![vec![0.0; 10]; 1000];
        let targets = Targeting::Random
            .choose(&labels, &logits, &mut rng)
            .unwrap();
        assert!(targets.iter().zip(&labels).all(|(t, y)| t != y && *t < 10));
        let mut counts = [0; 10];
        targets.iter().for_each(|&t| counts[t as usize] += 1);
        assert!(counts.iter().all(|&c| c > 70), "{counts:?}");
    }

    #[test]
    fn target_the_least_likely_class() {
        let mut rng = Rng::seed_from_u64(0);
        let t = Targeting::LeastLikely.choose(&[0], &[vec![3.0, -2.0, 1.0]], &mut rng);
        assert_eq!(t, Some(vec![1]));
    }
}
