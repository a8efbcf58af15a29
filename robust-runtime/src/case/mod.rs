//! The bottom of the runtime: a [`RobustnessCase`] (a model and the data to test it on) and
//! its [`Fingerprint`]. Every kind of test (attacks in `eval`, certifiers in `certify`,
//! perturbations) takes a case; nothing here knows what will be run on it.

mod fingerprint;

use candle_core::Module;

pub use fingerprint::Fingerprint;

use crate::data::Dataset;
use crate::model::{InputDomain, Model, Normalize};
use crate::{Error, Result};

/// A model and the data to attack it on: what a `#[robustness_test]` function returns.
///
/// The data must lie inside the model's [`InputDomain`] (`[0, 1]` unless set): every run
/// starts with [`RobustnessCase::check_domain`], which refuses, say, digits scaled to 0–255
/// for a `[0, 1]` model, since every attack iterate would be clamped into the domain and the
/// reported perturbations would measure the clamping, not the attack.
/// [`RobustnessCase::allow_inputs_outside_domain`] turns the check off.
#[derive(Debug)]
pub struct RobustnessCase {
    model: Model,
    data: Dataset,
    outside_domain_allowed: bool,
}

impl RobustnessCase {
    /// A case from any candle module returning logits (input domain `[0, 1]`, no normalisation).
    pub fn new(model: impl Module + 'static, data: Dataset) -> Self {
        Self::from_model(Model::new(model), data)
    }

    /// A case from a configured [`Model`].
    pub fn from_model(model: Model, data: Dataset) -> Self {
        RobustnessCase {
            model,
            data,
            outside_domain_allowed: false,
        }
    }

    /// Runs the case even on inputs outside the model's input domain: for data that is known
    /// to stray (a model whose domain is a convention rather than a bound). Attacks and
    /// certifiers still clamp into the domain, so such inputs move by the clamping alone.
    pub fn allow_inputs_outside_domain(mut self) -> Self {
        self.outside_domain_allowed = true;
        self
    }

    /// [`Error::InputsOutsideDomain`] when some input lies outside the model's
    /// [`InputDomain`] (unless [`allow_inputs_outside_domain`](Self::allow_inputs_outside_domain)
    /// was called). Every evaluation, invariance run and certification calls it before any
    /// tensor work; call it yourself to fail early.
    pub fn check_domain(&self) -> Result<()> {
        if self.outside_domain_allowed {
            return Ok(());
        }
        let domain = self.model.domain();
        let inputs = self.data.inputs();
        let found_lo = inputs.min_all()?.to_scalar::<f32>()?;
        let found_hi = inputs.max_all()?.to_scalar::<f32>()?;
        if found_lo < domain.lo() || found_hi > domain.hi() {
            return Err(Error::InputsOutsideDomain {
                found_lo,
                found_hi,
                lo: domain.lo(),
                hi: domain.hi(),
            });
        }
        Ok(())
    }

    /// [`Error::DataShape`] when the model declares its input shape (a network robust knows
    /// the layers of) and the data's samples hold another number of values: found before any
    /// attack runs, instead of deep inside the first layer.
    pub fn check_shape(&self) -> Result<()> {
        let Some(expected) = self.model.input_shape() else {
            return Ok(());
        };
        let data = self.data.sample_shape();
        if data.iter().product::<usize>() != expected.iter().product::<usize>() {
            return Err(Error::DataShape {
                model: self.model.name().to_string(),
                data: data.to_vec(),
                expected: expected.to_vec(),
            });
        }
        Ok(())
    }

    /// The same data (and domain check setting) with another model: the BPDA twin.
    pub(crate) fn with_model(&self, model: Model) -> Self {
        RobustnessCase {
            model,
            data: self.data.clone(),
            outside_domain_allowed: self.outside_domain_allowed,
        }
    }

    /// Names the model in reports.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.model = self.model.named(name);
        self
    }

    /// The case of generated test `test` (`module::function::case`): a model the user did not
    /// name is named after the test's function, as the README's reports show it.
    pub(crate) fn named_after_test(self, test: &str) -> Self {
        let mut parts = test.rsplit("::");
        match (parts.next(), parts.next()) {
            (Some(_), Some(function)) if self.model.name() == crate::model::DEFAULT_NAME => {
                self.named(function)
            }
            _ => self,
        }
    }

    /// Normalises inputs inside the model (ε stays in input units).
    pub fn with_normalize(mut self, normalize: Normalize) -> Self {
        self.model = self.model.with_normalize(normalize);
        self
    }

    /// Sets the input domain (default `[0, 1]`).
    pub fn with_domain(mut self, domain: InputDomain) -> Self {
        self.model = self.model.with_domain(domain);
        self
    }

    /// The same case on the first `n` samples.
    /// The first `samples` samples of the data (all of them for `None`): what a run
    /// evaluates. An error for 0 or more than the data holds.
    pub(crate) fn evaluated(&self, samples: Option<usize>) -> Result<Dataset> {
        self.check_shape()?;
        self.check_domain()?;
        match samples {
            Some(n) if n == 0 || n > self.data.len() => Err(Error::param(
                "samples",
                n,
                format!("1..={} (the size of the data set)", self.data.len()),
            )),
            Some(n) => self.data.take(n),
            None => Ok(self.data.clone()),
        }
    }

    pub(crate) fn truncated(mut self, n: usize) -> Result<Self> {
        self.data = self.data.take(n.min(self.data.len()))?;
        Ok(self)
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The data.
    pub fn data(&self) -> &Dataset {
        &self.data
    }
}
