//! Complete verification of ReLU networks: α-CROWN, then branch and bound with β-CROWN's
//! split constraints, on properties such as VNN-LIB describes ([`crate::vnnlib`]).
//!
//! CROWN ([`crate::certify`]) proves what one linear relaxation proves and calls the rest
//! unknown. [`verify`] goes on until the property is decided:
//!
//! 1. **PGD** looks for a counterexample first (random starts in the box, signed gradient
//!    steps on each disjunct of the violation).
//! 2. **α-CROWN** (Xu et al. 2021, "Fast and Complete"): the lower slopes of unstable ReLUs
//!    become variables, raised by projected gradient ascent (Adam) on the bound, per objective
//!    and per neuron, for every layer's bounds and the property's; each keeps its best bound,
//!    so it is never looser than CROWN.
//! 3. **Stabilisation**, when α-CROWN leaves the property open: most neurons that the root's
//!    layer bounds call unstable are stable in fact (PGD never reaches one of their sides),
//!    and each such one left unstable loosens every later layer. Branch and bound on the layers
//!    before it (goal `z_j > 0` or `z_j < 0`, the same β-CROWN branches as below) proves it
//!    stable, layer by layer, each layer's later bounds then recomputed by α-CROWN; then
//!    α-CROWN again on the property. A neuron its search leaves unproved still has that side's
//!    bound raised to the least bound over the search's open leaves. The rounds go on, each
//!    neuron's branch cap four times the last round's, while the share of the budget lasts
//!    and a round tightens something. This stands in for the MIP solver α,β-CROWN refines its
//!    layer bounds with (`Options::stabilise` is its share of the budget,
//!    `Options::stabilise_branches` the first round's cap).
//! 4. **Branch and bound** on what is left: split an unstable ReLU (chosen by BaBSR's score)
//!    into `z ≥ 0` and `z ≤ 0`, bound both branches with β-CROWN (Wang et al. 2021, the split
//!    constraints as Lagrange multipliers optimised with the slopes, warm-started from the
//!    parent; a row proved leaves the products), on layer bounds each branch inherits from its
//!    parent (with [`Options::refine`], tightened after its newest split by CROWN), batched on
//!    one matrix product per layer, until every branch is proved, a branch's tightest point
//!    violates the property on the network, or the budget runs out.
//!
//! The verdict is [`Verdict::Verified`] only when every branch was bounded above zero;
//! [`Verdict::Falsified`] carries an input that violates the property on the f64 network and
//! on the model's own f32 forward pass.
//!
//! The bounds run in f64 on the network lowered to dense affine layers (convolutions,
//! average pooling, batch norm and normalisation included); max-pooling, residual sums and
//! concatenations are a typed [`Error::NotCertifiable`]. The optimiser's steps run in f32:
//! they only choose slopes and multipliers, and the bound at the choice is computed in f64.

mod bab;
pub(crate) mod bounds;

use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};

use crate::vnnlib::Property;
use crate::{Error, Model, Result};

/// What [`verify`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// No input in the box violates the property.
    Verified,
    /// This input, in the box, violates it (checked on the model's forward pass).
    Falsified(Vec<f64>),
    /// Neither within the budget.
    Unknown,
}

impl Verdict {
    /// VNN-COMP's word for the verdict: `unsat` (verified: the violation is unsatisfiable),
    /// `sat` (a counterexample) or `unknown`.
    pub fn vnncomp(&self) -> &'static str {
        match self {
            Verdict::Verified => "unsat",
            Verdict::Falsified(_) => "sat",
            Verdict::Unknown => "unknown",
        }
    }
}

