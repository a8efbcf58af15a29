//! The one error type of the crate.
//!
//! Variants are grouped by concern; each message says what was found and what was expected.
//! An error means a test *could not run*. What a run finds is never an error: an attack that
//! fails to break a sample is a result recorded in the
//! [`RobustnessReport`](crate::eval::RobustnessReport), and a test that misses its threshold
//! returns its report with the failed check in it; [`crate::harness::conclude`] (the verdict)
//! turns that into a failing test.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when loading data and models, configuring attacks or running them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- files and formats -------------------------------------------------------------
    /// A file could not be read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file's contents do not follow its format.
    #[error("malformed {format} file {path}: {reason}")]
    Format {
        /// Which format was expected (`IDX`, `npy`, `safetensors`, ...).
        format: &'static str,
        /// The file, or `<memory>` for embedded bytes.
        path: PathBuf,
        /// What was found and what was expected.
        reason: String,
    },
    /// A node of an ONNX file that the importer cannot read ([`crate::onnx`]).
    #[error("{path}: node `{node}` ({op}): {reason}")]
    OnnxNode {
        /// The file.
        path: PathBuf,
        /// The node's name in the file.
        node: String,
        /// Its operator (`Conv`, `Gemm`, …).
        op: String,
        /// What was found and what is supported.
        reason: String,
    },
    /// A tensor the caller asked for is missing from a file.
    #[error("{path} has no tensor named `{name}` (found: {found})")]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The missing name.
        name: String,
        /// The names that are there.
        found: String,
    },

    // ---- data ----------------------------------------------------------------------------
    /// A data set that cannot be used as given.
    #[error("invalid dataset: {0}")]
    Data(String),

    // ---- model -----------------------------------------------------------------------------
    /// The data's samples do not have the shape of the model's input.
    #[error(
        "the data's samples have shape {data:?} ({} values) but model `{model}` takes inputs of \
         shape {expected:?} ({} values); expected data of the model's input shape",
        data.iter().product::<usize>(),
        expected.iter().product::<usize>()
    )]
    DataShape {
        /// The model's name.
        model: String,
        /// One sample's shape in the data set.
        data: Vec<usize>,
        /// One input's shape, as the model's layers declare it.
        expected: Vec<usize>,
    },
    /// The model's output is not a `N × classes` matrix of logits for `N` inputs.
    #[error("model output has shape {found:?}, expected [{batch}, classes] logits for a batch of {batch} inputs")]
    LogitsShape {
        /// The shape the model returned.
        found: Vec<usize>,
        /// The batch size that went in.
        batch: usize,
    },
    /// The model produced NaN or infinite logits.
    #[error("model produced {count} non-finite logits (NaN or ±inf) on a batch of {batch} inputs; expected finite logits (is the model returning log(0), or loaded from a corrupt file?)")]
    NonFiniteLogits {
        /// How many entries were not finite.
        count: usize,
        /// The batch size.
        batch: usize,
    },
    /// Labels refer to classes that the model does not have.
    #[error("label {label} at index {index} is out of range for a model with {classes} classes (expected 0..{classes})")]
    LabelOutOfRange {
        /// The bad label.
        label: u32,
        /// Where it is.
        index: usize,
        /// How many classes the model outputs.
        classes: usize,
    },
    /// The model could not be applied to the data (candle rejected the input shape).
    #[error("model rejected inputs of shape {input:?}: {source}")]
    ModelInput {
        /// The shape of the batch that went in.
        input: Vec<usize>,
        /// What candle said.
        source: candle_core::Error,
    },
    /// The model's weights are on another device than the inputs the test moved to its device.
    #[error(
        "the model and its inputs are on different devices ({detail}); the test runs on \
         {device}: build the model on `robust_runtime::device::current()`, the device the test \
         selected, instead of a fixed one"
    )]
    ModelDevice {
        /// The device the inputs are on (the test's).
        device: String,
        /// What candle said.
        detail: String,
    },
    /// Weights in a file do not fit the architecture that loads them.
    #[error("cannot load {model} weights from {path}: {source}")]
    Weights {
        /// The architecture.
        model: &'static str,
        /// The file.
        path: PathBuf,
        /// What candle said.
        source: candle_core::Error,
    },
    /// A weight file lacks a tensor the architecture reads.
    #[error(
        "cannot load {model} weights from {path}: the file has no tensor `{name}`; it has {has} \
         (expected the names PyTorch gives the architecture's layers)"
    )]
    MissingWeight {
        /// The architecture.
        model: &'static str,
        /// The file.
        path: PathBuf,
        /// The tensor the architecture asked for.
        name: String,
        /// The tensors the file has, with their shapes.
        has: String,
    },
    /// A weight file holds a NaN or an infinite value.
    #[error(
        "{path}: weight tensor `{tensor}` holds {value} at flat index {index}; expected finite \
         weights (a corrupt file, or a training run that diverged?)"
    )]
    NonFiniteWeight {
        /// The file.
        path: PathBuf,
        /// The tensor's name in the file.
        tensor: String,
        /// The value found (NaN, inf or -inf).
        value: f32,
        /// Its position in the tensor, in row-major order.
        index: usize,
    },
    /// The data lies outside the model's input domain: attacks clamp every iterate into the
    /// domain, so the perturbations they report would be meaningless.
    #[error(
        "the inputs range over [{found_lo}, {found_hi}] but the model's input domain is [{lo}, \
         {hi}]; expected every input inside it (scale the data, set the domain with \
         `with_domain`, or call `allow_inputs_outside_domain()` if this is intended)"
    )]
    InputsOutsideDomain {
        /// The smallest input value.
        found_lo: f32,
        /// The largest input value.
        found_hi: f32,
        /// The domain's lower bound.
        lo: f32,
        /// The domain's upper bound.
        hi: f32,
    },
    /// An input domain or normalisation that makes no sense.
    #[error("invalid model configuration: {0}")]
    ModelConfig(String),

    // ---- certification ---------------------------------------------------------------------------------
    /// The model cannot be certified at all (an opaque module).
    #[error("model `{model}` cannot be certified: {reason}")]
    NotCertifiable {
        /// The model's name.
        model: String,
        /// Why, and what to do.
        reason: String,
    },
    /// A layer the chosen certifier has no relaxation for.
    #[error("{certifier} cannot bound layer {index} ({layer}); {hint}")]
    UnsupportedLayer {
        /// `IBP`, `CROWN`, …
        certifier: &'static str,
        /// The layer's position in the `Sequential`.
        index: usize,
        /// The layer's kind (`MaxPool2d`, …).
        layer: &'static str,
        /// What to use instead.
        hint: &'static str,
    },

    // ---- attacks and evaluation ------------------------------------------------------------------------
    /// A test description breaks a rule of the key table (`robust_spec`): the message is the
    /// one `#[robustness_test]` and the suite give for the same mistake.
    #[error("{message}")]
    Spec {
        /// The test.
        test: String,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A hyper-parameter is out of its range.
    #[error("invalid value for `{name}`: {found}; expected {expected}")]
    InvalidParameter {
        /// The parameter's name, as in the macro key.
        name: &'static str,
        /// The value given.
        found: String,
        /// What is allowed.
        expected: String,
    },
    /// An attack, norm, loss or device name that is not known.
    #[error("unknown {kind} `{found}`; expected one of: {expected}")]
    UnknownName {
        /// What kind of name (`attack`, `norm`, ...).
        kind: &'static str,
        /// The name given.
        found: String,
        /// The names that are known.
        expected: String,
    },
    /// A device that was asked for is not available in this build or on this machine.
    #[error("device `{requested}` is not available: {reason}")]
    DeviceUnavailable {
        /// The device asked for.
        requested: String,
        /// Why not.
        reason: String,
    },

    // ---- candle ----------------------------------------------------------------------------
    /// An error inside candle that none of the checks above anticipated.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn format(
        format: &'static str,
        path: impl Into<PathBuf>,
        reason: impl Into<String>,
    ) -> Self {
        Error::Format {
            format,
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn param(
        name: &'static str,
        found: impl ToString,
        expected: impl Into<String>,
    ) -> Self {
        Error::InvalidParameter {
            name,
            found: found.to_string(),
            expected: expected.into(),
        }
    }

    pub(crate) fn unknown(kind: &'static str, found: &str, expected: &[&str]) -> Self {
        Error::UnknownName {
            kind,
            found: found.to_string(),
            expected: expected.join(", "),
        }
    }
}
