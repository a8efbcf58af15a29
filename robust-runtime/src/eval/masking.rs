//! Gradient-masking diagnostics (Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False
//! Sense of Security", ICML 2018; the sanity checks of AutoAttack, Croce & Hein 2020).
//!
//! A model can look robust only because its gradients are useless: quantisation or other
//! non-differentiable steps (zero gradients), saturated softmax on huge logits (zero or
//! non-finite gradients), randomness in the forward pass, or a loss surface the attack cannot
//! climb. Each check here names one such symptom; a robustness test with
//! `masking_checks = "fail"` (the default) fails on any of them instead of reporting a robustness
//! that is not there.
//!
//! | symptom | check |
//! |---|---|
//! | dead gradients | share of samples whose input gradient is all zero or not finite, on the first batch |
//! | non-deterministic forward | the same batch through the model twice gives different logits |
//! | unbounded ε does not break the model | PGD-10 with ε covering the whole domain leaves > 10 % of 50 samples robust |
//! | robust accuracy does not fall as ε grows | PGD-10 at 4ε breaks no more of 50 samples than at ε |

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::{evaluate, RobustnessCase, RunConfig};
use crate::attack::{kernel, AttackBatch, Loss, Norm, Pgd, PgdConfig, ThreatModel};
use crate::{Error, Result};

/// What a robustness test does when a diagnostic fires (`masking_checks = "…"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MaskingPolicy {
    /// The test fails, naming the symptom (default).
    #[default]
    Fail,
    /// The symptoms are printed with the report; the test passes or fails on its thresholds.
    Warn,
    /// The diagnostics are not run.
    Off,
}

impl MaskingPolicy {
    /// Names accepted by [`MaskingPolicy::from_name`].
    pub const NAMES: &'static [&'static str] = robust_spec::names::MASKING;

    /// `"fail"`, `"warn"` or `"off"`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "fail" => Ok(MaskingPolicy::Fail),
            "warn" => Ok(MaskingPolicy::Warn),
            "off" => Ok(MaskingPolicy::Off),
            other => Err(Error::unknown("masking_checks", other, Self::NAMES)),
        }
    }
}

/// One sign of gradient masking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaskingSymptom {
    /// Short name of the check.
    pub check: String,
    /// What was measured.
    pub found: String,
    /// What to do about it.
    pub advice: String,
}

/// Share of samples with an all-zero or non-finite gradient above which gradients are "dead".
const DEAD_GRADIENT_SHARE: f64 = 0.10;
/// Robust accuracy an attack with an unbounded ε may leave.
const UNBOUNDED_MAX_ACCURACY: f64 = 0.10;
/// PGD iterations of the probes (the unbounded one needs only a few to cross the domain).
const PROBE_STEPS: usize = 10;
/// Samples the PGD-based checks use.
const PROBE_SAMPLES: usize = 50;

/// Runs every diagnostic on the first samples of the case, for a test at `threat`.
pub fn diagnose(
    case: &RobustnessCase,
    threat: ThreatModel,
    cfg: &RunConfig,
) -> Result<Vec<MaskingSymptom>> {
    let mut symptoms = diagnose_model(case, threat.norm, cfg)?;
    symptoms.extend(diagnose_eps(case, threat, cfg)?);
    Ok(symptoms)
}

/// The checks that do not depend on ε (dead gradients, non-determinism, unbounded ε): the tests
/// of one attribute share them.
pub fn diagnose_model(
    case: &RobustnessCase,
    norm: Norm,
    cfg: &RunConfig,
) -> Result<Vec<MaskingSymptom>> {
    let n = probe_size(case, cfg);
    let batch = case
        .data()
        .take(n)?
        .batches(n, &cfg.device)
        .next()
        .ok_or_else(|| Error::Data("no samples to diagnose".into()))??;
    let model = case.model();
    let mut symptoms = Vec::new();

    // Dead gradients: cross-entropy gradient at the clean inputs.
    let num_classes = model.checked_logits(&batch.inputs)?[0].len();
    let objective = AttackBatch::untargeted(&batch.inputs, &batch.labels, num_classes)
        .objective(Loss::CrossEntropy)?;
    let (_, grad) = kernel::objective_and_grad(model, &batch.inputs, &objective)?;
    let (zero, non_finite) = dead_gradients(&grad)?;
    if (zero + non_finite) as f64 / n as f64 > DEAD_GRADIENT_SHARE {
        symptoms.push(MaskingSymptom {
            check: "dead gradients".into(),
            found: format!("{zero} of {n} samples have an all-zero input gradient and {non_finite} a non-finite one"),
            advice: "the model is not differentiable where it matters or its softmax saturates: make sure it returns \
                     logits (not probabilities or huge scaled logits), and attack non-differentiable preprocessing \
                     with BPDA (straight-through gradients)"
                .into(),
        });
    }

    // Non-deterministic forward pass (AutoAttack's check for randomized defences), unless the
    // runtime knows the model is randomized and attacks it with EOT already.
    let first = model.checked_logits(&batch.inputs)?;
    let second = model.checked_logits(&batch.inputs)?;
    if first != second && model.eot_draws() <= 1 {
        let differing = first.iter().zip(&second).filter(|(a, b)| a != b).count();
        symptoms.push(MaskingSymptom {
            check: "non-deterministic forward pass".into(),
            found: format!("{differing} of {n} samples got different logits from two identical forward passes"),
            advice: "put the model in evaluation mode (dropout, batch-norm statistics); randomised defences need EOT \
                     (averaging gradients over the randomness) to be evaluated"
                .into(),
        });
    }

    // PGD with a budget covering the whole domain must break (nearly) everything.
    let unbounded = unbounded_eps(case, norm);
    let at_unbounded = evaluate(case, &probe_pgd(unbounded, norm)?, &probe_config(n, cfg))?;
    if at_unbounded.robust_accuracy > UNBOUNDED_MAX_ACCURACY {
        symptoms.push(MaskingSymptom {
            check: "unbounded ε does not break the model".into(),
            found: format!(
                "PGD-{PROBE_STEPS} with ε = {unbounded} (the whole input domain) leaves {:.1} % of {n} samples robust; expected ~0 %",
                100.0 * at_unbounded.robust_accuracy
            ),
            advice: "the attack cannot follow the gradient: look for non-differentiable steps (BPDA), randomness (EOT) \
                     or saturated outputs"
                .into(),
        });
    }
    Ok(symptoms)
}

