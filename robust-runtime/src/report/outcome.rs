//! What every kind of report offers the files and baselines built on top of it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::certify::CertificationReport;
use crate::eval::{AdversarialExample, Fingerprint};
use crate::{InvarianceReport, RobustnessReport};

/// One number a run measured, as a baseline records it.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// Its key in the baseline file (`robust_accuracy`, `certified_accuracy@0.5`, …).
    pub name: String,
    /// The value.
    pub value: f64,
    /// `true`: a share where higher is better, compared against the baseline with the
    /// tolerance; `false`: recorded and shown, never failed on (perturbation norms, whose
    /// direction depends on the attack).
    pub gated: bool,
}

impl Metric {
    fn gated(name: impl Into<String>, value: f64) -> Self {
        Metric {
            name: name.into(),
            value,
            gated: true,
        }
    }

    fn info(name: impl Into<String>, value: f64) -> Self {
        Metric {
            name: name.into(),
            value,
            gated: false,
        }
    }
}

/// What produced a report: enough to tell whether two runs measured the same thing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Provenance {
    /// `attack`, `certification` or `perturbation`.
    pub kind: String,
    /// The attack, certifier or perturbation with its hyper-parameters and threat model.
    pub config: String,
    /// The model's name.
    pub model: String,
    /// Seed of the run.
    pub seed: u64,
    /// Samples evaluated.
    pub samples: usize,
    /// Fingerprint of the evaluated data (inputs and labels).
    pub data_fingerprint: String,
    /// Fingerprint of the model's clean logits on that data.
    pub model_fingerprint: String,
    /// Version of `robust-runtime` that measured it.
    pub robust_version: String,
}

/// A curve to plot: y against x, with axis names.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    /// Plot title.
    pub title: String,
    /// Name of the x axis (`ε (L∞)`).
    pub x_label: String,
    /// Name of the y axis (`robust accuracy`).
    pub y_label: String,
    /// Points, in increasing x.
    pub points: Vec<(f64, f64)>,
    /// x of the test's own assertion, marked on the plot.
    pub marked: Option<f64>,
}

/// A report that can be written to files and compared with a baseline: the three kinds of
/// generated test each produce one.
pub trait Outcome: fmt::Display + Serialize {
    /// The test's name.
    fn test(&self) -> &str;
    /// Whether its assertions held.
    fn passed(&self) -> bool;
    /// The numbers a baseline records, gated ones first.
    fn metrics(&self) -> Vec<Metric>;
    /// What produced it.
    fn provenance(&self) -> Provenance;
    /// The accuracy-versus-radius curve, when the run measured more than the clean point.
    fn curve(&self) -> Option<Curve>;
    /// Adversarial examples to draw, worst first.
    fn examples(&self) -> &[AdversarialExample] {
        &[]
    }
}

impl Provenance {
    /// The provenance of a run of `kind` (this crate's version, the fingerprints if measured).
    fn of(
        kind: &str,
        config: String,
        model: &str,
        seed: u64,
        samples: usize,
        fingerprint: &Option<Fingerprint>,
    ) -> Self {
        let (data, model_fp) = fingerprint
            .as_ref()
            .map(|f| (f.data.clone(), f.model.clone()))
            .unwrap_or_default();
        Provenance {
            kind: kind.into(),
            config,
            model: model.into(),
            seed,
            samples,
            data_fingerprint: data,
            model_fingerprint: model_fp,
            robust_version: env!("CARGO_PKG_VERSION").into(),
        }
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

impl Outcome for CertificationReport {
    fn test(&self) -> &str {
        &self.test
    }

    fn passed(&self) -> bool {
        CertificationReport::passed(self)
    }

    fn metrics(&self) -> Vec<Metric> {
        let mut m = vec![
            Metric::gated("clean_accuracy", self.clean_accuracy),
            Metric::gated("certified_accuracy", self.certified_accuracy),
        ];
        for p in &self.curve {
            if p.radius != self.radius {
                m.push(Metric::gated(
                    format!("certified_accuracy@{}", p.radius),
                    p.certified_accuracy,
                ));
            }
        }
        m
    }

    fn provenance(&self) -> Provenance {
        let config = match &self.smoothing {
            Some(s) => format!(
                "{} (σ = {}, n0 = {}, n = {}, α = {}), {} radius {}",
                self.certifier, s.sigma, s.n0, s.n, s.alpha, self.norm, self.radius
            ),
            None => format!("{}, {} ε = {}", self.certifier, self.norm, self.radius),
        };
        Provenance::of(
            "certification",
            config,
            &self.model,
            self.seed,
            self.samples,
            &self.fingerprint,
        )
    }

    fn curve(&self) -> Option<Curve> {
        let mut points = vec![
            (0.0, self.clean_accuracy),
            (self.radius, self.certified_accuracy),
        ];
        points.extend(self.curve.iter().map(|p| (p.radius, p.certified_accuracy)));
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        points.dedup_by(|a, b| a.0 == b.0);
        Some(Curve {
            title: format!("{} certified by {}", self.model, self.certifier),
            x_label: format!("radius ({})", self.norm),
            y_label: "certified accuracy".into(),
            points,
            marked: Some(self.radius),
        })
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
