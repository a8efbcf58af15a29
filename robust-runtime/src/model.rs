//! The classifier contract.
//!
//! Any candle [`Module`] that maps a batch of inputs `N × …` to logits `N × classes` can be
//! attacked. Two things sit around it:
//!
//! - [`InputDomain`]: the box that valid inputs live in (default `[0, 1]`, pixels). Attacks
//!   clamp every iterate into it.
//! - [`Normalize`]: per-channel `(x − mean) / std`, applied *inside* the model, so that ε is
//!   always measured in input units (pixels in `[0, 1]`), never in normalised units. Attacking
//!   the normalised tensor instead is the most common mistake with torchattacks-style tools.
//!
//! ```
//! use robust_runtime::prelude::*;
//! use candle_core::{Device, Tensor};
//!
//! // A "model" that returns its two input features as logits.
//! let model = Model::new(|x: &Tensor| Ok(x.clone()))
//!     .with_normalize(Normalize::new(vec![0.5], vec![0.25])?)
//!     .named("identity");
//! let x = Tensor::new(&[[1.0f32, 0.0]], &Device::Cpu)?;
//! assert_eq!(model.logits(&x)?.to_vec2::<f32>()?, vec![vec![2.0, -2.0]]);
//! # Ok::<(), robust_runtime::Error>(())
//! ```

use std::any::Any;
use std::sync::{Arc, OnceLock};

use candle_core::{DType, Module, Tensor};

use crate::nn::{Engine, Graph, Sequential, Source};
use crate::zoo;

pub use crate::domain::{InputDomain, Normalize};

use crate::{Error, Result};

/// The name of a model nobody named; a generated test names it after its function instead.
pub const DEFAULT_NAME: &str = "model";

