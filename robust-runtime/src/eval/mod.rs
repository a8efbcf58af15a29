//! Running a robustness case: clean predictions, the attack, the metrics, the assertions.
//!
//! A sample counts as robust only if it is classified correctly clean *and* under the attack.
//! [`evaluate`] runs an attack; [`evaluate_invariance`] runs random perturbations
//! ([`crate::perturb`]) and shrinks each failure to a minimal one.
//!
//! ```no_run
//! use robust_runtime::prelude::*;
//! use robust_runtime::attack::{Pgd, PgdConfig};
//! use robust_runtime::eval::{evaluate, RunConfig};
//!
//! let model = zoo::MnistMlp::load("tests/fixtures/mnist_mlp.safetensors", &Device::Cpu)?;
//! let case = RobustnessCase::new(model, Dataset::mnist_sample()?.test_split()).named("mnist_mlp");
//! let pgd = Pgd::new(PgdConfig { eps: 0.1, ..PgdConfig::default() })?;
//! let report = evaluate(&case, &pgd, &RunConfig { samples: Some(200), ..RunConfig::default() })?;
//! println!("{report}");
//! # Ok::<(), robust_runtime::Error>(())
//! ```

mod certify_spec;
mod invariance;
pub mod masking;
mod report;
mod spec;

use std::time::Instant;

use candle_core::{Device, Tensor};

pub use crate::case::{Fingerprint, RobustnessCase};
pub use crate::stats::{interval, lower_bound, upper_bound};
pub use certify_spec::{CertifySpec, CERTIFIERS};
pub use invariance::{
    evaluate_invariance, evaluate_strategy, Counterexample, InvarianceConfig, InvarianceReport,
    InvarianceSpec, ReplaySummary, CASES_VAR, MAX_IMAGES,
};
use report::within;
pub use report::{
    AdversarialExample, Check, CurvePoint, Minimal, PerturbationStats, RobustnessReport,
    SampleOutcome, Stage, Thresholds, WORST_EXAMPLES,
};
pub use spec::{Guard, TestSpec, CUDA_SUFFIX, SEED_VAR};

use crate::attack::kernel::{self, per_sample_l2, per_sample_linf};
use crate::attack::{Attack, AttackBatch, Targeting};
use crate::data::Dataset;
use crate::model::{argmax, Model};
use crate::rng::Rng;
use crate::{Error, Result};

/// How a case is run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Evaluate the first `samples` samples of the data (default: all).
    pub samples: Option<usize>,
    /// Samples per batch (default 250; ≥ 1).
    pub batch_size: usize,
    /// Seed of the run's RNG (default 0).
    pub seed: u64,
    /// Untargeted (default) or how targets are chosen.
    pub targeting: Targeting,
    /// Where the batches are moved (default CPU).
    pub device: Device,
    /// Name of the test in reports (default: the model's name).
    pub test_name: Option<String>,
    /// Further radii for the robustness curve of minimal-perturbation attacks, which is read
    /// off the same run (default none; the run's own ε is always on it).
    pub sweep: Vec<f64>,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            samples: None,
            batch_size: 250,
            seed: 0,
            targeting: Targeting::Untargeted,
            device: Device::Cpu,
            test_name: None,
            sweep: Vec::new(),
        }
    }
}

/// Share of `data` that `model` classifies correctly, in batches of 250 moved to `device` (the
/// model's).
pub fn clean_accuracy(model: &Model, data: &Dataset, device: &Device) -> Result<f64> {
    if data.is_empty() {
        return Err(Error::Data("no samples to measure accuracy on".into()));
    }
    let mut correct = 0usize;
    for batch in data.batches(250, device) {
        let batch = batch?;
        let labels = &data.labels()[batch.range.clone()];
        correct += model
            .predict(&batch.inputs)?
            .iter()
            .zip(labels)
            .filter(|(p, y)| p == y)
            .count();
    }
    Ok(correct as f64 / data.len() as f64)
}

