//! Certification: proofs that no perturbation in the threat model changes the prediction.
//!
//! An attack can only show that a model is *not* robust; a certificate shows that it is. Three
//! certifiers, all on the same [`Model`](crate::Model) object (built from a [`Sequential`] for the first two):
//!
//! - [`Method::Ibp`]: interval bound propagation ([`ibp`], Gowal et al. 2018). Cheap (about two
//!   forward passes), loose unless the network was trained for it.
//! - [`Method::Crown`]: linear relaxation ([`crown`], Zhang et al. 2018). Tighter, costs one
//!   backward pass per unstable neuron of each hidden ReLU layer (batched). The certificate takes, per margin, the better of CROWN's and
//!   IBP's lower bound (both are sound, so is their maximum), which makes it never looser than
//!   IBP; [`crown::margin_lower_bounds`] gives CROWN alone, as auto_LiRPA computes it.
//! - randomized smoothing ([`smoothing`], Cohen et al. 2019): a probabilistic L2 certificate for
//!   the smoothed classifier, any model.
//!
//! L∞ certificates are over the ε-ball intersected with the model's input domain. A sample is
//! certified when it is classified correctly and every margin `z_y − z_j` has a positive lower
//! bound over that box.
//!
//! ```no_run
//! use robust_runtime::certify::{self, Method};
//! use robust_runtime::nn::Sequential;
//! use robust_runtime::prelude::*;
//!
//! let net = Sequential::builder(&[1, 28, 28])
//!     .conv2d(16, 4, 2, 1).relu()
//!     .conv2d(32, 4, 2, 1).relu()
//!     .flatten().linear(100).relu().linear(10)
//!     .load("tests/fixtures/mnist_ibp.safetensors", &Device::Cpu)?;
//! let case = RobustnessCase::new(net, Dataset::mnist_sample()?.test_split().take(100)?);
//! let report = certify::bound_case(&case, Method::Crown, 0.1, 50)?;
//! println!("{report}");
//! # Ok::<(), robust_runtime::Error>(())
//! ```

pub mod crown;
pub mod ibp;
pub mod smoothing;
/// The statistics smoothing certifies with ([`crate::stats`], shared with the assertions).
pub use crate::stats;

use crate::report::{Curve, Metric, Outcome, Provenance};
use std::fmt;

use candle_core::{DType, Device, Module, Tensor};

pub use smoothing::{SmoothedCertificate, Smoothing};

use crate::nn::Sequential;
use crate::{Error, InputDomain, Result, Rng, RobustnessCase};

/// A bound-propagation certifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Method {
    /// Interval bound propagation.
    Ibp,
    /// CROWN (linear relaxation), never looser than IBP.
    Crown,
}

impl Method {
    /// The names `certify = "…"` accepts, besides `"smoothing"`.
    pub const NAMES: &'static [&'static str] = robust_spec::names::BOUND_CERTIFIERS;

    /// `"ibp"` or `"crown"`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "ibp" => Ok(Method::Ibp),
            "crown" => Ok(Method::Crown),
            _ => Err(Error::unknown(
                "certifier",
                name,
                robust_spec::names::CERTIFIERS,
            )),
        }
    }

    /// `"IBP"` or `"CROWN"`.
    pub fn label(self) -> &'static str {
        match self {
            Method::Ibp => "IBP",
            Method::Crown => "CROWN",
        }
    }
}

/// The L∞ ball of radius `eps` around `x`, intersected with `domain`: `(lower, upper)`.
pub fn input_box(x: &Tensor, eps: f64, domain: InputDomain) -> Result<(Tensor, Tensor)> {
    check_eps(eps)?;
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return Ok(input_box_f32(x, eps, domain)?);
    }
    let lower = (x - eps)?.clamp(domain.lo(), domain.hi())?;
    let upper = (x + eps)?.clamp(domain.lo(), domain.hi())?;
    Ok((lower, upper))
}

