//! A perturbation test as the macro writes it: the perturbation, its parameters and
//! `min_invariance`, validated here before any tensor work (the macro has checked them at
//! compile time already; this is the same check for specs built by hand).

use std::path::{Path, PathBuf};

use super::{evaluate_invariance, InvarianceConfig, InvarianceReport};
use crate::device;
use crate::eval::spec::{guard_setters, seed_or_env, Guard};
use crate::eval::{Fingerprint, RobustnessCase};
use crate::perturb::regressions::{Regression, Regressions};
use crate::perturb::{PerturbParams, PerturbationConfig};
use crate::{Error, Result};

/// Environment variable that sets the number of cases of tests that do not set `cases`.
pub const CASES_VAR: &str = "ROBUST_CASES";

/// Folder, beside the test crate's `Cargo.toml`, of the regressions files of perturbation tests.
pub const REGRESSIONS_DIR: &str = "robust-regressions";

/// One generated perturbation test. Built by `#[robustness_test(perturbation = ...)]` with one
/// builder call per key written; every other value is the runtime's default.
#[derive(Debug, Clone)]
pub struct InvarianceSpec {
    name: &'static str,
    perturbation: &'static str,
    guard: Guard,
    params: PerturbParams,
    cases: Option<usize>,
    min_invariance: Option<f64>,
    samples: Option<usize>,
    batch_size: Option<usize>,
    seed: Option<u64>,
    device: Option<&'static str>,
}

