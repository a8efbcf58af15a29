//! The outcome of a run: metrics, per-sample results, and the assertions checked on them.

pub use crate::report::AdversarialExample;
use crate::report::{Curve, Metric, Outcome, Provenance};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::RunConfig;
use crate::attack::{Attack, Norm, ThreatModel};
use crate::stats::{interval_note, level, lower_bound, upper_bound};

/// What happened to one sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleOutcome {
    /// True label.
    pub label: u32,
    /// Prediction on the clean input.
    pub clean_pred: u32,
    /// Prediction on the adversarial input.
    pub adv_pred: u32,
    /// Target class, for targeted attacks.
    pub target: Option<u32>,
    /// L∞ norm of the perturbation.
    pub linf: f32,
    /// L2 norm of the perturbation.
    pub l2: f32,
    /// For minimal-perturbation attacks: what the unbounded run found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimal: Option<Minimal>,
}

/// The smallest adversarial example a minimal-perturbation attack found for a sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Minimal {
    /// Prediction on it (the label when the attack failed).
    pub pred: u32,
    /// Its L∞ norm.
    pub linf: f32,
    /// Its L2 norm.
    pub l2: f32,
}

impl Minimal {
    /// Its norm in `norm`.
    pub fn norm(&self, norm: Norm) -> f32 {
        match norm {
            Norm::Linf => self.linf,
            _ => self.l2,
        }
    }
}

/// Robust accuracy at one ε of a sweep.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// The radius.
    pub eps: f64,
    /// Samples robust at this radius.
    pub robust_correct: usize,
    /// `robust_correct / samples`.
    pub robust_accuracy: f64,
}

impl SampleOutcome {
    /// The outcome at radius `eps`, read off the minimal perturbation: adversarial if the attack
    /// broke the sample with a perturbation of norm ≤ ε, otherwise the clean input.
    /// `None` for outcomes of ε-bounded attacks.
    pub fn at_eps(&self, norm: Norm, eps: f64) -> Option<SampleOutcome> {
        let m = self.minimal?;
        let broken = m.pred != self.label && within(m.norm(norm), eps);
        Some(SampleOutcome {
            adv_pred: if broken { m.pred } else { self.clean_pred },
            linf: if broken { m.linf } else { 0.0 },
            l2: if broken { m.l2 } else { 0.0 },
            ..self.clone()
        })
    }
    /// Correct clean and under attack.
    pub fn is_robust(&self) -> bool {
        self.clean_pred == self.label && self.adv_pred == self.label
    }

    /// Correct clean.
    pub fn is_clean_correct(&self) -> bool {
        self.clean_pred == self.label
    }
}

/// Mean and maximum of the perturbation norms over all evaluated samples.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct PerturbationStats {
    /// Mean L∞ norm.
    pub mean_linf: f64,
    /// Largest L∞ norm.
    pub max_linf: f64,
    /// Mean L2 norm.
    pub mean_l2: f64,
    /// Largest L2 norm.
    pub max_l2: f64,
}

/// Robust accuracy after one member of an ensemble's cascade.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    /// The member attack with its hyper-parameters.
    pub attack: String,
    /// Samples still robust after this member and every one before it.
    pub robust_correct: usize,
    /// `robust_correct / samples`.
    pub robust_accuracy: f64,
}

/// Thresholds a robustness test asserts.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Thresholds {
    /// Robust accuracy must be at least this (`min_acc`).
    pub min_acc: Option<f64>,
    /// Clean minus robust accuracy must be at most this (`max_drop`).
    pub max_drop: Option<f64>,
    /// `confidence = 0.95`: assert on the one-sided Clopper–Pearson bound at this level instead
    /// of the point estimate: the lower bound of the robust accuracy against `min_acc`, the upper
    /// bound of the drop against `max_drop`. A test then passes only when the sample is large
    /// enough to be this confident that the threshold holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
}

/// One assertion and whether it held.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// The macro key (`min_acc`, `max_drop`).
    pub key: String,
    /// The measured value.
    pub measured: f64,
    /// The threshold.
    pub threshold: f64,
    /// Whether it held.
    pub passed: bool,
    /// The assertion in words.
    pub description: String,
}