/// [`input_box`] of an f32 CPU tensor on its values, with the tensor operations' arithmetic (`x ±
/// eps` in f32, then `max` and `min` that keep a NaN): four element-wise tensor operations each
/// hand a large batch to candle's thread pool, whose worker then spins for a while on a core
/// that the bounds themselves need.
fn input_box_f32(
    x: &Tensor,
    eps: f64,
    domain: InputDomain,
) -> candle_core::Result<(Tensor, Tensor)> {
    let (e, lo, hi) = (eps as f32, domain.lo() as f32, domain.hi() as f32);
    let clamp = |v: f32| {
        let v = if v < lo { lo } else { v };
        if v > hi {
            hi
        } else {
            v
        }
    };
    let values = x.flatten_all()?.to_vec1::<f32>()?;
    let lower: Vec<f32> = values.iter().map(|&v| clamp(v - e)).collect();
    let upper: Vec<f32> = values.iter().map(|&v| clamp(v + e)).collect();
    Ok((
        Tensor::from_vec(lower, x.shape(), x.device())?,
        Tensor::from_vec(upper, x.shape(), x.device())?,
    ))
}

fn check_eps(eps: f64) -> Result<()> {
    crate::check::check_positive_as("eps", eps, "a finite radius > 0")
}

/// Lower bounds of the margins `z_y − z_j` over the box, `N × classes` (`+∞` at `j = y`).
pub fn margin_lower_bounds(
    net: &Sequential,
    lower: &Tensor,
    upper: &Tensor,
    labels: &[u32],
    method: Method,
) -> Result<Tensor> {
    let ibp = ibp::margin_lower_bounds(net, lower, upper, labels)?;
    match method {
        Method::Ibp => Ok(ibp),
        Method::Crown => Ok(crown::margin_lower_bounds(net, lower, upper, labels)?.maximum(&ibp)?),
    }
}

/// [`margin_lower_bounds`] for a [`crate::Model`]: on its layers when they are a chain (with its
/// normalisation first); on a graph with residual sums ([`crate::nn::Graph`]), on the engine
/// (plain f32 weights and inputs on the CPU): IBP sums the boxes of both terms at each sum,
/// CROWN the linear bounds of both. Anything else is [`Error::NotCertifiable`], saying why.
pub fn model_margin_lower_bounds(
    model: &crate::Model,
    lower: &Tensor,
    upper: &Tensor,
    labels: &[u32],
    method: Method,
) -> Result<Tensor> {
    Bounded::of(model)?.margin_lower_bounds(lower, upper, labels, method)
}

/// What a model's margins are bounded on: its layers as a chain (detached once, so that its
/// engine is compiled once), or its graph with residual sums (on the engine).
enum Bounded<'m> {
    Chain(Sequential),
    Graph(&'m crate::Model),
}

impl<'m> Bounded<'m> {
    fn of(model: &'m crate::Model) -> Result<Self> {
        match model.network() {
            Ok(net) => Ok(Bounded::Chain(net.detach())),
            Err(_) if model.is_graph() => Ok(Bounded::Graph(model)),
            Err(e) => Err(e),
        }
    }

    /// Where the weights are (the engine's graphs: the CPU).
    fn device(&self) -> Device {
        match self {
            Bounded::Chain(net) => net.device(),
            Bounded::Graph(_) => Device::Cpu,
        }
    }

    fn margin_lower_bounds(
        &self,
        lower: &Tensor,
        upper: &Tensor,
        labels: &[u32],
        method: Method,
    ) -> Result<Tensor> {
        match self {
            Bounded::Chain(net) => margin_lower_bounds(net, lower, upper, labels, method),
            Bounded::Graph(model) => graph_margin_lower_bounds(model, lower, upper, labels, method),
        }
    }

    fn logit_bounds(
        &self,
        lower: &Tensor,
        upper: &Tensor,
        method: Method,
    ) -> Result<(Tensor, Tensor)> {
        match self {
            Bounded::Chain(net) => logit_bounds(net, lower, upper, method),
            Bounded::Graph(model) => graph_logit_bounds(model, lower, upper, method),
        }
    }
}

/// Why CROWN refuses a graph the engine runs.
const NO_CROWN: &str = "CROWN relaxes max-pooling only where its windows do not overlap \
                        (kernel = stride)";