/// The check at the test's ε: PGD at 4ε must break more samples than at ε.
pub fn diagnose_eps(
    case: &RobustnessCase,
    threat: ThreatModel,
    cfg: &RunConfig,
) -> Result<Vec<MaskingSymptom>> {
    let n = probe_size(case, cfg);
    let probe = probe_config(n, cfg);
    let larger = (4.0 * threat.eps).min(unbounded_eps(case, threat.norm));
    let at_eps = evaluate(case, &probe_pgd(threat.eps, threat.norm)?, &probe)?;
    if at_eps.robust_correct == 0 {
        return Ok(Vec::new());
    }
    let at_larger = evaluate(case, &probe_pgd(larger, threat.norm)?, &probe)?;
    if at_larger.robust_correct < at_eps.robust_correct {
        return Ok(Vec::new());
    }
    Ok(vec![MaskingSymptom {
        check: "robust accuracy does not fall as ε grows".into(),
        found: format!(
            "PGD-{PROBE_STEPS} leaves {} of {n} samples robust at ε = {} and {} at ε = {larger}",
            at_eps.robust_correct, threat.eps, at_larger.robust_correct
        ),
        advice: "a larger budget must break more samples: the gradients are masked (check for quantisation, \
                 clipping of logits, or non-differentiable layers)"
            .into(),
    }])
}

fn probe_pgd(eps: f64, norm: Norm) -> Result<Pgd> {
    Pgd::new(PgdConfig {
        eps,
        norm,
        steps: PROBE_STEPS,
        ..PgdConfig::default()
    })
}

fn probe_config(n: usize, cfg: &RunConfig) -> RunConfig {
    RunConfig {
        samples: Some(n),
        test_name: None,
        sweep: Vec::new(),
        ..cfg.clone()
    }
}

fn probe_size(case: &RobustnessCase, cfg: &RunConfig) -> usize {
    case.data()
        .len()
        .min(PROBE_SAMPLES)
        .min(cfg.batch_size.max(1))
}

/// An ε that lets the attack reach every point of the domain.
fn unbounded_eps(case: &RobustnessCase, norm: Norm) -> f64 {
    let domain = case.model().domain();
    let width = (domain.hi() - domain.lo()) as f64;
    match norm {
        Norm::Linf => width,
        Norm::L2 => width * (case.data().sample_shape().iter().product::<usize>() as f64).sqrt(),
    }
}

/// From an ensemble's stages: a black-box member breaking more than 1 % of the samples that
/// every gradient-based member before it failed on (AutoAttack's check on Square).
pub fn black_box_beats_white_box(
    report: &super::RobustnessReport,
    black_box: &[bool],
) -> Option<MaskingSymptom> {
    let mut before = report.stages.first().map(|_| report.clean_correct)?;
    let mut seen_white_box = false;
    for (stage, &is_black_box) in report.stages.iter().zip(black_box) {
        let broken = before.saturating_sub(stage.robust_correct);
        if is_black_box && seen_white_box && broken as f64 > 0.01 * report.samples as f64 {
            return Some(MaskingSymptom {
                check: "black-box attack beats the white-box attacks".into(),
                found: format!(
                    "{} broke {broken} of {} samples that every gradient-based attack before it left robust",
                    stage.attack, report.samples
                ),
                advice: "the gradients do not point where the loss increases: look for non-differentiable or \
                         randomised parts (BPDA, EOT), and do not trust the gradient attacks' numbers"
                    .into(),
            });
        }
        seen_white_box |= !is_black_box;
        before = stage.robust_correct;
    }
    None
}

/// Samples whose gradient is all zero, and samples with a non-finite entry.
fn dead_gradients(grad: &Tensor) -> Result<(usize, usize)> {
    let rows = grad.flatten_from(1)?.to_vec2::<f32>()?;
    let non_finite = rows
        .iter()
        .filter(|r| r.iter().any(|v| !v.is_finite()))
        .count();
    let zero = rows.iter().filter(|r| r.iter().all(|&v| v == 0.0)).count();
    Ok((zero, non_finite))
}

/// Builds the failure message for symptoms under [`MaskingPolicy::Fail`].
pub(crate) fn describe(symptoms: &[MaskingSymptom]) -> String {
    symptoms
        .iter()
        .map(|s| format!("{}: {}. What to do: {}.", s.check, s.found, s.advice))
        .collect::<Vec<_>>()
        .join("\n")
}