/// Attacks the case's data batch by batch and measures the outcome. The report has no checks
/// yet: see [`RobustnessReport::check`].
pub fn evaluate(
    case: &RobustnessCase,
    attack: &dyn Attack,
    cfg: &RunConfig,
) -> Result<RobustnessReport> {
    crate::check::check_at_least_one("batch_size", cfg.batch_size)?;
    let data = case.evaluated(cfg.samples)?;
    let plain = attack_model(case.model(), &data, attack, cfg)?;
    let Some(twin) = case.model().adaptive() else {
        return Ok(plain);
    };
    let method = case.model().adaptive_method().unwrap_or("adaptive");
    // A randomized twin gets the attack's own version for randomized models (AutoAttack's
    // `rand`), with that version's draws.
    if let Some((randomized, draws)) = attack.randomized_version().filter(|_| twin.eot_draws() > 1)
    {
        let twin = case
            .model()
            .adaptive_with_draws(Some(draws))
            .expect("the model has a twin");
        let adaptive = attack_model(&twin, &data, randomized, cfg)?;
        let method = format!("{method} over {draws} draws, {}", randomized.describe());
        return Ok(report::combine_adaptive(
            plain, adaptive, attack, cfg, &method,
        ));
    }
    let adaptive = attack_model(&twin, &data, attack, cfg)?;
    Ok(report::combine_adaptive(
        plain, adaptive, attack, cfg, method,
    ))
}

