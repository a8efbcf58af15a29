//! Invariance under perturbations: does each prediction survive `cases` random perturbations,
//! and, where it does not, what is the smallest perturbation that flips it?
//!
//! For every sample the model classifies correctly, the run draws `cases` perturbations from a
//! [`PerturbationStrategy`](crate::perturb::PerturbationStrategy), each from its own seed
//! ([`case_seed`]), and evaluates them in batched forward passes. A sample is *invariant* when no
//! case changes its prediction. For the others, the first failing case is shrunk with proptest's
//! simplify/complicate loop toward the identity (all failing samples in lock step, one batched
//! forward pass per step), and the report gives the minimal perturbation found, its size and
//! norms, and the seed that replays it. Seeds stored in a regressions file are replayed first.
//!
//! ```no_run
//! use robust_runtime::prelude::*;
//! use robust_runtime::eval::{evaluate_invariance, InvarianceConfig};
//! use robust_runtime::perturb::{PerturbParams, PerturbationConfig};
//!
//! let model = zoo::MnistCnn::load("tests/fixtures/mnist_cnn.safetensors", &Device::Cpu)?;
//! let case = RobustnessCase::new(model, Dataset::mnist_sample()?.test_split()).named("mnist_cnn");
//! let rotation = PerturbationConfig::new(
//!     "rotation",
//!     PerturbParams { max_degrees: 15.0, ..PerturbParams::default() },
//! )?;
//! let cfg = InvarianceConfig { samples: Some(200), cases: 64, ..InvarianceConfig::default() };
//! let report = evaluate_invariance(&case, &rotation, &cfg)?.check(Some(0.95), None);
//! println!("{report}");
//! # Ok::<(), robust_runtime::Error>(())
//! ```

mod report;
mod spec;

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use proptest::strategy::ValueTree;
use rayon::prelude::*;

pub use report::{Counterexample, InvarianceReport, ReplaySummary};
pub use spec::{InvarianceSpec, CASES_VAR};

use super::RobustnessCase;
use crate::model::{argmax, InputDomain};
use crate::perturb::regressions::Regressions;
use crate::perturb::{
    case_seed, tree_from_seed, ImageShape, Perturbation, PerturbationConfig, PerturbationStrategy,
};
use crate::report::png_grid::{self, Image};
use crate::{Error, Result};

/// Cases drawn per sample before the samples that already failed are dropped.
const ROUND: usize = 32;

/// Counterexamples drawn as PNGs (the first ones, by sample index).
pub const MAX_IMAGES: usize = 16;

/// How an invariance run goes.
#[derive(Debug, Clone)]
pub struct InvarianceConfig {
    /// Evaluate the first `samples` samples of the data (default: all).
    pub samples: Option<usize>,
    /// Perturbations drawn per correctly classified sample (default 256; ≥ 1).
    pub cases: usize,
    /// Perturbed inputs per forward pass (default 512; ≥ 1).
    pub batch_size: usize,
    /// Seed of the run (default 0): the seed of every case derives from it.
    pub seed: u64,
    /// Largest number of shrinking steps per failing sample (default 256).
    pub max_shrink_iters: usize,
    /// Where the forward passes run (default CPU).
    pub device: Device,
    /// Name of the test in reports (default: the model's name).
    pub test_name: Option<String>,
    /// A regressions file whose seeds are replayed before any new case (default none).
    pub regressions: Option<PathBuf>,
    /// A folder for PNGs of the first [`MAX_IMAGES`] counterexamples (default none).
    /// [`InvarianceSpec`] puts them, and `report.json`, in `target/robust/<test path>/`.
    pub output: Option<PathBuf>,
}

impl Default for InvarianceConfig {
    fn default() -> Self {
        InvarianceConfig {
            samples: None,
            cases: 256,
            batch_size: 512,
            seed: 0,
            max_shrink_iters: 256,
            device: Device::Cpu,
            test_name: None,
            regressions: None,
            output: None,
        }
    }
}

