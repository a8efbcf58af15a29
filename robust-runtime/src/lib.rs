//! # robust: adversarial robustness as `cargo test` assertions
//!
//! `robust-runtime` attacks [candle](https://github.com/huggingface/candle) classifiers and
//! turns the outcome into ordinary tests. One attribute expands into one `#[test]` per attack × ε:
//!
//! ```no_run
//! use robust_runtime::prelude::*;
//!
//! #[robustness_test(attack = ["fgsm", "pgd"], eps = [0.05, 0.1], min_acc = 0.6, samples = 500)]
//! fn mnist_cnn() -> robust_runtime::Result<RobustnessCase> {
//!     let model = zoo::MnistCnn::load("tests/fixtures/mnist_cnn.safetensors", &device::current())?;
//!     Ok(RobustnessCase::new(model, Dataset::mnist_sample()?.test_split()))
//! }
//! ```
//!
//! `cargo test` then runs `mnist_cnn::fgsm_eps_0_05`, `mnist_cnn::pgd_eps_0_1`, …, each
//! failing with a report (clean and robust accuracy, attack success rate, perturbation norms,
//! the assertion that failed) when the model is not robust enough.
//!
//! `#[robustness_test(perturbation = "rotation", max_degrees = 15.0, min_invariance = 0.99)]`
//! instead tests that predictions survive random perturbations (noise, brightness, contrast,
//! shifts, rotations, salt-and-pepper pixels, occlusion): see [`perturb`] for the proptest
//! strategies and [`eval::evaluate_invariance`] for the run, which shrinks every failure to a
//! minimal perturbation and stores its seed in a regressions file replayed first.
//!
//! `cargo robust` (the [`cli`] of this crate's `cargo-robust` binary) reviews and blesses
//! baselines, runs a TOML suite with JUnit output, and writes `target/robust/index.html`, one
//! page over every test's last run.
//!
//! The same machinery is a library: [`eval::evaluate`] runs any [`attack::Attack`] on a
//! [`RobustnessCase`] and returns a [`RobustnessReport`] (a table with `Display`, JSON with serde).
//!
//! Rules the results rest on: a sample is robust only if it is classified correctly clean *and*
//! under attack; every iterate is projected onto the ε-ball and the input domain; ε is in input
//! units (normalisation lives inside the [`Model`]); all randomness comes from one seeded
//! [`Rng`], so the same seed gives the same report, bit for bit, on the CPU.

#![warn(missing_docs)]

pub mod attack;
pub mod baseline;
pub mod case;
pub mod certify;
mod check;
pub mod cli;
pub mod data;
pub mod defense;
pub mod device;
pub mod domain;
pub mod env;
mod error;
pub mod eval;
pub mod harness;
pub mod model;
pub mod nn;
pub mod onnx;
pub mod perturb;
pub mod progress;
pub mod report;
pub mod rng;
pub mod stats;
pub mod verify;
pub mod vnnlib;
pub mod zoo;

pub use case::RobustnessCase;
pub use data::Dataset;
pub use domain::{InputDomain, Normalize};
pub use error::{Error, Result};
pub use eval::{InvarianceReport, RobustnessReport};
pub use model::Model;
pub use rng::{Rng, RngState};
pub use robust_macros::robustness_test;
/// The vocabulary of a test: name lists, the key table, `Options`, the checks and test names
/// that `#[robustness_test]`, the suite and the builders share.
pub use robust_spec as spec;

/// What a robustness test file needs: `use robust_runtime::prelude::*;`.
pub mod prelude {
    pub use crate::case::RobustnessCase;
    pub use crate::data::Dataset;
    pub use crate::device;
    pub use crate::eval::RobustnessReport;
    pub use crate::model::{InputDomain, Model, Normalize};
    pub use crate::rng::Rng;
    pub use crate::robustness_test;
    pub use crate::zoo;
    pub use candle_core::Device;
}

/// What `#[robustness_test]` expansions call. Not a public API: it may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::__robust_cuda_variant as cuda_variant;
    pub use crate::eval::{CertifySpec, InvarianceSpec, TestSpec};
    pub use crate::harness::GeneratedTest;
    use crate::{Result, RobustnessCase};

    /// Runs one generated test: prints the report when it passes, panics with it (and the
    /// paths of its report files) when it fails.
    #[track_caller]
    pub fn run_test<F: FnOnce() -> Result<RobustnessCase>, T: GeneratedTest>(build: F, spec: T) {
        warn_if_unoptimised();
        match crate::harness::run(&spec, build) {
            Ok(message) => println!("{message}"),
            Err(message) => panic!("{message}"),
        }
    }

    /// Once per test binary: the fix for a robust (and so a candle) built without optimisation.
    pub(crate) fn warn_if_unoptimised() {
        if cfg!(robust_unoptimised) {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| eprintln!("{UNOPTIMISED}"));
        }
    }

    /// The warning of [`warn_if_unoptimised`].
    pub const UNOPTIMISED: &str =
        "warning: robust-runtime and its dependencies (candle) were built \
        without optimisation (opt-level 0, cargo's default for `cargo test`), so attacks run about \
        200× slower than they should.\n  fix: add to the Cargo.toml of your workspace\n\n    \
        [profile.dev.package.\"*\"]\n    opt-level = 3\n";
}

/// The `_cuda` variants the macro emits: kept with the `cuda` feature, dropped without it, so
/// that a crate built without CUDA lists no tests it could never run.
#[cfg(feature = "cuda")]
#[doc(hidden)]
#[macro_export]
macro_rules! __robust_cuda_variant {
    ($($item:tt)*) => { $($item)* };
}

/// The `_cuda` variants the macro emits: kept with the `cuda` feature, dropped without it, so
/// that a crate built without CUDA lists no tests it could never run.
#[cfg(not(feature = "cuda"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __robust_cuda_variant {
    ($($item:tt)*) => {};
}
