//! Ensembles run as a per-sample cascade, as AutoAttack does (Croce & Hein, ICML 2020): each
//! member attacks only the samples that every earlier member failed to break, and the report
//! gives the robust accuracy after each stage. `autoattack` is the standard version: APGD-CE,
//! then APGD-T (9 target classes), then the black-box Square attack (5,000 queries), all in the
//! same threat model (AutoAttack's FAB-T is not included).

use candle_core::Tensor;

use super::{
    kernel, Apgd, ApgdConfig, Attack, AttackBatch, AttackParams, Loss, Square, SquareConfig,
    ThreatModel,
};
use crate::model::Model;
use crate::rng::Rng;
use crate::{Error, Result};

/// A cascade of attacks in one threat model.
pub struct Ensemble {
    name: &'static str,
    members: Vec<Box<dyn Attack>>,
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
        Ok(Ensemble { name, members })
    }

    /// The standard AutoAttack cascade at `eps`: APGD-CE, APGD-T (DLR, 9 targets), Square,
    /// with `params.steps` / `params.restarts` / `params.target_classes` / `params.queries`
    /// overriding the defaults (100 steps, 1 restart, 9 targets, 5,000 queries). APGD-T's DLR loss needs a model with at least 4
    /// classes: on fewer, the run stops with a typed error saying so.
    pub fn autoattack(eps: f64, params: &AttackParams) -> Result<Self> {
        let d = ApgdConfig::default();
        let cfg = ApgdConfig {
            eps,
            norm: params.norm,
            steps: params.steps.unwrap_or(d.steps),
            restarts: params.restarts.unwrap_or(d.restarts),
            ..d
        };
        let members: Vec<Box<dyn Attack>> = vec![
            Box::new(Apgd::new(ApgdConfig {
                loss: Loss::CrossEntropy,
                ..cfg
            })?),
            Box::new(Apgd::targeted(cfg, params.target_classes.unwrap_or(9))?),
            Box::new(Square::new(SquareConfig {
                eps,
                norm: params.norm,
                queries: params.queries.unwrap_or(SquareConfig::default().queries),
                p_init: params.p_init.unwrap_or(SquareConfig::default().p_init),
            })?),
        ];
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

    fn check_classes(&self, num_classes: usize) -> Result<()> {
        self.members
            .iter()
            .try_for_each(|m| m.check_classes(num_classes))
    }
}