/// Runs the perturbations of `perturbation` over the case's data. The report has no checks
/// yet: see [`InvarianceReport::check`].
pub fn evaluate_invariance(
    case: &RobustnessCase,
    perturbation: &PerturbationConfig,
    cfg: &InvarianceConfig,
) -> Result<InvarianceReport> {
    let shape = ImageShape::from_dims(case.data().sample_shape())?;
    let strategy = perturbation.strategy(shape)?;
    evaluate_strategy(
        case,
        &perturbation.name(),
        &perturbation.describe(),
        &strategy,
        cfg,
    )
}

/// [`evaluate_invariance`] with any strategy, e.g. one composed by hand with
/// [`perturb::compose`](crate::perturb::compose); `name` and `description` go into the report.
pub fn evaluate_strategy(
    case: &RobustnessCase,
    name: &str,
    description: &str,
    strategy: &PerturbationStrategy,
    cfg: &InvarianceConfig,
) -> Result<InvarianceReport> {
    crate::check::check_at_least_one("cases", cfg.cases)?;
    crate::check::check_at_least_one("batch_size", cfg.batch_size)?;
    let data = case.evaluated(cfg.samples)?;
    let started = Instant::now();
    let model = case.model();
    let shape = ImageShape::from_dims(data.sample_shape())?;
    let inputs = data.inputs().flatten_all()?.to_vec1::<f32>()?;
    let labels = data.labels();
    let n = data.len();

    let mut clean_pred = Vec::with_capacity(n);
    for batch in data.batches(cfg.batch_size, &cfg.device) {
        let batch = batch?;
        let logits = model.checked_logits(&batch.inputs)?;
        let classes = logits[0].len();
        for (i, row) in logits.iter().enumerate() {
            let index = batch.range.start + i;
            if labels[index] as usize >= classes {
                return Err(Error::LabelOutOfRange {
                    label: labels[index],
                    index,
                    classes,
                });
            }
            clean_pred.push(argmax(row));
        }
    }
    let correct: Vec<bool> = (0..n).map(|i| clean_pred[i] == labels[i]).collect();

    let mut batches = Batches {
        inputs: &inputs,
        shape,
        sample_dims: data.sample_shape().to_vec(),
        domain: model.domain(),
        cfg,
        model,
        forwarded: 0,
    };
    let mut found: Vec<Option<Found>> = vec![None; n];

    // Stored failures first, so that a known counterexample is found whatever the seed.
    let regressions = cfg.regressions.clone().map(Regressions::load).transpose()?;
    let mut replay = ReplaySummary::default();
    if let Some(file) = &regressions {
        replay.path = Some(file.path().to_path_buf());
        let jobs: Vec<(usize, u64, Perturbation)> = file
            .entries()
            .iter()
            .filter(|e| e.sample < n && correct[e.sample])
            .map(|e| {
                Ok((
                    e.sample,
                    e.seed,
                    tree_from_seed(strategy, e.seed)?.current(),
                ))
            })
            .collect::<Result<_>>()?;
        replay.replayed = jobs.len();
        for chunk in jobs.chunks(cfg.batch_size) {
            let preds = batches.predict(chunk.iter().map(|(s, _, p)| (*s, p)))?;
            for ((sample, seed, _), pred) in chunk.iter().zip(preds) {
                if pred != labels[*sample] && found[*sample].is_none() {
                    replay.still_failing += 1;
                    found[*sample] = Some(Found {
                        seed: *seed,
                        case: None,
                        pred,
                    });
                }
            }
        }
    }

    // New cases, a round at a time: a sample leaves as soon as one of its cases fails, and the
    // first failing case is the one kept, so the outcome does not depend on the batching.
    for round in (0..cfg.cases).step_by(ROUND) {
        let cases = round..(round + ROUND).min(cfg.cases);
        let jobs: Vec<(usize, usize)> = (0..n)
            .filter(|&s| correct[s] && found[s].is_none())
            .flat_map(|s| cases.clone().map(move |c| (s, c)))
            .collect();
        if jobs.is_empty() {
            break;
        }
        for chunk in jobs.chunks(cfg.batch_size) {
            let drawn: Vec<(usize, u64, Perturbation)> = chunk
                .par_iter()
                .map(|&(s, c)| {
                    let seed = case_seed(cfg.seed, s, c);
                    Ok((s, seed, tree_from_seed(strategy, seed)?.current()))
                })
                .collect::<Result<_>>()?;
            let preds = batches.predict(drawn.iter().map(|(s, _, p)| (*s, p)))?;
            for ((&(sample, case), (_, seed, _)), pred) in chunk.iter().zip(&drawn).zip(preds) {
                if pred != labels[sample] && found[sample].is_none() {
                    found[sample] = Some(Found {
                        seed: *seed,
                        case: Some(case),
                        pred,
                    });
                }
            }
        }
    }

    let mut counterexamples = shrink_all(&found, labels, strategy, &mut batches)?;
    if let Some(dir) = &cfg.output {
        for c in counterexamples.iter_mut().take(MAX_IMAGES) {
            let path = dir.join(format!("sample_{}.png", c.sample));
            let x = &inputs[c.sample * shape.len()..(c.sample + 1) * shape.len()];
            draw(&path, x, &c.perturbation, shape, model.domain())?;
            c.image = Some(path);
        }
    }

    let clean_correct = correct.iter().filter(|&&c| c).count();
    let invariant = (0..n).filter(|&i| correct[i] && found[i].is_none()).count();
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Ok(InvarianceReport {
        test: cfg
            .test_name
            .clone()
            .unwrap_or_else(|| model.name().to_string()),
        model: model.name().to_string(),
        perturbation: name.to_string(),
        description: description.to_string(),
        seed: cfg.seed,
        cases: cfg.cases,
        device: crate::device::name(&cfg.device),
        precision: crate::device::Precision::F32,
        samples: n,
        clean_correct,
        invariant,
        clean_accuracy: ratio(clean_correct, n),
        invariance: ratio(invariant, clean_correct),
        perturbed_accuracy: ratio(invariant, n),
        forwarded: batches.forwarded,
        replay,
        output: cfg.output.clone(),
        seconds: started.elapsed().as_secs_f64(),
        fingerprint: None,
        confidence: None,
        checks: Vec::new(),
        counterexamples,
    })
}

