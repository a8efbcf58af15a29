//! Ensembles run as a per-sample cascade, as AutoAttack does (Croce & Hein, ICML 2020): each
//! member attacks only the samples that every earlier member failed to break, and the report
//! gives the robust accuracy after each stage.
//!
//! `autoattack` comes in AutoAttack's versions ([`Version`]), with the reference code's settings
//! (`autoattack.py`, `set_version`):
//!
//! | version | members |
//! |---|---|
//! | `standard` (default) | APGD-CE (1 restart) → APGD-T (9 targets) → FAB-T (9 targets) → Square (5,000 queries, schedule of 10,000) |
//! | `rand`, for randomized defences | APGD-CE → APGD-DLR, each with the gradient averaged over 20 draws (EOT) |
//! | `custom` | the members listed in `attacks` ([`MEMBERS`]: `apgd-ce`, `apgd-dlr`, `apgd-t`, `fab`, `fab-t`, `square`), in that order, with the standard version's settings (the reference code's custom version keeps its constructors' 5 restarts for APGD and FAB) |
//!
//! A model the runtime knows is randomized (the EOT twin of a random preprocessing) is attacked
//! with the `rand` version in its adaptive run ([`Attack::randomized_version`]), as the reference
//! code's authors ask of randomized defences.

use candle_core::Tensor;

use super::{
    kernel, Apgd, ApgdConfig, Attack, AttackBatch, AttackParams, Fab, Loss, Square, SquareConfig,
    ThreatModel,
};
use crate::model::Model;
use crate::rng::Rng;
use crate::{Error, Result};

/// A cascade of attacks in one threat model.
pub struct Ensemble {
    name: &'static str,
    members: Vec<Box<dyn Attack>>,
    /// AutoAttack's `rand` version, for a randomized model (with its EOT draws).
    randomized: Option<(Box<Ensemble>, usize)>,
}

/// Gradient draws of AutoAttack's `rand` version (`eot_iter = 20`).
pub const RAND_EOT_DRAWS: usize = 20;

/// The members a custom AutoAttack may list (`attacks = […]`), by the reference code's names.
pub const MEMBERS: &[&str] = robust_spec::names::AUTOATTACK_MEMBERS;
/// The standard version's members.
const STANDARD: &[&str] = &["apgd-ce", "apgd-t", "fab-t", "square"];
/// The rand version's members.
const RAND: &[&str] = &["apgd-ce", "apgd-dlr"];

/// Which AutoAttack `autoattack` runs (`version = "…"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Version {
    /// APGD-CE → APGD-T → FAB-T → Square, as papers and RobustBench report; a randomized
    /// model's adaptive run gets the `rand` version.
    #[default]
    Standard,
    /// APGD-CE → APGD-DLR with EOT over 20 draws, for randomized defences.
    Rand,
    /// The members in [`AttackParams::members`], in order, with the standard version's
    /// settings.
    Custom,
}

impl Version {
    /// Names accepted by [`Version::from_name`].
    pub const NAMES: &'static [&'static str] = robust_spec::names::AUTOATTACK_VERSIONS;

    /// `"standard"`, `"rand"` or `"custom"`.
    pub fn from_name(name: &str) -> crate::Result<Self> {
        match name {
            "standard" => Ok(Version::Standard),
            "rand" => Ok(Version::Rand),
            "custom" => Ok(Version::Custom),
            other => Err(Error::unknown("version", other, Self::NAMES)),
        }
    }
}

impl std::fmt::Debug for Ensemble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ensemble")
            .field("name", &self.name)
            .field("members", &self.describe())
            .finish()
    }
}

/// What a cascade did to one batch.
#[derive(Debug, Clone)]
pub struct CascadeOutcome {
    /// The adversarial inputs (clean where no member succeeded).
    pub adversarial: Tensor,
    /// After each member, per sample: still classified correctly by the model.
    pub robust_after: Vec<Vec<bool>>,
}

impl Ensemble {
    /// A cascade of `members`, run in order; all must share one threat model.
    pub fn new(name: &'static str, members: Vec<Box<dyn Attack>>) -> Result<Self> {
        let Some(first) = members.first() else {
            return Err(Error::param(
                "attack",
                "an empty ensemble",
                "at least one member attack",
            ));
        };
        let threat = first.threat();
        if let Some(other) = members.iter().find(|m| m.threat() != threat) {
            return Err(Error::param(
                "attack",
                format!("{} beside {}", other.describe(), first.describe()),
                "members with the same norm and ε",
            ));
        }
        Ok(Ensemble {
            name,
            members,
            randomized: None,
        })
    }

    /// AutoAttack at `eps` in the version `params.version` (see the module docs), with
    /// `params.steps` / `params.restarts` / `params.target_classes` / `params.queries`
    /// overriding the defaults (100 steps, 1 restart, 9 targets, 5,000 queries). APGD-T's DLR
    /// loss needs a model with at least 4 classes, the `rand` version's APGD-DLR 3: on fewer, the
    /// run stops with a typed error saying so. [`Version::Custom`] runs `params.members`.
    pub fn autoattack(eps: f64, params: &AttackParams) -> Result<Self> {
        // What a randomized model's adaptive run gets: the rand version over its draws.
        let with_rand = |mut version: Ensemble| -> Result<Ensemble> {
            version.randomized = Some((
                Box::new(Ensemble::of_members(eps, params, RAND)?),
                RAND_EOT_DRAWS,
            ));
            Ok(version)
        };
        match params.version {
            Version::Rand => with_rand(Ensemble::of_members(eps, params, RAND)?),
            Version::Standard => with_rand(Ensemble::of_members(eps, params, STANDARD)?),
            Version::Custom => {
                if params.members.is_empty() {
                    return Err(Error::param(
                        "attacks",
                        "[]",
                        format!(
                            "one or more of {} for `version = \"custom\"`",
                            MEMBERS.join(", ")
                        ),
                    ));
                }
                let names: Vec<&str> = params.members.iter().map(String::as_str).collect();
                Ensemble::of_members(eps, params, &names)
            }
        }
    }