/// The budget and the optimiser's settings of [`verify`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Wall time for the whole property.
    pub timeout: Duration,
    /// Stop after this many branches, stabilisation's included (`None`: the time budget
    /// alone; `Some(0)`: α-CROWN alone).
    pub max_branches: Option<usize>,
    /// Adam steps of α-CROWN on each layer's bounds and on the property at the root.
    pub alpha_iterations: usize,
    /// Adam steps of β-CROWN on each batch of branches.
    pub bab_iterations: usize,
    /// Learning rates of the slopes and of the multipliers.
    pub lr_alpha: f64,
    /// See `lr_alpha`.
    pub lr_beta: f64,
    /// Branches split per step (each gives two).
    pub batch: usize,
    /// Candidates filtered smart branching bounds per split (1: BaBSR's choice alone).
    pub candidates: usize,
    /// Whether each branch's layers after its newest split get CROWN bounds of their own, on
    /// top of the bounds it inherits from its parent: tighter, and three times the cost of a
    /// branch. Off by default: on layer bounds stabilisation tightened, the cheaper branches
    /// close searches sooner (BENCHMARKS.md, "branches without refined layer bounds").
    pub refine: bool,
    /// The share of the budget spent at the root proving unstable neurons stable by branch
    /// and bound on the layers before them (0: none), when α-CROWN leaves the property open.
    pub stabilise: f64,
    /// Branches per neuron in that search.
    pub stabilise_branches: usize,
    /// PGD's random starts per disjunct and steps per start.
    pub restarts: usize,
    /// See `restarts`.
    pub steps: usize,
    /// The seed of PGD's starts.
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout: Duration::from_secs(120),
            max_branches: None,
            alpha_iterations: 100,
            bab_iterations: 30,
            lr_alpha: 0.1,
            lr_beta: 0.05,
            batch: 256,
            refine: false,
            candidates: 1,
            stabilise: 0.5,
            stabilise_branches: 200,
            restarts: 10,
            steps: 100,
            seed: 0,
        }
    }
}

/// What [`verify`] found, and what it took.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The verdict.
    pub verdict: Verdict,
    /// Branches bounded in branch and bound (0 when decided before it).
    pub branches: usize,
    /// Each disjunct's α-CROWN lower bound at the root, on the root's layer bounds as
    /// stabilisation left them (empty when PGD decided first): above 0 proves that disjunct
    /// impossible.
    pub root_bounds: Vec<f64>,
    /// What decided it: `"attack"`, `"alpha-crown"` or `"bab"`.
    pub stage: &'static str,
    /// Wall time.
    pub time: Duration,
}

/// Decides whether some input in `property`'s box makes `model`'s outputs satisfy one of its
/// violation's disjuncts (see the module docs).
///
/// # Errors
/// [`Error::NotCertifiable`] for a model that is not a chain of affine layers and ReLUs the
/// engine holds; [`Error::InvalidParameter`] when the property's sizes differ from the model's.
pub fn verify(model: &Model, property: &Property, options: &Options) -> Result<Outcome> {
    let started = Instant::now();
    let net = bounds::Net::new(model.affine_chain()?);
    if net.inputs() != property.lower.len() || net.outputs() != property.outputs {
        return Err(Error::param(
            "property",
            format!(
                "{} inputs and {} outputs",
                property.lower.len(),
                property.outputs
            ),
            format!(
                "the model's {} inputs and {} outputs",
                net.inputs(),
                net.outputs()
            ),
        ));
    }
    let search = bab::search(&net, property, options, started);
    let verdict = match search.verdict {
        Verdict::Falsified(x) => {
            checked_f32(model, property, &x)?.map_or(Verdict::Unknown, Verdict::Falsified)
        }
        v => v,
    };
    Ok(Outcome {
        verdict,
        branches: search.branches,
        root_bounds: search.root_bounds,
        stage: search.stage,
        time: started.elapsed(),
    })
}

/// The model's outputs at `x` (one sample, its values in the model's input order), in f32 as
/// the model computes them.
///
/// # Errors
/// When `x` does not have the model's input size, or the outputs are not finite.
pub fn outputs(model: &Model, x: &[f64]) -> Result<Vec<f64>> {
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let mut shape = vec![1];
    shape.extend(model.input_shape().unwrap_or(&[x.len()]));
    let t = Tensor::from_vec(x32, shape, &Device::Cpu)?;
    let y = model.checked_logits(&t)?;
    Ok(y[0].iter().map(|&v| f64::from(v)).collect())
}

/// `x` as f32 values (the nearest, or the next one inside the box where the nearest is outside),
/// when those lie in `property`'s box and violate it on the model's own forward pass.
fn checked_f32(model: &Model, property: &Property, x: &[f64]) -> Result<Option<Vec<f64>>> {
    // The nearest f32, stepped back inside the box where rounding left it.
    let back: Vec<f64> = (x.iter().zip(property.lower.iter().zip(&property.upper)))
        .map(|(&v, (&lo, &hi))| {
            let mut r = v as f32;
            if f64::from(r) < lo {
                r = r.next_up();
            }
            if f64::from(r) > hi {
                r = r.next_down();
            }
            f64::from(r)
        })
        .collect();
    let holds = property.contains(&back) && property.violated(&outputs(model, &back)?);
    Ok(holds.then_some(back))
}
