//! What valid inputs are: the [`InputDomain`] box they live in and the per-channel
//! [`Normalize`] a model applies before its first layer. A bottom module: the model wraps both,
//! and the layers of `nn` (which know nothing of `Model`) normalise with the same type.

use candle_core::Tensor;

use crate::{Error, Result};

/// The box `[lo, hi]` that every input coordinate lives in.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InputDomain {
    lo: f32,
    hi: f32,
}

impl Default for InputDomain {
    /// `[0, 1]`: images scaled from 0–255.
    fn default() -> Self {
        InputDomain { lo: 0.0, hi: 1.0 }
    }
}

impl InputDomain {
    /// The box `[lo, hi]`; both finite and `lo < hi`.
    pub fn new(lo: f32, hi: f32) -> Result<Self> {
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(Error::ModelConfig(format!(
                "input domain [{lo}, {hi}] is empty or not finite; expected finite bounds with lo < hi"
            )));
        }
        Ok(InputDomain { lo, hi })
    }

    /// Lower bound.
    pub fn lo(&self) -> f32 {
        self.lo
    }

    /// Upper bound.
    pub fn hi(&self) -> f32 {
        self.hi
    }

    /// `x` clamped into the box.
    pub fn clamp(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clamp(self.lo, self.hi)?)
    }
}

/// Per-channel normalisation `(x − mean) / std` on dimension 1 (channels of `N × C × …`, or
/// features of `N × C`), applied by [`Model`] before the wrapped module.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalize {
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl Normalize {
    /// One mean and one standard deviation per channel (or one of each for all channels).
    pub fn new(mean: Vec<f32>, std: Vec<f32>) -> Result<Self> {
        if mean.is_empty() || mean.len() != std.len() {
            return Err(Error::ModelConfig(format!(
                "normalize has {} means and {} standard deviations; expected the same non-zero number",
                mean.len(),
                std.len()
            )));
        }
        if let Some(s) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(Error::ModelConfig(format!(
                "normalize standard deviation {s}; expected finite values > 0"
            )));
        }
        if let Some(m) = mean.iter().find(|m| !m.is_finite()) {
            return Err(Error::ModelConfig(format!(
                "normalize mean {m}; expected finite values"
            )));
        }
        Ok(Normalize { mean, std })
    }

    /// The per-channel means.
    pub fn mean(&self) -> &[f32] {
        &self.mean
    }

    /// The per-channel standard deviations.
    pub fn std(&self) -> &[f32] {
        &self.std
    }

    /// The same map as `x·scale + shift` per channel: `(1/std, −mean/std)`.
    pub fn as_affine(&self) -> (Vec<f32>, Vec<f32>) {
        let scale = self.std.iter().map(|s| 1.0 / s).collect();
        let shift = self
            .mean
            .iter()
            .zip(&self.std)
            .map(|(m, s)| -m / s)
            .collect();
        (scale, shift)
    }

    /// `(x − mean) / std`, broadcast over every dimension but 1.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let channels = self.mean.len();
        let mut shape = vec![1usize; x.rank().max(2)];
        if channels > 1 {
            let found = x.dims().get(1).copied().unwrap_or(0);
            if found != channels {
                return Err(Error::ModelConfig(format!(
                    "normalize has {channels} channels but the input has shape {:?}; expected dimension 1 of size {channels}",
                    x.dims()
                )));
            }
            shape[1] = channels;
        }
        let mean =
            Tensor::from_slice(&self.mean, shape.as_slice(), x.device())?.to_dtype(x.dtype())?;
        let std =
            Tensor::from_slice(&self.std, shape.as_slice(), x.device())?.to_dtype(x.dtype())?;
        Ok(x.broadcast_sub(&mean)?.broadcast_div(&std)?)
    }
}
