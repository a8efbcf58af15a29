//! What every kind of report offers the files and baselines built on top of it. Each report
//! implements [`Outcome`] beside its own type (`eval`, `certify`), so this module knows none
//! of them: `report` sits below the runs that produce reports.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::case::Fingerprint;

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
    pub(crate) fn gated(name: impl Into<String>, value: f64) -> Self {
        Metric {
            name: name.into(),
            value,
            gated: true,
        }
    }

    pub(crate) fn info(name: impl Into<String>, value: f64) -> Self {
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
    pub(crate) fn of(
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

/// One adversarial example with its clean original, as pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct AdversarialExample {
    /// Position in the evaluated data.
    pub index: usize,
    /// True label.
    pub label: u32,
    /// Prediction on the adversarial input.
    pub adv_pred: u32,
    /// `max_{j≠y} z_j − z_y` on the adversarial input: how confidently it is wrong.
    pub margin: f32,
    /// Shape of one input (`C × H × W` for images).
    pub shape: Vec<usize>,
    /// The clean input.
    pub clean: Vec<f32>,
    /// The adversarial input.
    pub adversarial: Vec<f32>,
}