/// Lower bounds of the margins `z_y − z_j` over the box `[lower, upper]` of a graph model
/// (not a chain), on the engine, its normalisation first: IBP with the boxes summed at each
/// residual sum, or CROWN with the linear bounds of both terms summed there (never looser
/// than IBP: the larger of the two is kept, as for a chain).
fn graph_margin_lower_bounds(
    model: &crate::Model,
    lower: &Tensor,
    upper: &Tensor,
    labels: &[u32],
    method: Method,
) -> Result<Tensor> {
    let engine = model.graph_engine(lower)?;
    // `+∞` at `j = y` already.
    let ibp = (engine.interval_margins(lower, upper, labels)?).ok_or_else(|| {
        model.not_certifiable(
            "bounds through a graph need a last linear layer without ReLU, and labels below its \
             outputs",
        )
    })?;
    if method == Method::Ibp {
        return Ok(ibp);
    }
    let spec = crate::nn::Spec::Margins(labels);
    let (crown, _) = (engine.crown(lower, upper, spec, false)?)
        .ok_or_else(|| model.not_certifiable(NO_CROWN))?;
    Ok(crown.maximum(&ibp)?)
}

/// Bounds of the logits over the box `[lower, upper]` of a graph model, on the engine: IBP, or
/// CROWN intersected with IBP.
fn graph_logit_bounds(
    model: &crate::Model,
    lower: &Tensor,
    upper: &Tensor,
    method: Method,
) -> Result<(Tensor, Tensor)> {
    let engine = model.graph_engine(lower)?;
    let (l, u) = engine.interval(lower, upper)?;
    if method == Method::Ibp {
        return Ok((l, u));
    }
    let (cl, cu) = (engine.crown(lower, upper, crate::nn::Spec::Outputs, false)?)
        .ok_or_else(|| model.not_certifiable(NO_CROWN))?;
    Ok((cl.maximum(&l)?, cu.minimum(&u)?))
}

/// [`logit_bounds`] for a [`crate::Model`], on the layers [`model_margin_lower_bounds`] uses.
pub fn model_logit_bounds(
    model: &crate::Model,
    lower: &Tensor,
    upper: &Tensor,
    method: Method,
) -> Result<(Tensor, Tensor)> {
    Bounded::of(model)?.logit_bounds(lower, upper, method)
}

/// Bounds of the logits over the box: `(lower, upper)`, each `N × classes`.
pub fn logit_bounds(
    net: &Sequential,
    lower: &Tensor,
    upper: &Tensor,
    method: Method,
) -> Result<(Tensor, Tensor)> {
    let (l, u) = ibp::output_bounds(net, lower, upper)?;
    match method {
        Method::Ibp => Ok((l, u)),
        Method::Crown => {
            let (cl, cu) = crown::output_bounds(net, lower, upper)?;
            Ok((cl.maximum(&l)?, cu.minimum(&u)?))
        }
    }
}

/// `N × classes × classes`: row `j` of sample `n` is `e_y − e_j` (zero for `j = y`).
pub(crate) fn margin_spec(labels: &[u32], classes: usize, device: &Device) -> Result<Tensor> {
    let mut spec = vec![0f32; labels.len() * classes * classes];
    for (n, &y) in labels.iter().enumerate() {
        let y = y as usize;
        if y >= classes {
            return Err(Error::LabelOutOfRange {
                label: y as u32,
                index: n,
                classes,
            });
        }
        for j in (0..classes).filter(|&j| j != y) {
            let row = (n * classes + j) * classes;
            spec[row + y] = 1.0;
            spec[row + j] = -1.0;
        }
    }
    Ok(Tensor::from_vec(
        spec,
        (labels.len(), classes, classes),
        device,
    )?)
}

/// Sets the entry of each sample's own class to `+∞`, so that `min` over a row is the margin.
pub(crate) fn mask_label(bounds: &Tensor, labels: &[u32]) -> Result<Tensor> {
    let (n, classes) = bounds.dims2()?;
    let mut mask = vec![0u8; n * classes];
    for (i, &y) in labels.iter().enumerate() {
        mask[i * classes + y as usize] = 1;
    }
    let mask = Tensor::from_vec(mask, (n, classes), bounds.device())?;
    let inf =
        Tensor::full(f32::INFINITY, (n, classes), bounds.device())?.to_dtype(bounds.dtype())?;
    Ok(mask.where_cond(&inf, bounds)?)
}