/// The first failure found for a sample.
#[derive(Debug, Clone, Copy)]
struct Found {
    seed: u64,
    /// `None` when it came from the regressions file.
    case: Option<usize>,
    pred: u32,
}

/// Perturbs samples and runs them through the model in batches, counting what it forwards.
struct Batches<'a> {
    inputs: &'a [f32],
    shape: ImageShape,
    sample_dims: Vec<usize>,
    domain: InputDomain,
    cfg: &'a InvarianceConfig,
    model: &'a crate::Model,
    forwarded: usize,
}

impl Batches<'_> {
    /// The prediction on each `(sample, perturbation)`, in order (one forward pass; the caller
    /// keeps batches at most `batch_size` long).
    fn predict<'p>(
        &mut self,
        jobs: impl Iterator<Item = (usize, &'p Perturbation)>,
    ) -> Result<Vec<u32>> {
        let jobs: Vec<(usize, &Perturbation)> = jobs.collect();
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let d = self.shape.len();
        let (inputs, shape, domain) = (self.inputs, self.shape, self.domain);
        let perturbed: Vec<Vec<f32>> = jobs
            .par_iter()
            .map(|&(s, p)| p.apply(&inputs[s * d..(s + 1) * d], shape, domain))
            .collect::<Result<_>>()?;
        let mut dims = vec![jobs.len()];
        dims.extend_from_slice(&self.sample_dims);
        let x = Tensor::from_vec(perturbed.concat(), dims, &self.cfg.device)?;
        self.forwarded += jobs.len();
        self.model.predict(&x)
    }
}

