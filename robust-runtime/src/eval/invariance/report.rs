//! The outcome of an invariance run and the assertion checked on it.

use crate::report::{Curve, Metric, Outcome, Provenance};
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::eval::Check;
use crate::perturb::Perturbation;

/// Counterexamples printed in the table; the JSON has all of them.
const SHOWN: usize = 10;

/// The smallest perturbation found that changes one sample's prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counterexample {
    /// Index of the sample in the evaluated data.
    pub sample: usize,
    /// Its true label (which the model predicted on the clean input).
    pub label: u32,
    /// The prediction under [`Counterexample::perturbation`].
    pub pred: u32,
    /// The case that found it, or `None` when its seed came from the regressions file.
    pub case: Option<usize>,
    /// The seed that regenerates the unshrunk case
    /// ([`perturb::tree_from_seed`](crate::perturb::tree_from_seed)); shrinking it again gives
    /// the same minimal perturbation.
    pub seed: u64,
    /// The perturbation after shrinking.
    pub perturbation: Perturbation,
    /// Its [`size`](Perturbation::size).
    pub size: f64,
    /// L∞ norm of the change it makes to the sample (after clamping into the domain).
    pub linf: f32,
    /// L2 norm of that change.
    pub l2: f32,
    /// Shrinking steps taken (forward passes of this sample).
    pub shrink_steps: usize,
    /// The PNG original / perturbed / difference, when one was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<PathBuf>,
}

/// What the regressions file contributed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplaySummary {
    /// The file, when the run had one.
    pub path: Option<PathBuf>,
    /// Stored seeds replayed (those of samples evaluated and classified correctly).
    pub replayed: usize,
    /// Replayed seeds that still change a prediction.
    pub still_failing: usize,
    /// Seeds written to the file after this run failed.
    pub written: usize,
}

/// Everything an invariance run measured. `Display` prints a table; serde gives JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvarianceReport {
    /// Test name (`suite::mnist_cnn::rotation`) or the model's name.
    pub test: String,
    /// Model name.
    pub model: String,
    /// The perturbation's name (`"rotation"`, `"rotation+brightness"`).
    pub perturbation: String,
    /// What was generated, in words.
    pub description: String,
    /// Seed of the run.
    pub seed: u64,
    /// Cases drawn per correctly classified sample.
    pub cases: usize,
    /// Device it ran on.
    pub device: String,
    /// The arithmetic of its f32 products ([`Precision`](crate::device::Precision)): TF32
    /// only where a CUDA run asked for it; the JSON leaves f32 out.
    #[serde(default, skip_serializing_if = "crate::device::Precision::is_f32")]
    pub precision: crate::device::Precision,
    /// Samples evaluated.
    pub samples: usize,
    /// Samples classified correctly without perturbation.
    pub clean_correct: usize,
    /// Correctly classified samples whose prediction no case changed.
    pub invariant: usize,
    /// `clean_correct / samples`.
    pub clean_accuracy: f64,
    /// `invariant / clean_correct`: the share of correct predictions that survive (what
    /// `min_invariance` asserts; 0 when nothing was correct).
    pub invariance: f64,
    /// `invariant / samples`: accuracy when every sample meets its worst case.
    pub perturbed_accuracy: f64,
    /// Perturbed inputs run through the model, shrinking included.
    pub forwarded: usize,
    /// Seeds replayed from the regressions file.
    pub replay: ReplaySummary,
    /// The folder of the counterexamples' PNGs (and, for generated tests, `report.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<PathBuf>,
    /// Wall time in seconds (the only field that differs between identical runs).
    pub seconds: f64,
    /// Fingerprints of the evaluated data and of the model's outputs on it, for baselines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<crate::case::Fingerprint>,
    /// The confidence level of the assertion, when it uses a bound; the table then shows the
    /// invariance's two-sided interval at this level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// Assertions, filled by [`InvarianceReport::check`].
    pub checks: Vec<Check>,
    /// One per sample that some perturbation flipped, by sample index.
    pub counterexamples: Vec<Counterexample>,
}

fn pct(v: f64) -> String {
    format!("{:.2} %", 100.0 * v)
}