/// The outcome for one sample.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CertifiedSample {
    /// Position in the evaluated data.
    pub index: usize,
    /// True class.
    pub label: u32,
    /// Prediction on the clean input (bound certifiers) or of the smoothed classifier (`None`:
    /// abstained).
    pub prediction: Option<u32>,
    /// Correct and certified at the report's ε / radius.
    pub certified: bool,
    /// Bound certifiers: the smallest margin lower bound, `min_j lb(z_y − z_j)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin: Option<f32>,
    /// Smoothing: the certified L2 radius (0 when abstaining).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub radius: Option<f64>,
    /// Smoothing: the lower confidence bound of the top class's probability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_a_lower: Option<f64>,
}

/// Certified accuracy at one radius (smoothing reports several).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CertifiedPoint {
    /// ε or L2 radius.
    pub radius: f64,
    /// Share of samples correct and certified at that radius.
    pub certified_accuracy: f64,
}

/// What a certifier proved on a case: a table with `Display`, JSON with serde.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CertificationReport {
    /// Test name or the model's name.
    pub test: String,
    /// Model name.
    pub model: String,
    /// `IBP`, `CROWN` or `smoothing`.
    pub certifier: String,
    /// Threat model: `L∞` for bound certifiers, `L2` for smoothing.
    pub norm: String,
    /// ε (L∞) or the L2 radius the assertion is about.
    pub radius: f64,
    /// Smoothing parameters, when smoothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smoothing: Option<Smoothing>,
    /// Seed of the noise (smoothing).
    pub seed: u64,
    /// Samples evaluated.
    pub samples: usize,
    /// Share classified correctly on clean inputs (by the base model).
    pub clean_accuracy: f64,
    /// Share correct and certified at `radius`.
    pub certified_accuracy: f64,
    /// Smoothing: samples where CERTIFY abstained.
    pub abstained: usize,
    /// Certified accuracy at other radii (smoothing: read off the same certificates).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub curve: Vec<CertifiedPoint>,
    /// Per-sample outcomes.
    pub per_sample: Vec<CertifiedSample>,
    /// The threshold the test asserted, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_certified_accuracy: Option<f64>,
    /// `confidence`: the threshold is compared with the one-sided Clopper–Pearson lower bound
    /// of the certified accuracy at this level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// Fingerprints of the evaluated data and of the model's outputs on it, for baselines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<crate::case::Fingerprint>,
    /// Wall time in seconds (the only field that differs between identical runs).
    pub seconds: f64,
}

impl CertificationReport {
    /// Whether `min_certified_accuracy` holds (true when none was set).
    pub fn passed(&self) -> bool {
        self.min_certified_accuracy
            .is_none_or(|min| self.asserted_accuracy() >= min)
    }

    /// Samples correct and certified.
    pub fn certified(&self) -> usize {
        self.per_sample.iter().filter(|s| s.certified).count()
    }

    /// What `min_certified_acc` is compared with: the certified accuracy, or its lower
    /// confidence bound when `confidence` is set.
    pub fn asserted_accuracy(&self) -> f64 {
        match self.confidence {
            Some(c) => crate::stats::lower_bound(self.certified(), self.samples, c),
            None => self.certified_accuracy,
        }
    }

    /// The same smoothing certificates read at another L2 radius.
    pub fn at_radius(&self, radius: f64) -> Self {
        let mut report = self.clone();
        report.radius = radius;
        for s in &mut report.per_sample {
            s.certified = s.prediction == Some(s.label) && s.radius.unwrap_or(0.0) >= radius;
        }
        let certified = report.per_sample.iter().filter(|s| s.certified).count();
        report.certified_accuracy = certified as f64 / report.samples.max(1) as f64;
        report
    }

    /// The message of a failed assertion: what was asserted, what was measured, the table.
    pub fn failure_message(&self) -> String {
        let measured = match self.confidence {
            Some(c) => format!(
                "the {} lower bound of certified accuracy, {:.2}% (measured {:.2}% on {} samples),",
                crate::stats::level(c),
                100.0 * self.asserted_accuracy(),
                100.0 * self.certified_accuracy,
                self.samples
            ),
            None => format!("certified accuracy {:.2}%", 100.0 * self.certified_accuracy),
        };
        format!(
            "certification test `{}` failed: {measured} at {} {} is below min_certified_acc = {:.2}%\n\n{self}",
            self.test,
            self.norm,
            self.radius,
            100.0 * self.min_certified_accuracy.unwrap_or(0.0),
        )
    }

