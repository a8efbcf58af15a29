//! Fingerprints of what a run measured: the data and the model, so a baseline can say when
//! either changed since it was recorded.

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use super::RobustnessCase;
use crate::Result;

/// 64-bit FNV-1a hashes, in hex, of the evaluated data and of the model's behaviour on it.
///
/// - `data`: the evaluated inputs (as `f32` bytes, in order) and their labels.
/// - `model`: the model's clean logits on those inputs (`f32` bytes). It changes with any
///   change of weights, architecture or normalisation that changes an output bit, and it needs
///   nothing from the model but its forward pass. The same model on another CPU or on a GPU
///   may round differently, so a changed model fingerprint is reported, never failed on.
///
/// These are change detectors, not cryptographic hashes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Hash of the evaluated inputs and labels.
    pub data: String,
    /// Hash of the model's clean logits on them.
    pub model: String,
}

impl Fingerprint {
    /// Fingerprints the first `samples` samples of `case` (all when `None`), running the model
    /// on `device` in batches of `batch_size`.
    pub fn of(
        case: &RobustnessCase,
        samples: Option<usize>,
        batch_size: usize,
        device: &Device,
    ) -> Result<Fingerprint> {
        let data = case.evaluated(samples)?;
        let mut data_hash = Fnv::default();
        let mut model_hash = Fnv::default();
        for batch in data.batches(batch_size.max(1), device) {
            let batch = batch?;
            let inputs = batch
                .inputs
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            data_hash.f32s(&inputs);
            for row in case.model().checked_logits(&batch.inputs)? {
                model_hash.f32s(&row);
            }
        }
        for &label in data.labels() {
            data_hash.bytes(&label.to_le_bytes());
        }
        Ok(Fingerprint {
            data: data_hash.hex(),
            model: model_hash.hex(),
        })
    }
}

/// 64-bit FNV-1a.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn f32s(&mut self, values: &[f32]) {
        for v in values {
            self.bytes(&v.to_le_bytes());
        }
    }

    fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

#[cfg(test)]
mod should {
    use super::*;

    #[test]
    fn hash_like_the_fnv1a_reference() {
        // Test vectors of the FNV reference (isthe.com/chongo/tech/comp/fnv).
        let mut h = Fnv::default();
        assert_eq!(h.hex(), "cbf29ce484222325");
        h.bytes(b"a");
        assert_eq!(h.hex(), "af63dc4c8601ec8c");
        let mut h = Fnv::default();
        h.bytes(b"foobar");
        assert_eq!(h.hex(), "85944171f73967e8");
    }
}