impl InvarianceReport {
    /// Evaluates `min_invariance` into [`InvarianceReport::checks`].
    ///
    /// With a `confidence` level, the one-sided Clopper–Pearson lower bound of the invariance
    /// (a proportion of the correctly classified samples) is compared instead.
    pub fn check(mut self, min_invariance: Option<f64>, confidence: Option<f64>) -> Self {
        self.confidence = confidence;
        if let Some(min) = min_invariance {
            let (measured, what) = match confidence {
                Some(c) => {
                    let lower = crate::stats::lower_bound(self.invariant, self.clean_correct, c);
                    (
                        lower,
                        format!(
                            "the {} lower bound of invariance {} (measured {} on {} samples)",
                            crate::stats::level(c),
                            pct(lower),
                            pct(self.invariance),
                            self.clean_correct
                        ),
                    )
                }
                None => (
                    self.invariance,
                    format!("invariance {}", pct(self.invariance)),
                ),
            };
            self.checks.push(Check {
                key: "min_invariance".into(),
                measured,
                threshold: min,
                passed: measured >= min,
                description: format!("{what} ≥ min_invariance {}", pct(min)),
            });
        }
        self
    }

    /// Whether every check held.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// The message of a failed test: what failed, then the whole table.
    pub fn failure_message(&self) -> String {
        let failed: Vec<&str> = self
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.description.as_str())
            .collect();
        format!(
            "perturbation test `{}` failed: {} does not hold\n\n{self}",
            self.test,
            failed.join("; ")
        )
    }
}

impl fmt::Display for InvarianceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} under {}, {} cases per sample",
            self.model, self.description, self.cases
        )?;
        writeln!(f, "  {:<18} {}", "test", self.test)?;
        writeln!(f, "  {:<18} {}", "samples", self.samples)?;
        writeln!(
            f,
            "  {:<18} {:>8}  ({}/{})",
            "clean accuracy",
            pct(self.clean_accuracy),
            self.clean_correct,
            self.samples
        )?;
        writeln!(
            f,
            "  {:<18} {:>8}  ({}/{} correctly classified samples keep their prediction under every case){}",
            "invariance",
            pct(self.invariance),
            self.invariant,
            self.clean_correct,
            crate::stats::interval_note(self.invariant, self.clean_correct, self.confidence)
        )?;
        writeln!(
            f,
            "  {:<18} {:>8}  ({}/{})",
            "perturbed accuracy",
            pct(self.perturbed_accuracy),
            self.invariant,
            self.samples
        )?;
        if let Some(path) = &self.replay.path {
            write!(
                f,
                "  {:<18} {} replayed from {}, {} still fail",
                "regressions",
                self.replay.replayed,
                path.display(),
                self.replay.still_failing
            )?;
            if self.replay.written > 0 {
                write!(f, "; {} new written (commit the file)", self.replay.written)?;
            }
            writeln!(f)?;
        }
        write!(
            f,
            "  {:<18} {:.2} s on {}{}, {} perturbed inputs, seed {}",
            "time",
            self.seconds,
            self.device,
            self.precision.suffix(),
            self.forwarded,
            self.seed
        )?;
        if !self.counterexamples.is_empty() {
            write!(
                f,
                "\n  counterexamples    minimal after shrinking; `seed` regenerates the case"
            )?;
            for c in self.counterexamples.iter().take(SHOWN) {
                write!(
                    f,
                    "\n    sample {}: {} → {} under {} (size {:.4}, L∞ {:.4}, L2 {:.4}), seed {:016x}{}",
                    c.sample,
                    c.label,
                    c.pred,
                    c.perturbation,
                    c.size,
                    c.linf,
                    c.l2,
                    c.seed,
                    match c.case {
                        Some(case) => format!(" (case {case})"),
                        None => " (from the regressions file)".to_string(),
                    }
                )?;
                if let Some(image) = &c.image {
                    write!(f, "\n      {}", image.display())?;
                }
            }
            if self.counterexamples.len() > SHOWN {
                write!(
                    f,
                    "\n    … and {} more (all in the JSON report)",
                    self.counterexamples.len() - SHOWN
                )?;
            }
        }
        if let Some(dir) = &self.output {
            write!(f, "\n  {:<18} {}", "files", dir.display())?;
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

impl Outcome for InvarianceReport {
    fn test(&self) -> &str {
        &self.test
    }

    fn passed(&self) -> bool {
        InvarianceReport::passed(self)
    }

    fn metrics(&self) -> Vec<Metric> {
        vec![
            Metric::gated("clean_accuracy", self.clean_accuracy),
            Metric::gated("invariance", self.invariance),
            Metric::gated("perturbed_accuracy", self.perturbed_accuracy),
        ]
    }

    fn provenance(&self) -> Provenance {
        Provenance::of(
            "perturbation",
            format!("{}, {} cases per sample", self.description, self.cases),
            &self.model,
            self.seed,
            self.samples,
            &self.fingerprint,
        )
    }

    /// Random perturbations have no radius to sweep: no curve.
    fn curve(&self) -> Option<Curve> {
        None
    }
}