/// Everything a run measured. `Display` prints a table; serde gives JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RobustnessReport {
    /// Test name (`module::mnist_cnn::pgd_eps_0_1`) or the model's name.
    pub test: String,
    /// Model name.
    pub model: String,
    /// Attack id (`"pgd"`).
    pub attack: String,
    /// Attack with its hyper-parameters.
    pub attack_description: String,
    /// Norm and ε.
    pub threat: ThreatModel,
    /// Whether the attack aimed at target classes.
    pub targeted: bool,
    /// Seed of the run.
    pub seed: u64,
    /// Device it ran on.
    pub device: String,
    /// The arithmetic of its f32 products ([`Precision`](crate::device::Precision)): TF32
    /// only where a CUDA run asked for it; the JSON leaves f32 out.
    #[serde(default, skip_serializing_if = "crate::device::Precision::is_f32")]
    pub precision: crate::device::Precision,
    /// Samples evaluated.
    pub samples: usize,
    /// Samples classified correctly without attack.
    pub clean_correct: usize,
    /// Samples classified correctly with and without attack.
    pub robust_correct: usize,
    /// Clean-correct samples the attack succeeded on (label changed; or target reached if targeted).
    pub successes: usize,
    /// `clean_correct / samples`.
    pub clean_accuracy: f64,
    /// `robust_correct / samples`.
    pub robust_accuracy: f64,
    /// `successes / clean_correct` (0 when nothing was correct).
    pub success_rate: f64,
    /// Perturbation norms over all samples.
    pub perturbation: PerturbationStats,
    /// Wall time of the run in seconds (the only field that differs between identical runs).
    pub seconds: f64,
    /// Fingerprints of the evaluated data and of the model's outputs on it, for baselines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<crate::case::Fingerprint>,
    /// Robust accuracy over the ε-sweep, for minimal-perturbation attacks (read off one run).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub curve: Vec<CurvePoint>,
    /// For ensembles: robust accuracy after each member of the cascade.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<Stage>,
    /// For a model behind gradient-blocking preprocessing: the plain attack and the attack
    /// through the BPDA twin, side by side (the report's numbers count the worse of the two).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<Adaptive>,
    /// Signs of gradient masking found by [`super::masking::diagnose`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masking: Vec<super::masking::MaskingSymptom>,
    /// Assertions, filled by [`RobustnessReport::check`].
    pub checks: Vec<Check>,
    /// The confidence level of the assertions (`confidence`), when they use bounds; the table
    /// then shows each accuracy's two-sided interval at this level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// Per-sample outcomes, in data order.
    pub per_sample: Vec<SampleOutcome>,
    /// The successful adversarial examples the model was most confidently wrong about, worst
    /// first (at most [`WORST_EXAMPLES`]): what the report's picture shows. Not serialised.
    #[serde(skip)]
    pub worst: Vec<AdversarialExample>,
}

/// The two runs of an adaptive evaluation (Athalye et al. 2018).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Adaptive {
    /// How the second run got its gradients (`BPDA (straight-through)`).
    pub method: String,
    /// Samples robust under the plain attack (gradients through the preprocessing).
    pub plain_robust_correct: usize,
    /// `plain_robust_correct / samples`.
    pub plain_robust_accuracy: f64,
    /// Samples robust under the adaptive attack.
    pub adaptive_robust_correct: usize,
    /// `adaptive_robust_correct / samples`.
    pub adaptive_robust_accuracy: f64,
}