/// [`evaluate`] on `data` with `model`, without the adaptive second run.
fn attack_model(
    model: &Model,
    data: &Dataset,
    attack: &dyn Attack,
    cfg: &RunConfig,
) -> Result<RobustnessReport> {
    let started = Instant::now();
    let mut rng = Rng::seed_from_u64(cfg.seed);
    let mut outcomes = Vec::with_capacity(data.len());
    let mut classes: Option<usize> = None;
    // Robust samples after each member of an ensemble.
    let mut stage_robust: Vec<usize> = Vec::new();
    let mut worst: Vec<AdversarialExample> = Vec::new();
    let mut progress = crate::progress::Progress::new(
        cfg.test_name.as_deref().unwrap_or(model.name()),
        data.len(),
    );

    for batch in data.batches(cfg.batch_size, &cfg.device) {
        let batch = batch?;
        let clean_logits = model.checked_logits(&batch.inputs)?;
        let num_classes = clean_logits[0].len();
        match classes {
            Some(c) if c != num_classes => {
                return Err(Error::LogitsShape {
                    found: vec![clean_logits.len(), num_classes],
                    batch: clean_logits.len(),
                })
            }
            Some(_) => {}
            None => {
                attack.check_classes(num_classes)?;
                classes = Some(num_classes);
            }
        }
        let labels = &data.labels()[batch.range.clone()];
        if let Some(i) = labels.iter().position(|&l| l as usize >= num_classes) {
            return Err(Error::LabelOutOfRange {
                label: labels[i],
                index: batch.range.start + i,
                classes: num_classes,
            });
        }
        let targets = cfg.targeting.choose(labels, &clean_logits, &mut rng);
        let targets_t = targets
            .as_ref()
            .map(|t| Tensor::from_slice(t, t.len(), &cfg.device))
            .transpose()?;
        let attack_batch = AttackBatch {
            inputs: &batch.inputs,
            labels: &batch.labels,
            targets: targets_t.as_ref(),
            num_classes,
        };
        let mut batch_rng = rng.fork();
        let minimal = match attack.as_ensemble() {
            Some(_) => None,
            None => attack.minimal_perturbation(model, &attack_batch, &mut batch_rng)?,
        };
        let mut minimal_found: Option<Vec<Minimal>> = None;
        let adv = match (minimal, attack.as_ensemble()) {
            (Some(found), _) => {
                // One unbounded run: keep each sample's minimal example if it fits in ε.
                let pred = model.predict(&found)?;
                let delta = (&found - &batch.inputs)?;
                let linf = per_sample_linf(&delta)?.to_vec1::<f32>()?;
                let l2 = per_sample_l2(&delta)?.to_vec1::<f32>()?;
                let m: Vec<Minimal> = (0..labels.len())
                    .map(|i| Minimal {
                        pred: pred[i],
                        linf: linf[i],
                        l2: l2[i],
                    })
                    .collect();
                let threat = attack.threat();
                let take: Vec<u8> = m
                    .iter()
                    .zip(labels)
                    .map(|(m, &y)| u8::from(m.pred != y && within(m.norm(threat.norm), threat.eps)))
                    .collect();
                minimal_found = Some(m);
                let take = Tensor::from_slice(&take, take.len(), &cfg.device)?;
                kernel::select_samples(&take, &found, &batch.inputs)?
            }
            (None, Some(ensemble)) => {
                let outcome = ensemble.cascade(model, &attack_batch, &mut batch_rng)?;
                stage_robust.resize(outcome.robust_after.len(), 0);
                for (count, robust) in stage_robust.iter_mut().zip(&outcome.robust_after) {
                    *count += robust.iter().filter(|&&r| r).count();
                }
                outcome.adversarial
            }
            (None, None) => attack.perturb(model, &attack_batch, &mut batch_rng)?,
        };
        let adv_logits = model.checked_logits(&adv)?;
        let adv_pred: Vec<u32> = adv_logits.iter().map(|row| argmax(row)).collect();
        let delta = (&adv - &batch.inputs)?;
        let linf = per_sample_linf(&delta)?.to_vec1::<f32>()?;
        let l2 = per_sample_l2(&delta)?.to_vec1::<f32>()?;
        for i in 0..labels.len() {
            let y = labels[i] as usize;
            let broken = argmax(&clean_logits[i]) == labels[i] && adv_pred[i] != labels[i];
            let margin = adv_logits[i]
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != y)
                .map(|(_, &z)| z)
                .fold(f32::NEG_INFINITY, f32::max)
                - adv_logits[i][y];
            let full = worst.len() == WORST_EXAMPLES;
            if broken && !(full && worst.last().is_some_and(|w| w.margin >= margin)) {
                worst.push(AdversarialExample {
                    index: batch.range.start + i,
                    label: labels[i],
                    adv_pred: adv_pred[i],
                    margin,
                    shape: batch.inputs.dims()[1..].to_vec(),
                    clean: batch.inputs.get(i)?.flatten_all()?.to_vec1::<f32>()?,
                    adversarial: adv.get(i)?.flatten_all()?.to_vec1::<f32>()?,
                });
                // Worst first; equal margins keep data order.
                worst.sort_by(|a, b| b.margin.total_cmp(&a.margin));
                worst.truncate(WORST_EXAMPLES);
            }
        }
        for i in 0..labels.len() {
            outcomes.push(SampleOutcome {
                label: labels[i],
                clean_pred: argmax(&clean_logits[i]),
                adv_pred: adv_pred[i],
                target: targets.as_ref().map(|t| t[i]),
                linf: linf[i],
                l2: l2[i],
                minimal: minimal_found.as_ref().map(|m| m[i]),
            });
        }
        progress.advance(labels.len());
    }
    progress.finish();

    let mut report = RobustnessReport::from_outcomes(
        cfg.test_name
            .clone()
            .unwrap_or_else(|| model.name().to_string()),
        model.name().to_string(),
        attack,
        cfg,
        outcomes,
        started.elapsed().as_secs_f64(),
    );
    report.worst = worst;
    if report.per_sample.iter().any(|s| s.minimal.is_some()) {
        let mut sweep = cfg.sweep.clone();
        sweep.push(attack.threat().eps);
        report.curve = report::curve(&report.per_sample, attack.threat().norm, &sweep);
    }
    if let Some(ensemble) = attack.as_ensemble() {
        report.stages = ensemble
            .members()
            .iter()
            .zip(&stage_robust)
            .map(|(member, &robust_correct)| Stage {
                attack: member.describe(),
                robust_correct,
                robust_accuracy: robust_correct as f64 / data.len() as f64,
            })
            .collect();
    }
    Ok(report)
}