/// A classifier under test: a candle module returning logits, its input domain and optional
/// normalisation.
pub struct Model {
    inner: Box<dyn Module>,
    /// The same network as layers, when the module is a [`Sequential`]: what certifiers bound.
    network: Option<Sequential>,
    /// The BPDA/EOT twin, for a defended model whose preprocessing blocks gradients or is
    /// random: what evaluations attack it through besides the plain attack.
    adaptive: Option<Twin>,
    /// Gradient draws attacks average over (EOT): > 1 for the twin of a randomized defence.
    eot: usize,
    normalize: Option<Normalize>,
    domain: InputDomain,
    name: String,
    /// What the engine compiles, when the module is a network it knows (a [`Sequential`], the
    /// zoo's MLP, CNN and ResNet-18).
    layers: Option<Source>,
    /// The compiled network, made on first use (with the normalisation then set).
    engine: OnceLock<Option<Engine>>,
    /// Whether passes may run on the engine (see [`Model::without_engine`]).
    use_engine: bool,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.name)
            .field("domain", &self.domain)
            .field("normalize", &self.normalize)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Wraps any module that returns logits. Domain `[0, 1]`, no normalisation.
    /// A [`Sequential`] stays visible to the certifiers, and so does a [`Graph`] that is a
    /// chain; any other module can be attacked but not certified. A `Sequential`, a `Graph`
    /// and the zoo's networks run on the engine on the CPU.
    pub fn new<M: Module + 'static>(module: M) -> Self {
        let any = &module as &dyn Any;
        let graph = any.downcast_ref::<Graph>();
        // A graph that is a chain is certifiable as the `Sequential` it is.
        let network =
            (any.downcast_ref::<Sequential>().cloned()).or_else(|| graph?.to_sequential());
        let layers = network
            .clone()
            .or_else(|| any.downcast_ref::<zoo::MnistMlp>()?.network())
            .or_else(|| any.downcast_ref::<zoo::MnistCnn>()?.network())
            .map(Source::Chain)
            .or_else(|| Some(graph?.source()))
            .or_else(|| any.downcast_ref::<zoo::ResNet18>()?.graph());
        Model {
            inner: Box::new(module),
            network,
            adaptive: None,
            eot: 1,
            normalize: None,
            domain: InputDomain::default(),
            name: DEFAULT_NAME.into(),
            layers,
            engine: OnceLock::new(),
            use_engine: true,
        }
    }

    /// Normalises inputs inside the model, so ε stays in input units.
    pub fn with_normalize(mut self, normalize: Normalize) -> Self {
        self.normalize = Some(normalize);
        self.engine = OnceLock::new();
        self
    }

    /// Runs every pass through candle's own operations and autograd instead of the compiled
    /// engine ([`crate::nn`]'s `engine`), which a [`Sequential`] or zoo network on the CPU
    /// otherwise uses. The results agree up to float rounding; this is the slow, obvious path
    /// the engine is tested against.
    pub fn without_engine(mut self) -> Self {
        self.use_engine = false;
        self
    }

    /// The compiled network, when it can run the batch `x` (a known network, CPU, f32, the
    /// network's input shape).
    pub(crate) fn engine_for(&self, x: &Tensor) -> Option<&Engine> {
        if !self.use_engine {
            return None;
        }
        self.compiled().filter(|e| e.accepts(x))
    }

    /// The network compiled for the engine (its normalisation first), on first use; `None` for
    /// an opaque module or weights the engine cannot hold.
    fn compiled(&self) -> Option<&Engine> {
        (self.engine)
            .get_or_init(|| self.layers.as_ref()?.compile(self.normalize.as_ref()))
            .as_ref()
    }

    /// The per-sample input shape, when the model is a network whose layers robust knows (a
    /// [`Sequential`], a zoo model); `None` for an opaque candle `Module`.
    pub fn input_shape(&self) -> Option<&[usize]> {
        match self.layers.as_ref()? {
            Source::Chain(net) => Some(net.input_shape()),
            Source::Graph(input, _) => Some(input),
        }
    }

    /// Sets the input domain (default `[0, 1]`).
    pub fn with_domain(mut self, domain: InputDomain) -> Self {
        self.domain = domain;
        self
    }

    /// Names the model in reports.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The model's name in reports.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The input domain.
    pub fn domain(&self) -> InputDomain {
        self.domain
    }

    /// The model to attack adaptively: for a model behind preprocessing that blocks gradients
    /// (a [`Preprocessed`] median filter or bit-depth reduction) or is random, its BPDA/EOT
    /// twin, with the same forward pass, normalisation, domain and name (`<name> (BPDA)`);
    /// `None` otherwise.
    pub fn adaptive(&self) -> Option<Model> {
        self.adaptive_with_draws(None)
    }

    /// [`Model::adaptive`], its gradients averaged over `draws` instead of the twin's own when
    /// the twin is randomized (AutoAttack's `rand` version takes 20).
    pub(crate) fn adaptive_with_draws(&self, draws: Option<usize>) -> Option<Model> {
        let twin = self.adaptive.clone()?;
        let mut model = Model::new(Shared(twin.module))
            .with_domain(self.domain)
            .named(format!("{} ({})", self.name, twin.method));
        model.normalize = self.normalize.clone();
        model.eot = match draws {
            Some(d) if twin.eot > 1 => d,
            _ => twin.eot,
        };
        Some(model)
    }

    /// How [`Model::adaptive`]'s gradients are obtained (`BPDA (straight-through)`, `EOT`, …).
    pub fn adaptive_method(&self) -> Option<&'static str> {
        self.adaptive.as_ref().map(|twin| twin.method)
    }

    /// A defended model: `self`, attacked through `twin` besides plainly, its gradients averaged
    /// over `eot` draws. How `defense` builds its models (`Model::from(Preprocessed)`).
    pub(crate) fn defended(mut self, twin: Option<Twin>, eot: usize) -> Self {
        self.adaptive = twin;
        self.eot = eot;
        self
    }

    /// Gradient draws attacks average over: 1, or [`crate::defense::EOT_DRAWS`] for the
    /// adaptive twin of a randomized defence (Expectation over Transformation).
    pub fn eot_draws(&self) -> usize {
        self.eot
    }

    /// The network as the certifiers see it: the [`Sequential`] the model was built from, with
    /// the model's normalisation as its first layer. An error for opaque modules.
    pub fn network(&self) -> Result<Sequential> {
        let Some(net) = &self.network else {
            let reason = if self.is_graph() {
                "it is a graph with residual sums: IBP and CROWN bound it on the CPU \
                 (`certify::bound_case`, `certify::model_margin_lower_bounds`, \
                 `certify::model_logit_bounds`); the functions that take an \
                 nn::Sequential need a chain of layers"
            } else {
                "it is an opaque candle Module; certifiers need to see the layers: build it as a \
                 robust_runtime::nn::Sequential or nn::Graph"
            };
            return Err(Error::NotCertifiable {
                model: self.name.clone(),
                reason: reason.into(),
            });
        };
        match &self.normalize {
            Some(normalize) => net.with_normalize_first(normalize, &net.device()),
            None => Ok(net.clone()),
        }
    }

    /// Whether the model is a graph of known layers that is not a chain (a residual network).
    pub(crate) fn is_graph(&self) -> bool {
        self.network.is_none() && matches!(self.layers, Some(Source::Graph(..)))
    }

    /// The engine of a graph model, for inputs like `x`: the certifiers bound graphs on it.
    pub(crate) fn graph_engine(&self, x: &Tensor) -> Result<&Engine> {
        (self.compiled().filter(|e| e.accepts(x))).ok_or_else(|| {
            self.not_certifiable(
                "bounds through a graph with residual sums run on the engine: plain f32 weights \
                 and inputs on the CPU",
            )
        })
    }

    /// The network as dense affine layers with ReLUs between, in f64, for complete
    /// verification ([`crate::verify`]).
    pub(crate) fn affine_chain(&self) -> Result<Vec<crate::nn::engine::AffineMap>> {
        let engine = self.compiled().ok_or_else(|| {
            self.not_certifiable(
                "verification needs a network whose layers robust knows, on plain f32 weights",
            )
        })?;
        engine.affine_chain().map_err(|what| {
            self.not_certifiable(&format!(
                "α-CROWN and branch and bound run on chains of affine layers and ReLUs; this \
                 network has {what}"
            ))
        })
    }

    pub(crate) fn not_certifiable(&self, reason: &str) -> Error {
        Error::NotCertifiable {
            model: self.name.clone(),
            reason: reason.into(),
        }
    }

    /// Logits for a batch, checked to be `N × classes`. This is the differentiable forward pass
    /// the attacks use; it does not look at the values (see [`Model::checked_logits`]).
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let batch = x.dim(0).map_err(|source| Error::ModelInput {
            input: x.dims().to_vec(),
            source,
        })?;
        if !x.track_op() {
            if let Some(engine) = self.engine_for(x) {
                return Ok(engine.forward(x)?);
            }
        }
        let input = match &self.normalize {
            Some(n) => n.apply(x)?,
            None => x.clone(),
        };
        let logits = self.inner.forward(&input).map_err(|source| {
            let detail = source.to_string();
            match detail.lines().next() {
                Some(first) if first.contains("device mismatch") => Error::ModelDevice {
                    device: crate::device::name(x.device()),
                    detail: first.to_string(),
                },
                _ => Error::ModelInput {
                    input: x.dims().to_vec(),
                    source,
                },
            }
        })?;
        match logits.dims() {
            [n, c] if *n == batch && *c > 0 => Ok(logits),
            found => Err(Error::LogitsShape {
                found: found.to_vec(),
                batch,
            }),
        }
    }

    /// Logits for a batch, also checked to be finite. Returned as host `f32` rows.
    pub fn checked_logits(&self, x: &Tensor) -> Result<Vec<Vec<f32>>> {
        let logits = self.logits(x)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let count = logits.iter().flatten().filter(|v| !v.is_finite()).count();
        if count > 0 {
            return Err(Error::NonFiniteLogits {
                count,
                batch: logits.len(),
            });
        }
        Ok(logits)
    }

    /// Predicted classes (arg-max of the logits; the lowest index wins ties) for a batch.
    pub fn predict(&self, x: &Tensor) -> Result<Vec<u32>> {
        Ok(self
            .checked_logits(x)?
            .iter()
            .map(|row| argmax(row))
            .collect())
    }
}

