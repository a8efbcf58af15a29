//! `result.json`: the verdict of a test's last run, in one layout for every kind of test, beside
//! its report files. `cargo robust report` builds its page from these files
//! ([`super::page`]); CI dashboards can read them too.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::outcome::Outcome;
use crate::{Error, Result};

/// The file name of a [`TestRecord`] in a test's report folder.
pub const RECORD_FILE: &str = "result.json";

/// Format version of [`TestRecord`]; a reader refuses other versions.
pub const RECORD_FORMAT: u32 = 1;

/// What one run of one test concluded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestRecord {
    /// [`RECORD_FORMAT`].
    pub format: u32,
    /// The test's full name (`module::function::case`).
    pub test: String,
    /// `attack`, `certification` or `perturbation` (the report's provenance kind).
    pub kind: String,
    /// The model's name.
    pub model: String,
    /// What ran, in words (attack or certifier and its parameters).
    pub config: String,
    /// Whether the test passed (thresholds and baseline).
    pub passed: bool,
    /// `passed`, `failed` (a threshold), `below baseline` or `no baseline`.
    pub verdict: String,
    /// The failure message, or the report of a pass.
    pub message: String,
    /// The report's metrics: the gated shares and the recorded norms.
    pub metrics: Vec<RecordMetric>,
    /// The comparison with the committed baseline, when the test has one.
    pub baseline: Option<RecordBaseline>,
    /// When the run ended, in seconds since the Unix epoch.
    pub finished: u64,
}

/// One metric of a [`TestRecord`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordMetric {
    /// `clean_accuracy`, `robust_accuracy`, `mean_linf`, …
    pub name: String,
    /// This run's value.
    pub value: f64,
    /// A share compared with thresholds and baselines, rather than a recorded norm.
    pub gated: bool,
    /// The baseline's value, when the test has a baseline that records this metric.
    pub baseline: Option<f64>,
}

/// The baseline part of a [`TestRecord`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordBaseline {
    /// The committed baseline file.
    pub path: PathBuf,
    /// The comparison in words (as the test prints it).
    pub summary: String,
}

impl TestRecord {
    /// The record of `outcome`, judged `verdict` with `message`; `baseline` is the comparison
    /// (its file, its summary, and each metric's baseline value).
    pub fn of<R: Outcome>(
        outcome: &R,
        verdict: &str,
        message: &str,
        baseline: Option<(PathBuf, String, Vec<(String, Option<f64>)>)>,
    ) -> Self {
        let provenance = outcome.provenance();
        let before = |name: &str| {
            baseline.as_ref().and_then(|(_, _, values)| {
                values.iter().find(|(n, _)| n == name).and_then(|(_, v)| *v)
            })
        };
        let metrics = outcome
            .metrics()
            .into_iter()
            .map(|m| RecordMetric {
                baseline: before(&m.name),
                name: m.name,
                value: m.value,
                gated: m.gated,
            })
            .collect();
        TestRecord {
            format: RECORD_FORMAT,
            test: outcome.test().to_string(),
            kind: provenance.kind,
            model: provenance.model,
            config: provenance.config,
            passed: verdict == "passed",
            verdict: verdict.to_string(),
            message: message.to_string(),
            metrics,
            baseline: baseline.map(|(path, summary, _)| RecordBaseline { path, summary }),
            finished: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// The value of metric `name`, if the report has it.
    pub fn metric(&self, name: &str) -> Option<&RecordMetric> {
        self.metrics.iter().find(|m| m.name == name)
    }

    /// Writes the record as `result.json` in `dir`.
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join(RECORD_FILE);
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| Error::format("JSON", &path, e.to_string()))?;
        std::fs::write(&path, json + "\n").map_err(|e| Error::io(&path, e))?;
        Ok(path)
    }

    /// Reads a `result.json`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let record: TestRecord = serde_json::from_str(&text).map_err(|e| {
            Error::format(
                "test record",
                path,
                format!("{e}; expected the result.json a robust test writes"),
            )
        })?;
        if record.format != RECORD_FORMAT {
            return Err(Error::format(
                "test record",
                path,
                format!(
                    "format version {} (expected {RECORD_FORMAT}); rerun the tests to rewrite it",
                    record.format
                ),
            ));
        }
        Ok(record)
    }
}

/// Every `result.json` under `dir` (the `target/robust/` folder), sorted by test name. Files
/// that cannot be read are returned as errors beside the records, so one stale file does not
/// hide the others.
pub fn records(dir: &Path) -> (Vec<(PathBuf, TestRecord)>, Vec<Error>) {
    let mut found = Vec::new();
    let mut errors = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == RECORD_FILE) {
                match TestRecord::read(&path) {
                    Ok(r) => found.push((path, r)),
                    Err(e) => errors.push(e),
                }
            }
        }
    }
    found.sort_by(|a, b| a.1.test.cmp(&b.1.test));
    (found, errors)
}