    /// The cascade of AutoAttack's members named so (the reference code's `attacks_to_run`),
    /// with the standard version's settings.
    fn of_members(eps: f64, params: &AttackParams, names: &[&str]) -> Result<Self> {
        let apgd = params.apgd(eps);
        let targets = params.target_classes.unwrap_or(9);
        let fab = params.fab(eps);
        let members = names
            .iter()
            .map(|&name| -> Result<Box<dyn Attack>> {
                Ok(match name {
                    "apgd-ce" => Box::new(Apgd::new(ApgdConfig {
                        loss: Loss::CrossEntropy,
                        ..apgd
                    })?),
                    "apgd-dlr" => Box::new(Apgd::new(ApgdConfig {
                        loss: Loss::Dlr,
                        ..apgd
                    })?),
                    "apgd-t" => Box::new(Apgd::targeted(apgd, targets)?),
                    "fab" => Box::new(Fab::new(fab)?),
                    "fab-t" => Box::new(Fab::targeted(fab, targets)?),
                    // The official schedule (AutoAttack's `resc_schedule=False`).
                    "square" => Box::new(Square::new(SquareConfig {
                        rescale_schedule: false,
                        ..params.square(eps)
                    })?),
                    other => return Err(Error::unknown("AutoAttack member", other, MEMBERS)),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ensemble::new("autoattack", members)
    }

    /// The members, in order.
    pub fn members(&self) -> &[Box<dyn Attack>] {
        &self.members
    }

    /// Runs the cascade on a batch.
    pub fn cascade(
        &self,
        model: &Model,
        batch: &AttackBatch<'_>,
        rng: &mut Rng,
    ) -> Result<CascadeOutcome> {
        // A member that no sample reaches (all broken before it) is still checked.
        self.check_classes(batch.num_classes)?;
        let x = batch.inputs;
        let labels = batch.labels.to_vec1::<u32>()?;
        let clean = model.predict(x)?;
        let mut robust: Vec<bool> = clean.iter().zip(&labels).map(|(p, y)| p == y).collect();
        let mut adversarial = x.clone();
        let mut robust_after = Vec::with_capacity(self.members.len());
        for member in &self.members {
            let rows: Vec<u32> = (0..robust.len())
                .filter(|&i| robust[i])
                .map(|i| i as u32)
                .collect();
            if !rows.is_empty() {
                let idx = Tensor::from_slice(&rows, rows.len(), x.device())?;
                let sub_x = x.index_select(&idx, 0)?;
                let sub_y = batch.labels.index_select(&idx, 0)?;
                let sub_t = batch.targets.map(|t| t.index_select(&idx, 0)).transpose()?;
                let sub = AttackBatch {
                    inputs: &sub_x,
                    labels: &sub_y,
                    targets: sub_t.as_ref(),
                    num_classes: batch.num_classes,
                };
                let sub_adv = member.perturb(model, &sub, &mut rng.fork())?;
                let pred = model.predict(&sub_adv)?;
                let mut take = vec![0u8; robust.len()];
                let mut source = vec![0u32; robust.len()];
                for (j, &row) in rows.iter().enumerate() {
                    source[row as usize] = j as u32;
                    if pred[j] != labels[row as usize] {
                        take[row as usize] = 1;
                        robust[row as usize] = false;
                    }
                }
                let scattered = sub_adv
                    .index_select(&Tensor::from_slice(&source, source.len(), x.device())?, 0)?;
                let take = Tensor::from_slice(&take, take.len(), x.device())?;
                adversarial = kernel::select_samples(&take, &scattered, &adversarial)?;
            }
            robust_after.push(robust.clone());
        }
        Ok(CascadeOutcome {
            adversarial,
            robust_after,
        })
    }
}

impl Attack for Ensemble {
    fn id(&self) -> &'static str {
        self.name
    }

    fn describe(&self) -> String {
        let members: Vec<String> = self.members.iter().map(|m| m.describe()).collect();
        format!("{} cascade [{}]", self.name, members.join(" → "))
    }

    fn threat(&self) -> ThreatModel {
        self.members[0].threat()
    }

    fn perturb(&self, model: &Model, batch: &AttackBatch<'_>, rng: &mut Rng) -> Result<Tensor> {
        Ok(self.cascade(model, batch, rng)?.adversarial)
    }

    fn as_ensemble(&self) -> Option<&Ensemble> {
        Some(self)
    }

    fn randomized_version(&self) -> Option<(&dyn Attack, usize)> {
        self.randomized
            .as_ref()
            .map(|(e, draws)| (e.as_ref() as &dyn Attack, *draws))
    }

    fn check_classes(&self, num_classes: usize) -> Result<()> {
        self.members
            .iter()
            .try_for_each(|m| m.check_classes(num_classes))
    }
}