/// One report from the plain and the adaptive run of the same attack: each sample counts as
/// broken if either run broke it (for minimal attacks, the smaller successful perturbation).
pub(crate) fn combine_adaptive(
    plain: RobustnessReport,
    adaptive: RobustnessReport,
    attack: &dyn Attack,
    cfg: &RunConfig,
    method: &str,
) -> RobustnessReport {
    let threat = attack.threat();
    let outcomes: Vec<SampleOutcome> = plain
        .per_sample
        .iter()
        .zip(&adaptive.per_sample)
        .map(|(p, a)| {
            let minimal = match (p.minimal, a.minimal) {
                (Some(mp), Some(ma)) => {
                    let broken = |m: &Minimal| m.pred != p.label;
                    Some(match (broken(&mp), broken(&ma)) {
                        (true, true) if ma.norm(threat.norm) < mp.norm(threat.norm) => ma,
                        (true, _) => mp,
                        _ => ma,
                    })
                }
                (m, other) => m.or(other),
            };
            let chosen = if !p.is_robust() && p.is_clean_correct() {
                p
            } else {
                a
            };
            SampleOutcome {
                minimal,
                ..chosen.clone()
            }
        })
        .collect();
    let mut report = RobustnessReport::from_outcomes(
        plain.test.clone(),
        plain.model.clone(),
        attack,
        cfg,
        outcomes,
        plain.seconds + adaptive.seconds,
    );
    if report.per_sample.iter().any(|s| s.minimal.is_some()) {
        let mut sweep = cfg.sweep.clone();
        sweep.push(threat.eps);
        report.curve = curve(&report.per_sample, threat.norm, &sweep);
    }
    report.stages = adaptive.stages.clone();
    let mut worst: Vec<AdversarialExample> =
        plain.worst.into_iter().chain(adaptive.worst).collect();
    worst.sort_by(|a, b| b.margin.total_cmp(&a.margin));
    let mut seen = std::collections::HashSet::new();
    worst.retain(|w| seen.insert(w.index));
    worst.truncate(WORST_EXAMPLES);
    report.worst = worst;
    report.adaptive = Some(Adaptive {
        method: method.into(),
        plain_robust_correct: plain.robust_correct,
        plain_robust_accuracy: plain.robust_accuracy,
        adaptive_robust_correct: adaptive.robust_correct,
        adaptive_robust_accuracy: adaptive.robust_accuracy,
    });
    report
}

/// How many adversarial examples a report keeps for its picture.
pub const WORST_EXAMPLES: usize = 8;

impl RobustnessReport {
    pub(crate) fn from_outcomes(
        test: String,
        model: String,
        attack: &dyn Attack,
        cfg: &RunConfig,
        per_sample: Vec<SampleOutcome>,
        seconds: f64,
    ) -> Self {
        let samples = per_sample.len();
        let clean_correct = per_sample.iter().filter(|s| s.is_clean_correct()).count();
        let robust_correct = per_sample.iter().filter(|s| s.is_robust()).count();
        let successes = per_sample
            .iter()
            .filter(|s| s.is_clean_correct())
            .filter(|s| match s.target {
                Some(t) => s.adv_pred == t,
                None => s.adv_pred != s.label,
            })
            .count();
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let n = samples.max(1) as f64;
        let perturbation = PerturbationStats {
            mean_linf: per_sample.iter().map(|s| s.linf as f64).sum::<f64>() / n,
            max_linf: per_sample.iter().map(|s| s.linf as f64).fold(0.0, f64::max),
            mean_l2: per_sample.iter().map(|s| s.l2 as f64).sum::<f64>() / n,
            max_l2: per_sample.iter().map(|s| s.l2 as f64).fold(0.0, f64::max),
        };
        RobustnessReport {
            test,
            model,
            attack: attack.id().to_string(),
            attack_description: attack.describe(),
            threat: attack.threat(),
            targeted: cfg.targeting.is_targeted(),
            seed: cfg.seed,
            device: crate::device::name(&cfg.device),
            precision: crate::device::Precision::F32,
            samples,
            clean_correct,
            robust_correct,
            successes,
            clean_accuracy: ratio(clean_correct, samples),
            robust_accuracy: ratio(robust_correct, samples),
            success_rate: ratio(successes, clean_correct),
            perturbation,
            seconds,
            fingerprint: None,
            curve: Vec::new(),
            adaptive: None,
            stages: Vec::new(),
            masking: Vec::new(),
            checks: Vec::new(),
            confidence: None,
            per_sample,
            worst: Vec::new(),
        }
    }