/// The adaptive twin of a defended model (see [`Model::adaptive`]): the module to attack, how
/// its gradients are obtained, and the gradient draws attacks average over.
#[derive(Clone)]
pub(crate) struct Twin {
    pub module: Arc<dyn Module>,
    pub method: &'static str,
    pub eot: usize,
}

/// A shared module, so that every [`Model::adaptive`] wraps the same twin.
struct Shared(Arc<dyn Module>);

impl Module for Shared {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.0.forward(xs)
    }
}

impl Module for Model {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.logits(xs).map_err(candle_core::Error::wrap)
    }
}

/// Index of the largest value; the first one on ties (as `torch.argmax` on CPU).
pub(crate) fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod should {
    use super::*;
    use candle_core::Device;

    #[test]
    fn reject_an_empty_domain() {
        assert!(InputDomain::new(1.0, 0.0).is_err());
        assert!(InputDomain::new(0.0, f32::NAN).is_err());
    }

    #[test]
    fn reject_zero_standard_deviation() {
        let err = Normalize::new(vec![0.1], vec![0.0]).unwrap_err();
        assert!(
            err.to_string().contains("expected finite values > 0"),
            "{err}"
        );
    }

    #[test]
    fn normalize_per_channel() -> Result<()> {
        let n = Normalize::new(vec![0.0, 1.0], vec![1.0, 2.0])?;
        let x = Tensor::ones((1, 2, 1, 1), DType::F32, &Device::Cpu)?;
        let y = n.apply(&x)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(y, vec![1.0, 0.0]);
        Ok(())
    }

    #[test]
    fn reject_logits_that_are_not_a_matrix() {
        let model = Model::new(|x: &Tensor| x.flatten_all());
        let x = Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap();
        let err = model.logits(&x).unwrap_err();
        assert!(
            matches!(err, Error::LogitsShape { ref found, batch: 3 } if found == &[6]),
            "{err}"
        );
    }

    #[test]
    fn reject_nan_logits() {
        let model = Model::new(|x: &Tensor| x.log());
        let x = Tensor::new(&[[-1.0f32, 1.0]], &Device::Cpu).unwrap();
        let err = model.predict(&x).unwrap_err();
        assert!(
            matches!(err, Error::NonFiniteLogits { count: 1, batch: 1 }),
            "{err}"
        );
    }

    #[test]
    fn break_ties_towards_the_first_class() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
    }
}