    fn from_samples(
        case: &RobustnessCase,
        certifier: String,
        norm: &str,
        radius: f64,
        per_sample: Vec<CertifiedSample>,
        clean_correct: usize,
        started: std::time::Instant,
    ) -> Self {
        let samples = per_sample.len();
        let share = |k: usize| {
            if samples == 0 {
                0.0
            } else {
                k as f64 / samples as f64
            }
        };
        let certified = per_sample.iter().filter(|s| s.certified).count();
        CertificationReport {
            test: case.model().name().to_string(),
            model: case.model().name().to_string(),
            certifier,
            norm: norm.into(),
            radius,
            smoothing: None,
            seed: 0,
            samples,
            clean_accuracy: share(clean_correct),
            certified_accuracy: share(certified),
            abstained: 0,
            curve: Vec::new(),
            confidence: None,
            fingerprint: None,
            per_sample,
            min_certified_accuracy: None,
            seconds: started.elapsed().as_secs_f64(),
        }
    }
}

impl fmt::Display for CertificationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "certification of {} ({})", self.test, self.model)?;
        writeln!(f, "  certifier           {}", self.certifier)?;
        if let Some(s) = &self.smoothing {
            writeln!(
                f,
                "  smoothing           σ = {}, n0 = {}, n = {}, α = {}, seed {}",
                s.sigma, s.n0, s.n, s.alpha, self.seed
            )?;
        }
        writeln!(
            f,
            "  threat              {} radius {}",
            self.norm, self.radius
        )?;
        writeln!(f, "  samples             {}", self.samples)?;
        writeln!(
            f,
            "  clean accuracy      {:.2}%",
            100.0 * self.clean_accuracy
        )?;
        writeln!(
            f,
            "  certified accuracy  {:.2}%{}",
            100.0 * self.certified_accuracy,
            crate::stats::interval_note(self.certified(), self.samples, self.confidence)
        )?;
        if self.smoothing.is_some() {
            writeln!(f, "  abstained           {}", self.abstained)?;
        }
        for p in &self.curve {
            writeln!(
                f,
                "    at radius {:<8} {:.2}%",
                p.radius,
                100.0 * p.certified_accuracy
            )?;
        }
        if let Some(min) = self.min_certified_accuracy {
            let verdict = if self.passed() { "ok" } else { "FAILED" };
            writeln!(f, "  min_certified_acc   {:.2}%  {verdict}", 100.0 * min)?;
        }
        write!(f, "  time                {:.2} s", self.seconds)
    }
}

/// Certifies every sample of `case` at L∞ radius `eps` with a bound certifier, `batch_size`
/// samples at a time.
pub fn bound_case(
    case: &RobustnessCase,
    method: Method,
    eps: f64,
    batch_size: usize,
) -> Result<CertificationReport> {
    check_eps(eps)?;
    if batch_size == 0 {
        return Err(Error::param("batch_size", batch_size, "at least 1"));
    }
    case.check_shape()?;
    case.check_domain()?;
    let started = std::time::Instant::now();
    let model = case.model();
    let bounded = Bounded::of(model)?;
    let domain = model.domain();
    let mut per_sample = Vec::with_capacity(case.data().len());
    let mut clean_correct = 0;
    let device = bounded.device();
    let mut progress = crate::progress::Progress::new(case.model().name(), case.data().len());
    for batch in case.data().batches(batch_size, &device) {
        let batch = batch?;
        progress.advance(0);
        let (start, labels) = (batch.range.start, &case.data().labels()[batch.range]);
        let x = batch.inputs.to_dtype(DType::F32)?;
        let predictions = model.predict(&x)?;
        let (lower, upper) = input_box(&x, eps, domain)?;
        let margins = bounded.margin_lower_bounds(&lower, &upper, labels, method)?;
        let margins = margins.min(1)?.to_vec1::<f32>()?;
        for (i, ((&label, prediction), margin)) in
            labels.iter().zip(predictions).zip(margins).enumerate()
        {
            let correct = prediction == label;
            clean_correct += usize::from(correct);
            if margin.is_nan() {
                return Err(Error::NonFiniteLogits {
                    count: 1,
                    batch: labels.len(),
                });
            }
            per_sample.push(CertifiedSample {
                index: start + i,
                label,
                prediction: Some(prediction),
                certified: correct && margin > 0.0,
                margin: Some(margin),
                radius: None,
                p_a_lower: None,
            });
        }
        progress.advance(labels.len());
    }
    progress.finish();
    Ok(CertificationReport::from_samples(
        case,
        method.label().into(),
        "L∞",
        eps,
        per_sample,
        clean_correct,
        started,
    ))
}