macro_rules! setters {
    ($($(#[$doc:meta])* $key:ident: $ty:ty => $($field:ident).+ $(as $wrap:ident)?;)*) => {$(
        $(#[$doc])*
        pub fn $key(mut self, value: $ty) -> Self {
            self.$($field).+ = $($wrap)?(value);
            self
        }
    )*};
}

impl InvarianceSpec {
    /// A test named `name` (shown in reports) drawing from `perturbation` (a family name, or
    /// several joined by `+`).
    pub fn new(name: &'static str, perturbation: &'static str) -> Self {
        InvarianceSpec {
            name,
            perturbation,
            guard: Guard::default(),
            params: PerturbParams::default(),
            cases: None,
            min_invariance: None,
            samples: None,
            batch_size: None,
            seed: None,
            device: None,
        }
    }

    setters! {
        /// `eps = 0.1`: radius of `linf` (default 0.1) and `l2` (default 1.0).
        eps: f64 => params.eps as Some;
        /// `sigma = 0.1`: standard deviation of `gaussian`.
        sigma: f64 => params.sigma;
        /// `pixels = 10`: pixels set by `salt_pepper`.
        pixels: usize => params.pixels;
        /// `max_brightness = 0.2`.
        max_brightness: f64 => params.max_brightness;
        /// `max_contrast = 0.2` (below 1).
        max_contrast: f64 => params.max_contrast;
        /// `max_shift = 2.0`, in pixels.
        max_shift: f64 => params.max_shift;
        /// `max_degrees = 15.0`.
        max_degrees: f64 => params.max_degrees;
        /// `patch = 6`: side of the occluding square.
        patch: usize => params.patch;
        /// `cases = 256`: perturbations per sample (default: `ROBUST_CASES`, else 256).
        cases: usize => cases as Some;
        /// `min_invariance = 0.99`: share of correctly classified samples that must keep their
        /// prediction under every case.
        min_invariance: f64 => min_invariance as Some;
        /// `samples = 500`: evaluate the first samples of the data (default all).
        samples: usize => samples as Some;
        /// `batch_size = 512`: perturbed inputs per forward pass.
        batch_size: usize => batch_size as Some;
        /// `seed = 0` (default: `ROBUST_SEED`, else 0).
        seed: u64 => seed as Some;
        /// `device = "cpu" | "cuda" | "auto"` (default "auto"; `ROBUST_DEVICE` overrides).
        device: &'static str => device as Some;
    }

    // `manifest_dir`: its `robust-regressions/` holds the regressions file, and PNGs go to its
    // `target/robust/`. Without it, nothing is read or written.
    guard_setters!();

    /// The test's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// `robust-regressions/<test path>.txt` beside the test crate's `Cargo.toml`
    /// (`suite::mnist_cnn::rotation` → `robust-regressions/suite/mnist_cnn/rotation.txt`).
    pub fn regressions_path(&self) -> Option<PathBuf> {
        let dir = Path::new(self.guard.manifest_dir?).join(REGRESSIONS_DIR);
        let parts: Vec<String> = self.name.split("::").map(crate::report::sanitize).collect();
        let (file, folders) = parts.split_last()?;
        let dir = folders.iter().fold(dir, |dir, part| dir.join(part));
        Some(dir.join(format!("{file}.txt")))
    }

    /// Checks every value of the spec without building the case or touching a tensor: what
    /// [`InvarianceSpec::run`] checks first, and what a suite checks for all its tests before
    /// any runs.
    pub fn check(&self) -> Result<()> {
        self.prepare().map(|_| ())
    }

    /// The perturbation, the threshold and the number of cases, once every value is checked.
    fn prepare(&self) -> Result<(PerturbationConfig, f64, usize)> {
        let config = PerturbationConfig::new(self.perturbation, self.params.clone())?;
        let min = match self.min_invariance {
            Some(v) if (0.0..=1.0).contains(&v) => v,
            Some(v) => return Err(Error::param("min_invariance", v, "a fraction in [0, 1]")),
            None => {
                return Err(Error::param(
                    "min_invariance",
                    "none",
                    "a threshold (a test that asserts nothing cannot fail)",
                ))
            }
        };
        let cases = match self.cases {
            Some(c) => c,
            None => match std::env::var(CASES_VAR) {
                Ok(v) => v
                    .trim()
                    .parse()
                    .map_err(|_| Error::param(CASES_VAR, v, "a positive integer"))?,
                Err(_) => InvarianceConfig::default().cases,
            },
        };
        crate::attack::check_at_least_one("cases", cases)?;
        self.guard.check()?;
        crate::eval::spec::check_run_keys(self.samples, self.batch_size, self.device)?;
        seed_or_env(self.seed)?;
        Ok((config, min, cases))
    }

    /// Builds the case with the selected device current, runs it and checks `min_invariance`.
    /// `Err(Error::NotInvariant)` when it does not hold; the failing seeds are then added to the
    /// regressions file.
    pub fn run(&self, build: impl FnOnce() -> Result<RobustnessCase>) -> Result<InvarianceReport> {
        let (config, min, cases) = self.prepare()?;
        let seed = seed_or_env(self.seed)?;
        let device = self.guard.device(self.device)?;
        let case = device::with_current(&device, build)?;
        let batch_size = self
            .batch_size
            .unwrap_or(InvarianceConfig::default().batch_size);
        let fingerprint = Fingerprint::of(&case, self.samples, batch_size, &device)?;
        let cfg = InvarianceConfig {
            samples: self.samples,
            cases,
            batch_size: self
                .batch_size
                .unwrap_or(InvarianceConfig::default().batch_size),
            seed,
            device,
            test_name: Some(self.name.to_string()),
            regressions: self.regressions_path(),
            output: self
                .guard
                .manifest_dir
                .map(|dir| crate::report::output_dir(Path::new(dir), self.name)),
            ..InvarianceConfig::default()
        };
        let mut report =
            evaluate_invariance(&case, &config, &cfg)?.check(Some(min), self.guard.confidence);
        report.fingerprint = Some(fingerprint);
        let passed = report.passed();
        if let (false, Some(path)) = (passed, &cfg.regressions) {
            let new: Vec<(Regression, String)> = report
                .counterexamples
                .iter()
                .filter(|c| c.case.is_some())
                .map(|c| {
                    (
                        Regression {
                            seed: c.seed,
                            sample: c.sample,
                        },
                        format!("{}: {} → {}", c.perturbation, c.label, c.pred),
                    )
                })
                .collect();
            report.replay.written = Regressions::load(path)?.append(&new)?;
        }
        if passed {
            Ok(report)
        } else {
            Err(Error::NotInvariant(Box::new(report)))
        }
    }
}
