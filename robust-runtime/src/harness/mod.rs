//! Running generated tests to a verdict, and data-driven suites on
//! [libtest-mimic](https://docs.rs/libtest-mimic).
//!
//! Every test, from `#[robustness_test]` or from a suite file, ends in [`conclude`]: it writes
//! the report files under `target/robust/<test>/` ([`crate::report::write`]), compares the
//! metrics with the committed baseline when the test has one ([`crate::baseline`]), and turns
//! it all into the message a passing test prints or a failing one panics with, naming the
//! report files.
//!
//! [`Suite`] reads a declarative file (models × attacks / certifiers / perturbations × ε ×
//! thresholds) and runs one libtest trial per case in a `harness = false` test target, so
//! `cargo test` filters, `--list`, `--ignored`, `--exact` and `cargo nextest run` all work:
//!
//! ```toml
//! # tests/robustness.toml
//! [models.mnist_mlp]
//! zoo = "mnist_mlp"
//! weights = "tests/fixtures/mnist_mlp.safetensors"
//!
//! [[test]]
//! model = "mnist_mlp"
//! attack = ["fgsm", "pgd"]
//! eps = [0.05, 0.1]
//! min_acc = 0.5
//! samples = 200
//! ```
//!
//! ```no_run
//! // tests/suite.rs, with `[[test]] name = "suite" harness = false` in Cargo.toml
//! fn main() -> std::process::ExitCode {
//!     robust_runtime::harness::Suite::from_file(
//!         env!("CARGO_MANIFEST_DIR"),
//!         "tests/robustness.toml",
//!     )
//!     .and_then(|suite| suite.run())
//!     .unwrap_or_else(|e| {
//!         eprintln!("{e}");
//!         std::process::ExitCode::FAILURE
//!     })
//! }
//! ```

mod suite;

use std::path::Path;

pub use suite::{CaseBuilder, Suite, SuiteCase};

use crate::baseline::{self, UpdateMode};
use crate::certify::CertificationReport;
use crate::eval::{CertifySpec, Guard, InvarianceSpec, TestSpec};
use crate::report::{self, Outcome};
use crate::{InvarianceReport, Result, RobustnessCase, RobustnessReport};

/// What builds a test's case (the user's function).
pub type Build<'a> = Box<dyn FnOnce() -> Result<RobustnessCase> + 'a>;

/// A kind of generated test: an attack test ([`TestSpec`]), a perturbation test
/// ([`InvarianceSpec`]) or a certification test ([`CertifySpec`]).
pub trait GeneratedTest {
    /// What a run produces.
    type Report: Outcome;
    /// Builds the case, runs the test and checks its thresholds.
    fn execute(&self, build: Build<'_>) -> Result<Self::Report>;
    /// The test's name.
    fn name(&self) -> &str;
    /// Its confidence level, baseline settings and folder.
    fn guard(&self) -> Guard;
    /// The verdict on a report: `None` when the test passes, else the failure message.
    fn failure(&self, report: &Self::Report) -> Option<String>;
}

impl GeneratedTest for TestSpec {
    type Report = RobustnessReport;
    fn execute(&self, build: Build<'_>) -> Result<Self::Report> {
        self.run(build)
    }
    fn name(&self) -> &str {
        TestSpec::name(self)
    }
    fn guard(&self) -> Guard {
        TestSpec::guard(self)
    }
    fn failure(&self, report: &Self::Report) -> Option<String> {
        Self::failure(self, report)
    }
}

impl GeneratedTest for CertifySpec {
    type Report = CertificationReport;
    fn execute(&self, build: Build<'_>) -> Result<Self::Report> {
        self.run(build)
    }
    fn name(&self) -> &str {
        CertifySpec::name(self)
    }
    fn guard(&self) -> Guard {
        CertifySpec::guard(self)
    }
    fn failure(&self, report: &Self::Report) -> Option<String> {
        Self::failure(self, report)
    }
}

impl GeneratedTest for InvarianceSpec {
    type Report = InvarianceReport;
    fn execute(&self, build: Build<'_>) -> Result<Self::Report> {
        self.run(build)
    }
    fn name(&self) -> &str {
        InvarianceSpec::name(self)
    }
    fn guard(&self) -> Guard {
        InvarianceSpec::guard(self)
    }
    fn failure(&self, report: &Self::Report) -> Option<String> {
        Self::failure(self, report)
    }
}

/// Runs `spec` on the case `build` returns and concludes it: `Ok(message)` for a pass (the
/// report, the baseline comparison, the report files), `Err(message)` for a failure.
pub fn run<T: GeneratedTest>(
    spec: &T,
    build: impl FnOnce() -> Result<RobustnessCase>,
) -> std::result::Result<String, String> {
    let result = spec.execute(Box::new(build));
    conclude(spec, result)
}

/// Turns a run's result into a verdict: writes the report files (when the test knows its
/// crate's folder), compares with the baseline (when it has one), and says what happened.
///
/// A failed threshold is never recorded as a baseline; under `CI` nothing is written to
/// `robust-baselines/` at all.
pub fn conclude<T: GeneratedTest>(
    spec: &T,
    result: Result<T::Report>,
) -> std::result::Result<String, String> {
    // Prepare: a test that could not run has no report to judge.
    let report = match &result {
        Ok(report) => report,
        Err(e) => return Err(e.to_string()),
    };
    let failure = spec.failure(report);
    let name = spec.name();
    let guard = spec.guard();
    let mut baseline_text = String::new();
    let mut baseline_failed = false;
    let mut baseline_missing = false;
    if guard.uses_baseline() {
        let Some(dir) = guard.manifest_dir.as_deref() else {
            return Err(format!(
                "robustness test `{name}` asks for a baseline but does not know its crate's folder \
                 (set `manifest_dir`, as the macro does with CARGO_MANIFEST_DIR)"
            ));
        };
        let mode = UpdateMode::from_env().map_err(|e| e.to_string())?;
        let mode = if failure.is_some() || guard.cuda_variant {
            UpdateMode::No
        } else {
            mode
        };
        let path = baseline::path_for(Path::new(dir), guard.baseline_name(name));
        let comparison = baseline::compare(report, &path, guard.tolerance(), mode)
            .map_err(|e| format!("robustness test `{name}`: {e}"))?;
        baseline_failed = comparison.failed();
        baseline_missing = comparison.verdict == baseline::Verdict::Missing;
        baseline_text = comparison.describe(mode);
    }
    let files = match guard.manifest_dir.as_deref() {
        Some(dir) => {
            let folder = report::output_dir(Path::new(dir), name);
            match report::write(&folder, report, &baseline_text) {
                Ok(files) => files.describe(),
                // Report files are for people; failing to write them does not change the verdict.
                Err(e) => format!("report files could not be written: {e}"),
            }
        }
        None => String::new(),
    };
    let tail = [baseline_text.as_str(), files.as_str()]
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| format!("\n\n{s}"))
        .collect::<String>();
    match (failure, baseline_failed) {
        (Some(message), _) => Err(format!("{message}{tail}")),
        (None, true) => Err(format!(
            "robustness test `{name}` {}\n\n{report}{tail}",
            if baseline_missing {
                "has no committed baseline to compare with"
            } else {
                "fell below its baseline"
            }
        )),
        (None, false) => Ok(format!("{report}{tail}")),
    }
}