/// Certifies every sample of `case` over the L∞ ball of radius `eps` with [`crate::verify`]:
/// α-CROWN alone when `options.max_branches` is `Some(0)` (what `certify = "alpha-crown"`
/// runs), else the complete search within `options.timeout` per sample (`certify = "bab"`). A
/// sample counts as certified when it is classified correctly and every other class is proved
/// unable to reach its label's logit; its margin is the smallest α-CROWN bound at the root, and
/// a counterexample found (PGD or a branch) leaves it uncertified.
///
/// # Errors
/// What [`crate::verify::verify`] gives for the model (a network that is not a chain of affine
/// layers and ReLUs), and bad `eps`.
pub fn verify_case(
    case: &RobustnessCase,
    eps: f64,
    options: &crate::verify::Options,
) -> Result<CertificationReport> {
    check_eps(eps)?;
    case.check_shape()?;
    case.check_domain()?;
    let started = std::time::Instant::now();
    let model = case.model();
    let domain = model.domain();
    let alpha_only = options.max_branches == Some(0);
    let mut per_sample = Vec::with_capacity(case.data().len());
    let mut clean_correct = 0;
    let mut progress = crate::progress::Progress::new(model.name(), case.data().len());
    for batch in case.data().batches(1, &Device::Cpu) {
        let batch = batch?;
        let (index, label) = (batch.range.start, case.data().labels()[batch.range.start]);
        let x = batch.inputs.to_dtype(DType::F32)?;
        let prediction = model.predict(&x)?[0];
        let correct = prediction == label;
        clean_correct += usize::from(correct);
        let x: Vec<f64> = x
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        let property = crate::vnnlib::Property::misclassified(
            &x,
            eps,
            (f64::from(domain.lo()), f64::from(domain.hi())),
            label as usize,
            model_classes(model, &batch.inputs)?,
        )?;
        let (certified, margin) = if correct {
            let outcome = crate::verify::verify(model, &property, options)?;
            let margin = outcome
                .root_bounds
                .iter()
                .copied()
                .fold(f64::INFINITY, f64::min);
            let proved = outcome.verdict == crate::verify::Verdict::Verified;
            (proved, margin.is_finite().then_some(margin as f32))
        } else {
            (false, None)
        };
        per_sample.push(CertifiedSample {
            index,
            label,
            prediction: Some(prediction),
            certified,
            margin,
            radius: None,
            p_a_lower: None,
        });
        progress.advance(1);
    }
    progress.finish();
    let label = if alpha_only {
        "α-CROWN"
    } else {
        "BaB (α,β-CROWN)"
    };
    Ok(CertificationReport::from_samples(
        case,
        label.into(),
        "L∞",
        eps,
        per_sample,
        clean_correct,
        started,
    ))
}

/// The number of classes `model` gives for `x`.
fn model_classes(model: &crate::Model, x: &Tensor) -> Result<usize> {
    Ok(model.logits(&x.to_dtype(DType::F32)?)?.dim(1)?)
}