    /// Evaluates the thresholds into [`RobustnessReport::checks`].
    ///
    /// With [`Thresholds::confidence`], `min_acc` is compared with the one-sided lower
    /// Clopper–Pearson bound of the robust accuracy and `max_drop` with the upper bound of the
    /// drop (the share of samples correct clean but broken, itself a binomial proportion).
    pub fn check(mut self, thresholds: &Thresholds) -> Self {
        let n = self.samples;
        let broken = self.clean_correct - self.robust_correct;
        self.confidence = thresholds.confidence;
        if let Some(min) = thresholds.min_acc {
            let (measured, what) = match thresholds.confidence {
                Some(c) => (
                    lower_bound(self.robust_correct, n, c),
                    format!(
                        "the {} lower bound of robust accuracy {} (measured {} on {n} samples)",
                        level(c),
                        pct(lower_bound(self.robust_correct, n, c)),
                        pct(self.robust_accuracy)
                    ),
                ),
                None => (
                    self.robust_accuracy,
                    format!("robust accuracy {}", pct(self.robust_accuracy)),
                ),
            };
            self.checks.push(Check {
                key: "min_acc".into(),
                measured,
                threshold: min,
                passed: measured >= min,
                description: format!("{what} ≥ min_acc {}", pct(min)),
            });
        }
        if let Some(max) = thresholds.max_drop {
            let point = self.clean_accuracy - self.robust_accuracy;
            let (measured, what) = match thresholds.confidence {
                Some(c) => (
                    upper_bound(broken, n, c),
                    format!(
                        "the {} upper bound of clean − robust accuracy {} (measured {})",
                        level(c),
                        pp(upper_bound(broken, n, c)),
                        pp(point)
                    ),
                ),
                None => (point, format!("clean − robust accuracy {}", pp(point))),
            };
            self.checks.push(Check {
                key: "max_drop".into(),
                measured,
                threshold: max,
                passed: measured <= max,
                description: format!("{what} ≤ max_drop {}", pp(max)),
            });
        }
        self
    }

    /// Whether every check held.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// The message of a test failed by gradient-masking diagnostics.
    pub fn masking_message(&self) -> String {
        format!(
            "robustness test `{}` is not trustworthy: its gradients look masked, so the robust accuracy it measured \
             ({:.2} %) may be an illusion (set masking_checks = \"warn\" to report without failing)\n{}\n\n{self}",
            self.test,
            100.0 * self.robust_accuracy,
            super::masking::describe(&self.masking)
        )
    }

    /// The message of a failed robustness test: what failed, then the whole table.
    pub fn failure_message(&self) -> String {
        let failed: Vec<&str> = self
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.description.as_str())
            .collect();
        format!(
            "robustness test `{}` failed: {} does not hold\n\n{self}",
            self.test,
            failed.join("; ")
        )
    }
}

/// `norm ≤ eps`, compared in `f32` like `attack::within_budget`, so that `evaluate` and an
/// attack's own `perturb` agree on every sample.
pub(crate) fn within(norm: f32, eps: f64) -> bool {
    norm <= eps as f32
}

/// Robust accuracy at each ε, from outcomes that carry their minimal perturbation.
pub(crate) fn curve(per_sample: &[SampleOutcome], norm: Norm, sweep: &[f64]) -> Vec<CurvePoint> {
    let mut eps: Vec<f64> = sweep.to_vec();
    eps.sort_by(f64::total_cmp);
    eps.dedup();
    eps.iter()
        .map(|&e| {
            let robust_correct = per_sample
                .iter()
                .filter_map(|s| s.at_eps(norm, e))
                .filter(SampleOutcome::is_robust)
                .count();
            CurvePoint {
                eps: e,
                robust_correct,
                robust_accuracy: robust_correct as f64 / per_sample.len().max(1) as f64,
            }
        })
        .collect()
}

fn pct(v: f64) -> String {
    format!("{:.2} %", 100.0 * v)
}

fn pp(v: f64) -> String {
    format!("{:.2} pp", 100.0 * v)
}

