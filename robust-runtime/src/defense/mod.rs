//! Defences: training that makes a model robust (or certifiable).
//!
//! [`train`] fits a [`Sequential`](crate::nn::Sequential) on a [`Dataset`](crate::Dataset) with
//! AdamW under one of several [`Regime`]s:
//!
//! - [`Regime::Standard`]: cross-entropy on clean inputs.
//! - [`Regime::GaussianNoise`]: cross-entropy on `x + N(0, σ²)`, the training randomized
//!   smoothing needs (Cohen et al. 2019, §4: the base classifier must be accurate under noise).
//! - [`Regime::Ibp`]: interval bound propagation training (Gowal et al. 2018):
//!   `κ·CE(z(x), y) + (1 − κ)·CE(ẑ(x, ε), y)`, with `ẑ` the worst-case logits of the ε-box
//!   from [`ibp`](crate::certify::ibp), ε ramped up linearly from 0 and κ from 1 down to
//!   `kappa` after a warm-up, as in the paper.
//!
//! - [`Regime::Pgd`]: PGD adversarial training (Madry et al. 2018), cross-entropy on the PGD
//!   example of each batch against the current weights.
//! - [`Regime::Trades`]: TRADES (Zhang et al. 2019), clean cross-entropy plus β times the KL
//!   divergence between the clean and the adversarial predictions.
//!
//! [`Preprocessed`] puts preprocessing defences ([`Preprocessor`]: median filter, bit-depth
//! reduction, Gaussian blur) in front of a model, and `Model::from(preprocessed)` makes it the
//! model under test; evaluations attack it plainly *and* through its BPDA twin (Athalye et al.
//! 2018), so a defence that only breaks gradients cannot pass.
//!
//! Everything random (initialisation, batch order, noise) comes from one seeded [`Rng`](crate::Rng), so a
//! run is reproducible bit for bit on the CPU.

mod preprocess;
mod train;

pub use preprocess::{Preprocessed, Preprocessor, EOT_DRAWS};
pub use train::{init_like_pytorch, train, train_resumable, EpochStats, Regime, TrainConfig};
