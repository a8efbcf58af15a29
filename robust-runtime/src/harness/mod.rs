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

/// How one generated test ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Thresholds and baseline hold: the report, the baseline comparison, the report files.
    Passed(String),
    /// A threshold or the baseline failed: the failure message.
    Failed(String),
    /// The test could not run (its case could not be built, a file is missing, a value is
    /// wrong): the error.
    Error(String),
}

impl Verdict {
    /// The message, whichever the verdict.
    pub fn message(&self) -> &str {
        match self {
            Verdict::Passed(m) | Verdict::Failed(m) | Verdict::Error(m) => m,
        }
    }

    /// `Ok` with the message of a pass, `Err` with that of a failure or an error.
    pub fn into_result(self) -> std::result::Result<String, String> {
        match self {
            Verdict::Passed(m) => Ok(m),
            Verdict::Failed(m) | Verdict::Error(m) => Err(m),
        }
    }
}

/// One trial of a suite run.
#[derive(Debug, Clone, PartialEq)]
pub struct TrialResult {
    /// `<suite>::<model>::<test>`.
    pub name: String,
    /// How it ended; `None` when it was ignored.
    pub verdict: Option<Verdict>,
    /// Wall time.
    pub seconds: f64,
}

impl TrialResult {
    /// `ok`, `FAILED`, `ERROR` or `ignored`, as a run prints it.
    pub fn verdict_word(&self) -> &'static str {
        match self.verdict {
            Some(Verdict::Passed(_)) => "ok",
            Some(Verdict::Failed(_)) => "FAILED",
            Some(Verdict::Error(_)) => "ERROR (could not run)",
            None => "ignored",
        }
    }

    /// The message of its verdict (empty when it was ignored).
    pub fn message(&self) -> &str {
        self.verdict.as_ref().map_or("", Verdict::message)
    }
}

impl serde::Serialize for TrialResult {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct Json<'a> {
            name: &'a str,
            verdict: &'a str,
            seconds: f64,
            message: &'a str,
        }
        Json {
            name: &self.name,
            verdict: match self.verdict {
                Some(Verdict::Passed(_)) => "passed",
                Some(Verdict::Failed(_)) => "failed",
                Some(Verdict::Error(_)) => "error",
                None => "ignored",
            },
            seconds: self.seconds,
            message: self.message(),
        }
        .serialize(s)
    }
}

/// Runs `spec` on the case `build` returns and concludes it: `Ok(message)` for a pass (the
/// report, the baseline comparison, the report files), `Err(message)` for a failure.
pub fn run<T: GeneratedTest>(
    spec: &T,
    build: impl FnOnce() -> Result<RobustnessCase>,
) -> std::result::Result<String, String> {
    judge(spec, build).into_result()
}

/// [`run`], telling a failed test from one that could not run.
pub fn judge<T: GeneratedTest>(
    spec: &T,
    build: impl FnOnce() -> Result<RobustnessCase>,
) -> Verdict {
    match spec.execute(Box::new(build)) {
        Err(e) => Verdict::Error(e.to_string()),
        Ok(report) => verdict(spec, &report),
    }
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
    match result {
        Ok(report) => verdict(spec, &report).into_result(),
        Err(e) => Err(e.to_string()),
    }
}

fn verdict<T: GeneratedTest>(spec: &T, report: &T::Report) -> Verdict {
    let failure = spec.failure(report);
    let name = spec.name();
    let guard = spec.guard();
    let mut comparison = None;
    if guard.uses_baseline() {
        let Some(dir) = guard.manifest_dir.as_deref() else {
            return Verdict::Error(format!(
                "robustness test `{name}` asks for a baseline but does not know its crate's folder \
                 (set `manifest_dir`, as the macro does with CARGO_MANIFEST_DIR)"
            ));
        };
        let mode = match UpdateMode::from_env() {
            Ok(mode) => mode,
            Err(e) => return Verdict::Error(e.to_string()),
        };
        let mode = if failure.is_some() || guard.cuda_variant {
            UpdateMode::No
        } else {
            mode
        };
        let path = baseline::path_for(Path::new(dir), guard.baseline_name(name));
        match baseline::compare(report, &path, guard.tolerance(), mode) {
            Ok(c) => comparison = Some((c.describe(mode), c)),
            Err(e) => return Verdict::Error(format!("robustness test `{name}`: {e}")),
        }
    }
    let baseline_text = comparison.as_ref().map_or("", |(text, _)| text.as_str());
    let baseline_failed = comparison.as_ref().is_some_and(|(_, c)| c.failed());
    let baseline_missing = comparison
        .as_ref()
        .is_some_and(|(_, c)| c.verdict == baseline::Verdict::Missing);
    let folder = guard
        .manifest_dir
        .as_deref()
        .map(|dir| report::output_dir(Path::new(dir), name));
    let files = match &folder {
        Some(folder) => match report::write(folder, report, baseline_text) {
            Ok(files) => files.describe(),
            // Report files are for people; failing to write them does not change the verdict.
            Err(e) => format!("report files could not be written: {e}"),
        },
        None => String::new(),
    };
    let tail = [baseline_text, files.as_str()]
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| format!("\n\n{s}"))
        .collect::<String>();
    let (label, verdict) = match (failure, baseline_failed) {
        (Some(message), _) => ("failed", Verdict::Failed(format!("{message}{tail}"))),
        (None, true) => (
            if baseline_missing {
                "no baseline"
            } else {
                "below baseline"
            },
            Verdict::Failed(format!(
                "robustness test `{name}` {}\n\n{report}{tail}",
                if baseline_missing {
                    "has no committed baseline to compare with"
                } else {
                    "fell below its baseline"
                }
            )),
        ),
        (None, false) => ("passed", Verdict::Passed(format!("{report}{tail}"))),
    };
    if let Some(folder) = &folder {
        let message = verdict.message();
        let baseline = comparison.as_ref().map(|(text, c)| {
            // A metric missing from the changes is as the baseline has it.
            let before = report
                .metrics()
                .into_iter()
                .map(|m| {
                    let change = c.changes.iter().find(|ch| ch.metric == m.name);
                    let value = match change {
                        Some(ch) => ch.before,
                        None => (c.verdict != baseline::Verdict::Missing).then_some(m.value),
                    };
                    (m.name, value)
                })
                .collect::<Vec<_>>();
            (c.path.clone(), text.clone(), before)
        });
        let record = report::TestRecord::of(report, label, message, baseline);
        // Like the report files: for people and dashboards, not part of the verdict.
        let _ = record.write(folder);
    }
    verdict
}