/// Certifies every sample of `case` with randomized smoothing (CERTIFY), asserting about L2
/// radius `radius`; `curve_radii` adds certified accuracy at other radii to the report. Each
/// sample draws its noise from its own fork of `Rng::seed_from_u64(seed)`, in data order.
pub fn smoothing_case(
    case: &RobustnessCase,
    smoothing: &Smoothing,
    radius: f64,
    curve_radii: &[f64],
    seed: u64,
    device: &Device,
) -> Result<CertificationReport> {
    smoothing.check()?;
    if !(radius.is_finite() && radius >= 0.0) {
        return Err(Error::param("radius", radius, "a finite L2 radius ≥ 0"));
    }
    case.check_shape()?;
    case.check_domain()?;
    let started = std::time::Instant::now();
    let model = case.model();
    let mut rng = Rng::seed_from_u64(seed);
    let mut per_sample = Vec::with_capacity(case.data().len());
    let mut clean_correct = 0;
    let mut abstained = 0;
    let mut progress = crate::progress::Progress::new(case.model().name(), case.data().len());
    for batch in case.data().batches(256, device) {
        let batch = batch?;
        let (start, labels) = (batch.range.start, &case.data().labels()[batch.range]);
        let x = batch.inputs.to_dtype(DType::F32)?;
        let predictions = model.predict(&x)?;
        for (i, (&label, clean)) in labels.iter().zip(predictions).enumerate() {
            clean_correct += usize::from(clean == label);
            let mut sample_rng = rng.fork();
            let cert = smoothing.certify(model, &x.get(i)?, &mut sample_rng)?;
            progress.advance(1);
            abstained += usize::from(cert.prediction.is_none());
            per_sample.push(CertifiedSample {
                index: start + i,
                label,
                prediction: cert.prediction,
                certified: cert.prediction == Some(label) && cert.radius >= radius,
                margin: None,
                radius: Some(cert.radius),
                p_a_lower: Some(cert.p_a_lower),
            });
        }
    }
    let label = format!("smoothing (σ = {})", smoothing.sigma);
    let mut report = CertificationReport::from_samples(
        case,
        label,
        "L2",
        radius,
        per_sample,
        clean_correct,
        started,
    );
    report.smoothing = Some(*smoothing);
    report.seed = seed;
    report.abstained = abstained;
    report.curve = curve_radii
        .iter()
        .map(|&r| CertifiedPoint {
            radius: r,
            certified_accuracy: report
                .per_sample
                .iter()
                .filter(|s| s.prediction == Some(s.label) && s.radius.unwrap_or(0.0) >= r)
                .count() as f64
                / report.samples.max(1) as f64,
        })
        .collect();
    Ok(report)
}

/// Whether `net`'s outputs at `x` lie inside `[lower, upper]` with slack `tol` — the soundness
/// check the tests run on sampled points.
pub fn encloses(
    net: &Sequential,
    x: &Tensor,
    lower: &Tensor,
    upper: &Tensor,
    tol: f32,
) -> Result<bool> {
    let y = net.forward(x)?;
    let below = (lower - tol as f64)?.le(&y)?.min_all()?.to_scalar::<u8>()?;
    let above = y.le(&(upper + tol as f64)?)?.min_all()?.to_scalar::<u8>()?;
    Ok(below == 1 && above == 1)
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

#[cfg(test)]
mod should {
    use super::*;

    #[test]
    fn make_the_input_box_of_the_tensor_operations_bit_for_bit() -> Result<()> {
        // Values inside, at and past the domain's ends, one a NaN (kept as the operations
        // keep it), for a radius whose f32 sum with them rounds.
        let mut values: Vec<f32> = (0..300).map(|i| i as f32 / 256.0 - 0.1).collect();
        values.push(f32::NAN);
        let x = Tensor::from_vec(values.clone(), (values.len(), 1), &Device::Cpu)?;
        for (eps, domain) in [
            (0.1, InputDomain::default()),
            (0.3, InputDomain::new(-0.5, 2.0)?),
        ] {
            let (lower, upper) = input_box(&x, eps, domain)?;
            let tensor_lower = (&x - eps)?.clamp(domain.lo(), domain.hi())?;
            let tensor_upper = (&x + eps)?.clamp(domain.lo(), domain.hi())?;
            let bits = |t: &Tensor| -> Result<Vec<u32>> {
                Ok(t.flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .map(|v| v.to_bits())
                    .collect())
            };
            assert_eq!(bits(&lower)?, bits(&tensor_lower)?);
            assert_eq!(bits(&upper)?, bits(&tensor_upper)?);
            assert_eq!(lower.dims(), x.dims());
        }
        Ok(())
    }
}