/// A failing sample being shrunk.
struct Shrinking {
    sample: usize,
    found: Found,
    tree: Box<dyn ValueTree<Value = Perturbation>>,
    last: Perturbation,
    pred: u32,
    active: bool,
    steps: usize,
}

/// Shrinks every failure in lock step, as proptest's `TestRunner` does one at a time: after a
/// failing value `simplify`, after a passing one `complicate`, keeping the last failing value.
fn shrink_all(
    found: &[Option<Found>],
    labels: &[u32],
    strategy: &PerturbationStrategy,
    batches: &mut Batches<'_>,
) -> Result<Vec<Counterexample>> {
    let mut all: Vec<Shrinking> = found
        .iter()
        .enumerate()
        .filter_map(|(sample, f)| f.map(|f| (sample, f)))
        .map(|(sample, found)| {
            let mut tree = tree_from_seed(strategy, found.seed)?;
            let last = tree.current();
            let active = batches.cfg.max_shrink_iters > 0 && tree.simplify();
            Ok(Shrinking {
                sample,
                found,
                tree,
                last,
                pred: found.pred,
                active,
                steps: 0,
            })
        })
        .collect::<Result<_>>()?;
    loop {
        let mut step: Vec<&mut Shrinking> = all.iter_mut().filter(|s| s.active).collect();
        if step.is_empty() {
            break;
        }
        for chunk in step.chunks_mut(batches.cfg.batch_size) {
            let current: Vec<Perturbation> = chunk.iter().map(|s| s.tree.current()).collect();
            let preds = batches.predict(chunk.iter().map(|s| s.sample).zip(&current))?;
            for ((s, value), pred) in chunk.iter_mut().zip(current).zip(preds) {
                s.steps += 1;
                s.active = if pred != labels[s.sample] {
                    s.last = value;
                    s.pred = pred;
                    s.tree.simplify()
                } else {
                    s.tree.complicate()
                };
                if s.steps >= batches.cfg.max_shrink_iters {
                    s.active = false;
                }
            }
        }
    }
    let (shape, domain) = (batches.shape, batches.domain);
    all.into_iter()
        .map(|s| {
            let d = shape.len();
            let x = &batches.inputs[s.sample * d..(s.sample + 1) * d];
            let perturbed = s.last.apply(x, shape, domain)?;
            let (mut linf, mut l2) = (0.0f32, 0.0f64);
            for (a, b) in perturbed.iter().zip(x) {
                linf = linf.max((a - b).abs());
                l2 += ((a - b) as f64).powi(2);
            }
            Ok(Counterexample {
                sample: s.sample,
                label: labels[s.sample],
                pred: s.pred,
                case: s.found.case,
                seed: s.found.seed,
                size: s.last.size(),
                perturbation: s.last,
                linf,
                l2: l2.sqrt() as f32,
                shrink_steps: s.steps,
                image: None,
            })
        })
        .collect()
}

/// Original | perturbed | difference (`|perturbed − original|`, scaled so that the largest
/// change is white), each pixel drawn 4 × 4.
fn draw(
    path: &std::path::Path,
    x: &[f32],
    perturbation: &Perturbation,
    shape: ImageShape,
    domain: InputDomain,
) -> Result<()> {
    let perturbed = perturbation.apply(x, shape, domain)?;
    let diff: Vec<f32> = perturbed
        .iter()
        .zip(x)
        .map(|(a, b)| (a - b).abs())
        .collect();
    let largest = diff.iter().cloned().fold(0.0f32, f32::max);
    let range = (domain.lo(), domain.hi());
    let image = |v| Image::new(v, shape.channels, shape.height, shape.width, range);
    let row = [
        image(x)?,
        image(&perturbed)?,
        Image::new(
            &diff,
            shape.channels,
            shape.height,
            shape.width,
            (0.0, if largest > 0.0 { largest } else { 1.0 }),
        )?,
    ];
    png_grid::write_grid(path, &[&row], 4)
}