impl fmt::Display for RobustnessReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.perturbation;
        writeln!(
            f,
            "{} under {}{}",
            self.model,
            self.attack_description,
            if self.targeted { ", targeted" } else { "" }
        )?;
        writeln!(f, "  {:<18} {}", "test", self.test)?;
        writeln!(f, "  {:<18} {}", "samples", self.samples)?;
        writeln!(
            f,
            "  {:<18} {:>8}  ({}/{}){}",
            "clean accuracy",
            pct(self.clean_accuracy),
            self.clean_correct,
            self.samples,
            interval_note(self.clean_correct, self.samples, self.confidence)
        )?;
        writeln!(
            f,
            "  {:<18} {:>8}  ({}/{}){}",
            "robust accuracy",
            pct(self.robust_accuracy),
            self.robust_correct,
            self.samples,
            interval_note(self.robust_correct, self.samples, self.confidence)
        )?;
        writeln!(
            f,
            "  {:<18} {:>8}  ({}/{} correctly classified samples {})",
            "attack success",
            pct(self.success_rate),
            self.successes,
            self.clean_correct,
            if self.targeted {
                "sent to their target"
            } else {
                "misclassified"
            }
        )?;
        writeln!(
            f,
            "  {:<18} mean {:.4}  max {:.4}",
            "perturbation L∞", p.mean_linf, p.max_linf
        )?;
        writeln!(
            f,
            "  {:<18} mean {:.4}  max {:.4}",
            "perturbation L2", p.mean_l2, p.max_l2
        )?;
        if !self.curve.is_empty() {
            let points: Vec<String> = self
                .curve
                .iter()
                .map(|p| format!("ε {}: {}", p.eps, pct(p.robust_accuracy)))
                .collect();
            writeln!(f, "  {:<18} {}", "robustness curve", points.join(", "))?;
        }
        if let Some(a) = &self.adaptive {
            writeln!(
                f,
                "  {:<18} {:>8}  ({}/{}) under the plain attack, {} ({}/{}) through {}",
                "adaptive",
                pct(a.plain_robust_accuracy),
                a.plain_robust_correct,
                self.samples,
                pct(a.adaptive_robust_accuracy),
                a.adaptive_robust_correct,
                self.samples,
                a.method
            )?;
        }
        for (i, stage) in self.stages.iter().enumerate() {
            writeln!(
                f,
                "  {:<18} {:>8}  ({}/{}) after {}",
                if i == 0 { "cascade" } else { "" },
                pct(stage.robust_accuracy),
                stage.robust_correct,
                self.samples,
                stage.attack
            )?;
        }
        let randomized = self
            .adaptive
            .as_ref()
            .is_some_and(|a| a.method.starts_with("EOT"));
        if randomized && !self.stages.is_empty() {
            writeln!(
                f,
                "  {:<18} (each stage judges an example by one noisy forward pass, as AutoAttack \
                 does; the accuracies above judge it again with fresh noise)",
                ""
            )?;
        }
        write!(
            f,
            "  {:<18} {:.2} s on {}{}, seed {}",
            "time",
            self.seconds,
            self.device,
            self.precision.suffix(),
            self.seed
        )?;
        if !self.masking.is_empty() {
            write!(f, "\n  gradient masking")?;
            for m in &self.masking {
                write!(f, "\n    ! {}: {}", m.check, m.found)?;
            }
        }
        if !self.checks.is_empty() {
            write!(f, "\n  assertions")?;
            for c in &self.checks {
                write!(
                    f,
                    "\n    {} {}",
                    if c.passed { "✓" } else { "✗" },
                    c.description
                )?;
            }
        }
        Ok(())
    }
}

impl Outcome for RobustnessReport {
    fn test(&self) -> &str {
        &self.test
    }

    fn passed(&self) -> bool {
        RobustnessReport::passed(self)
    }

    fn metrics(&self) -> Vec<Metric> {
        let mut m = vec![
            Metric::gated("clean_accuracy", self.clean_accuracy),
            Metric::gated("robust_accuracy", self.robust_accuracy),
        ];
        for p in &self.curve {
            if p.eps != self.threat.eps {
                m.push(Metric::gated(
                    format!("robust_accuracy@{}", p.eps),
                    p.robust_accuracy,
                ));
            }
        }
        m.push(Metric::info("mean_linf", self.perturbation.mean_linf));
        m.push(Metric::info("mean_l2", self.perturbation.mean_l2));
        m
    }

    fn provenance(&self) -> Provenance {
        Provenance::of(
            "attack",
            format!(
                "{}{}",
                self.attack_description,
                if self.targeted { ", targeted" } else { "" }
            ),
            &self.model,
            self.seed,
            self.samples,
            &self.fingerprint,
        )
    }

    fn curve(&self) -> Option<Curve> {
        let mut points = vec![(0.0, self.clean_accuracy)];
        if self.curve.is_empty() {
            points.push((self.threat.eps, self.robust_accuracy));
        } else {
            points.extend(self.curve.iter().map(|p| (p.eps, p.robust_accuracy)));
        }
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        points.dedup_by(|a, b| a.0 == b.0);
        Some(Curve {
            title: format!("{} under {}", self.model, self.attack),
            x_label: format!("ε ({})", self.threat.norm.symbol()),
            y_label: "robust accuracy".into(),
            points,
            marked: Some(self.threat.eps),
        })
    }

    fn examples(&self) -> &[AdversarialExample] {
        &self.worst
    }
}
