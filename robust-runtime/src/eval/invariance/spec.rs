//! A perturbation test as the macro writes it: the perturbation, its parameters and
//! `min_invariance`, validated here before any tensor work (the macro has checked them at
//! compile time already; this is the same check for specs built by hand).

use std::path::{Path, PathBuf};

use super::{evaluate_invariance, InvarianceConfig, InvarianceReport};
use crate::device::{self, Precision};
use crate::eval::spec::{common_builders, option_setters, Common};
use crate::eval::{Fingerprint, RobustnessCase};
use crate::perturb::regressions::{Regression, Regressions};
use crate::perturb::{PerturbParams, PerturbationConfig};
use crate::{Error, Result};

/// Environment variable that sets the number of cases of tests that do not set `cases`.
pub const CASES_VAR: &str = crate::env::CASES.name;

/// Folder, beside the test crate's `Cargo.toml`, of the regressions files of perturbation tests.
pub const REGRESSIONS_DIR: &str = "robust-regressions";

/// One generated perturbation test. Built by `#[robustness_test(perturbation = ...)]` with one
/// builder call per key written; every other value is the runtime's default.
#[derive(Debug, Clone)]
pub struct InvarianceSpec {
    perturbation: String,
    /// `eps = 0.1`: radius of `linf` (default 0.1) and `l2` (default 1.0).
    eps: Option<f64>,
    common: Common,
}

impl InvarianceSpec {
    /// A test named `name` (shown in reports) drawing from `perturbation` (a family name, or
    /// several joined by `+`).
    pub fn new(name: impl Into<String>, perturbation: impl Into<String>) -> Self {
        InvarianceSpec {
            perturbation: perturbation.into(),
            eps: None,
            common: Common::named(name),
        }
    }

    /// `eps = 0.1`: radius of `linf` (default 0.1) and `l2` (default 1.0).
    pub fn eps(mut self, eps: f64) -> Self {
        self.eps = Some(eps);
        self
    }

    // `manifest_dir`: its `robust-regressions/` holds the regressions file, and PNGs go to its
    // `target/robust/`. Without it, nothing is read or written.
    common_builders!();

    /// `robust-regressions/<test path>.txt` beside the test crate's `Cargo.toml`
    /// (`suite::mnist_cnn::rotation` → `robust-regressions/suite/mnist_cnn/rotation.txt`).
    pub fn regressions_path(&self) -> Option<PathBuf> {
        let dir = Path::new(self.common.manifest_dir.as_deref()?).join(REGRESSIONS_DIR);
        let parts: Vec<String> = self
            .common
            .name
            .split("::")
            .map(crate::report::sanitize)
            .collect();
        let (file, folders) = parts.split_last()?;
        let dir = folders.iter().fold(dir, |dir, part| dir.join(part));
        Some(dir.join(format!("{file}.txt")))
    }

    /// This test as the key table describes it; the mistakes of the perturbation's name.
    fn spec(&self) -> Result<robust_spec::Spec> {
        let mut spec = robust_spec::Spec::new(robust_spec::Kind::Perturbation);
        let composition =
            robust_spec::composition(&self.perturbation).map_err(|messages| Error::Spec {
                test: self.common.name.clone(),
                message: messages.join("; "),
            })?;
        spec.perturbations = vec![composition];
        spec.eps = self
            .eps
            .map(robust_spec::Radius::from_value)
            .into_iter()
            .collect();
        spec.options = self.common.options;
        Ok(spec)
    }

    /// The perturbations' parameters, as the perturbation families read them.
    fn params(&self) -> PerturbParams {
        let o = &self.common.options;
        let d = PerturbParams::default();
        PerturbParams {
            eps: self.eps,
            sigma: o.sigma.unwrap_or(d.sigma),
            pixels: o.pixels.unwrap_or(d.pixels),
            max_brightness: o.max_brightness.unwrap_or(d.max_brightness),
            max_contrast: o.max_contrast.unwrap_or(d.max_contrast),
            max_shift: o.max_shift.unwrap_or(d.max_shift),
            max_degrees: o.max_degrees.unwrap_or(d.max_degrees),
            patch: o.patch.unwrap_or(d.patch),
        }
    }

    /// Checks every value of the spec without building the case or touching a tensor: what
    /// [`InvarianceSpec::run`] checks first, and what a suite checks for all its tests before
    /// any runs.
    pub fn check(&self) -> Result<()> {
        self.prepare().map(|_| ())
    }

    /// The perturbation, the threshold and the number of cases, once every value is checked.
    fn prepare(&self) -> Result<(PerturbationConfig, f64, usize)> {
        self.common.check(&self.spec()?)?;
        let o = &self.common.options;
        let config = PerturbationConfig::new(&self.perturbation, self.params())?;
        let Some(min) = o.min_invariance else {
            return Err(Error::param(
                "min_invariance",
                "none",
                "a threshold (a test that asserts nothing cannot fail)",
            ));
        };
        let cases = match o.cases {
            Some(c) => c,
            None => crate::env::parse(crate::env::CASES, "a positive integer")?
                .unwrap_or(InvarianceConfig::default().cases),
        };
        crate::check::check_at_least_one("cases", cases)?;
        self.common.seed()?;
        Precision::select(o.precision)?;
        Ok((config, min, cases))
    }

    /// Builds the case with the selected device current, runs it and checks `min_invariance`.
    /// The report says whether it holds ([`InvarianceSpec::failure`]); when it does not, the
    /// failing seeds are added to the regressions file. `Err` only when the test could not run.
    pub fn run(&self, build: impl FnOnce() -> Result<RobustnessCase>) -> Result<InvarianceReport> {
        let prepared = self.prepare()?;
        let device = self.guard().device(self.common.options.device)?;
        let precision = Precision::select(self.common.options.precision)?.on(&device);
        device::with_precision(&device, precision, || {
            let mut report = self.run_on(prepared, device.clone(), build)?;
            report.precision = precision;
            Ok(report)
        })
    }

    /// [`InvarianceSpec::run`] once the device and its precision are chosen.
    fn run_on(
        &self,
        (config, min, cases): (PerturbationConfig, f64, usize),
        device: candle_core::Device,
        build: impl FnOnce() -> Result<RobustnessCase>,
    ) -> Result<InvarianceReport> {
        let o = &self.common.options;
        let seed = self.common.seed()?;
        let case = device::with_current(&device, build)?.named_after_test(self.name());
        let batch_size = o
            .batch_size
            .unwrap_or(InvarianceConfig::default().batch_size);
        let fingerprint = Fingerprint::of(&case, o.samples, batch_size, &device)?;
        let cfg = InvarianceConfig {
            samples: o.samples,
            cases,
            batch_size,
            seed,
            device,
            test_name: Some(self.common.name.clone()),
            regressions: self.regressions_path(),
            output: self
                .common
                .manifest_dir
                .as_ref()
                .map(|dir| crate::report::output_dir(Path::new(dir), &self.common.name)),
            ..InvarianceConfig::default()
        };
        let mut report = evaluate_invariance(&case, &config, &cfg)?.check(Some(min), o.confidence);
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
        Ok(report)
    }

    /// The verdict on a report of this test: `None` when `min_invariance` holds.
    pub fn failure(&self, report: &InvarianceReport) -> Option<String> {
        (!report.passed()).then(|| report.failure_message())
    }
}
