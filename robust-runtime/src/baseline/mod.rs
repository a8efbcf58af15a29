//! Committed baselines: a test with `baseline = true` (or a `tolerance`) records its metrics in
//! `robust-baselines/<test path>.json` beside the test crate's `Cargo.toml`, and later runs fail
//! when a metric falls further below it than the tolerance (default one percentage point).
//!
//! The workflow follows insta's snapshots:
//!
//! | `ROBUST_UPDATE` | missing baseline | metrics changed | writes |
//! |---|---|---|---|
//! | `auto` (default) | `new` locally, `no` when `CI` is set | | |
//! | `new` | fails, writes `<file>.json.new` | writes `<file>.json.new` | pending files only |
//! | `always` (or `ROBUST_BLESS=1`) | records it, passes | re-records it, passes | the baseline itself |
//! | `no` | fails | | nothing |
//!
//! A regression beyond the tolerance fails in every mode but `always`. Improvements pass and say
//! so. A baseline that cannot be used (bad JSON, another format, another test's file, a gated
//! metric missing on either side) is an error in every mode but `always`, which replaces it
//! and says why ([`Verdict::Replaced`]). `cargo robust review` shows the pending `.new` files next to their baselines and
//! `cargo robust bless` accepts them ([`pending`], [`Pending::accept`]).
//!
//! Gated metrics are shares where higher is better (clean, robust, certified accuracy,
//! invariance, the points of a curve); perturbation norms are recorded and shown but never
//! failed on, since whether a larger norm is better depends on the attack. A baseline also
//! records what produced it ([`Provenance`]): a changed attack configuration, seed, sample count,
//! data or model fingerprint is reported next to the verdict.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::report::{Metric, Outcome, Provenance};
use crate::{Error, Result};

/// Folder, beside the test crate's `Cargo.toml`, that holds the baselines.
pub const BASELINE_DIR: &str = "robust-baselines";
/// Environment variable choosing the [`UpdateMode`].
pub const UPDATE_VAR: &str = crate::env::UPDATE.name;
/// Environment variable that, set to `1`, means `ROBUST_UPDATE=always`.
pub const BLESS_VAR: &str = crate::env::BLESS.name;
/// Suffix of a pending baseline, waiting for `cargo robust bless`.
pub const PENDING_SUFFIX: &str = ".new";
/// Version of the file format.
pub const FORMAT: u32 = 1;

/// What a run may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpdateMode {
    /// Write the baseline itself; nothing fails for differing from it.
    Always,
    /// Write `<file>.json.new` beside a missing or changed baseline.
    New,
    /// Write nothing (CI).
    No,
}

impl UpdateMode {
    /// From `ROBUST_BLESS`, `ROBUST_UPDATE` and `CI`, as insta reads `INSTA_UPDATE` and `CI`.
    pub fn from_env() -> Result<Self> {
        use crate::env::{get, BLESS, CI, UPDATE};
        Self::resolve(get(BLESS), get(UPDATE), get(CI))
    }

    /// The mode for these variable values (`None`: unset).
    pub fn resolve(bless: Option<&str>, update: Option<&str>, ci: Option<&str>) -> Result<Self> {
        if let Some(b) = bless {
            match b {
                "1" | "true" | "yes" => return Ok(UpdateMode::Always),
                "0" | "false" | "no" => {}
                other => return Err(Error::param(BLESS_VAR, other, "1 or 0")),
            }
        }
        let in_ci = ci.is_some_and(|v| v != "0" && v != "false");
        match update.unwrap_or("auto") {
            "auto" if in_ci => Ok(UpdateMode::No),
            "auto" | "new" => Ok(UpdateMode::New),
            "always" => Ok(UpdateMode::Always),
            "no" => Ok(UpdateMode::No),
            other => Err(Error::param(
                UPDATE_VAR,
                other,
                "one of auto, always, new, no",
            )),
        }
    }
}

/// The contents of a baseline file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    /// File format version ([`FORMAT`]).
    pub format: u32,
    /// The test it belongs to.
    pub test: String,
    /// Shares where higher is better, compared with the tolerance.
    pub metrics: BTreeMap<String, f64>,
    /// Recorded for information (perturbation norms).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub info: BTreeMap<String, f64>,
    /// What produced it.
    pub provenance: Provenance,
}

impl Baseline {
    /// The baseline a report would record.
    pub fn of(outcome: &dyn OutcomeView) -> Self {
        let mut metrics = BTreeMap::new();
        let mut info = BTreeMap::new();
        for Metric { name, value, gated } in outcome.metrics() {
            if gated {
                metrics.insert(name, value);
            } else {
                // Norms are sums of floats: seven significant digits keep the file stable
                // across machines whose last bits differ.
                info.insert(name, round_significant(value));
            }
        }
        Baseline {
            format: FORMAT,
            test: outcome.test().to_string(),
            metrics,
            info,
            provenance: outcome.provenance(),
        }
    }

    /// Reads and validates a baseline file: a clear error for anything but what [`Baseline::write`]
    /// writes (bad JSON, unknown fields, another format version, values that are not finite
    /// shares).
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let baseline: Baseline = serde_json::from_str(&text).map_err(|e| {
            Error::format(
                "baseline",
                path,
                format!(
                    "{e}; expected the JSON `cargo test` writes for a baseline (re-record it with \
                     ROBUST_BLESS=1 cargo test)"
                ),
            )
        })?;
        if baseline.format != FORMAT {
            return Err(Error::format(
                "baseline",
                path,
                format!(
                    "format {} is not understood; expected format {FORMAT}",
                    baseline.format
                ),
            ));
        }
        if let Some((name, value)) = baseline
            .metrics
            .iter()
            .find(|(_, v)| !(v.is_finite() && (0.0..=1.0).contains(*v)))
        {
            return Err(Error::format(
                "baseline",
                path,
                format!("metric `{name}` is {value}; expected a share in [0, 1]"),
            ));
        }
        if baseline.metrics.is_empty() {
            return Err(Error::format(
                "baseline",
                path,
                "it records no metrics; expected at least one".to_string(),
            ));
        }
        Ok(baseline)
    }

    /// Writes it as pretty JSON (keys sorted, so diffs in review are small), creating folders.
    pub fn write(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let mut json = serde_json::to_string_pretty(self)
            .map_err(|e| Error::format("baseline", path, e.to_string()))?;
        json.push('\n');
        std::fs::write(path, json).map_err(|e| Error::io(path, e))
    }
}

fn round_significant(v: f64) -> f64 {
    format!("{v:.6e}").parse().unwrap_or(v)
}

/// [`Outcome`] without its serde bound, so it can be a trait object.
pub trait OutcomeView {
    /// See [`Outcome::test`].
    fn test(&self) -> &str;
    /// See [`Outcome::metrics`].
    fn metrics(&self) -> Vec<Metric>;
    /// See [`Outcome::provenance`].
    fn provenance(&self) -> Provenance;
}

impl<T: Outcome> OutcomeView for T {
    fn test(&self) -> &str {
        Outcome::test(self)
    }
    fn metrics(&self) -> Vec<Metric> {
        Outcome::metrics(self)
    }
    fn provenance(&self) -> Provenance {
        Outcome::provenance(self)
    }
}

/// `<manifest_dir>/robust-baselines/<test path with :: as __>.json`
/// (`robustness_tests::mnist_cnn::pgd_eps_0_1` → `robustness_tests__mnist_cnn__pgd_eps_0_1.json`).
pub fn path_for(manifest_dir: &Path, test: &str) -> PathBuf {
    let name: Vec<String> = test.split("::").map(crate::report::sanitize).collect();
    manifest_dir
        .join(BASELINE_DIR)
        .join(format!("{}.json", name.join("__")))
}

/// The pending file of a baseline: `<file>.json.new`.
pub fn pending_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(PENDING_SUFFIX);
    PathBuf::from(p)
}

/// How one metric compares with its baseline.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Metric name.
    pub metric: String,
    /// Baseline value (`None`: new metric).
    pub before: Option<f64>,
    /// This run's value (`None`: no longer measured).
    pub after: Option<f64>,
    /// Whether it is a gated share (compared with the tolerance) rather than a recorded norm.
    pub gated: bool,
    /// Whether it is a gated metric that fell by more than the tolerance.
    pub regressed: bool,
}

/// The outcome of comparing a run with its baseline.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// The baseline file.
    pub path: PathBuf,
    /// What this run did about it.
    pub verdict: Verdict,
    /// Metrics that differ from the baseline (all of them for a new baseline).
    pub changes: Vec<Change>,
    /// Provenance fields that differ: (field, baseline, now).
    pub provenance: Vec<(String, String, String)>,
    /// The tolerance used.
    pub tolerance: f64,
    /// Why the baseline on disk could not be used, when `ROBUST_UPDATE=always` replaced it
    /// ([`Verdict::Replaced`]).
    pub replaced: Option<String>,
}

/// What a comparison concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Same metrics as the baseline.
    Unchanged,
    /// Every gated metric within tolerance; some better or slightly worse.
    WithinTolerance,
    /// Some gated metric fell by more than the tolerance: the test fails.
    Regressed,
    /// No baseline on disk: fails unless the mode records it.
    Missing,
    /// The baseline was (re-)recorded (`ROBUST_UPDATE=always`).
    Recorded,
    /// The baseline on disk could not be read or trusted, and `ROBUST_UPDATE=always`
    /// (`ROBUST_BLESS=1`) replaced it with this run's ([`Comparison::replaced`] says why).
    Replaced,
}

impl Comparison {
    /// Whether the test fails because of its baseline.
    pub fn failed(&self) -> bool {
        matches!(self.verdict, Verdict::Regressed | Verdict::Missing)
    }

    /// The comparison in words: a verdict line, then one line per change.
    pub fn describe(&self, mode: UpdateMode) -> String {
        let path = self.path.display();
        let pending = pending_path(&self.path);
        let mut s = match self.verdict {
            Verdict::Unchanged => format!("baseline {path}: unchanged"),
            Verdict::WithinTolerance => format!(
                "baseline {path}: within tolerance ({} pp){}",
                pp(self.tolerance),
                if self
                    .changes
                    .iter()
                    .any(|c| c.gated && c.before.is_some() && c.after > c.before)
                {
                    "; improved, lock it in with `cargo robust bless`"
                } else {
                    ""
                }
            ),
            Verdict::Regressed => format!(
                "baseline {path}: REGRESSED beyond the tolerance of {} pp",
                pp(self.tolerance)
            ),
            Verdict::Missing => {
                format!("baseline {path}: missing (a test with a baseline needs one committed)")
            }
            Verdict::Recorded => format!("baseline {path}: recorded"),
            Verdict::Replaced => format!(
                "baseline {path}: replaced, the file could not be used ({})",
                self.replaced.as_deref().unwrap_or("unreadable")
            ),
        };
        for c in &self.changes {
            let fmt = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.4}"));
            let delta = match (c.before, c.after) {
                (Some(b), Some(a)) if c.gated => format!("  ({:+.2} pp)", 100.0 * (a - b)),
                (Some(b), Some(a)) => format!("  ({:+.4})", a - b),
                _ => String::new(),
            };
            let _ = write!(
                s,
                "\n    {} {:<28} {} → {}{delta}",
                if c.regressed { "✗" } else { " " },
                c.metric,
                fmt(c.before),
                fmt(c.after)
            );
        }
        for (field, before, now) in &self.provenance {
            let _ = write!(
                s,
                "\n    changed since the baseline: {field} `{before}` → `{now}`"
            );
        }
        let wrote_pending = mode == UpdateMode::New
            && !matches!(
                self.verdict,
                Verdict::Unchanged | Verdict::Recorded | Verdict::Replaced
            );
        if wrote_pending {
            let _ = write!(
                s,
                "\n    new values written to {}: review with `cargo robust review`, accept with \
                 `cargo robust bless`",
                pending.display()
            );
        } else if self.failed() {
            let _ = write!(
                s,
                "\n    if this is intended, re-record it: ROBUST_BLESS=1 cargo test, or run \
                 locally and `cargo robust bless`"
            );
        }
        s
    }
}

fn pp(v: f64) -> String {
    format!("{}", (100.0 * v * 1e6).round() / 1e6)
}

/// Compares `outcome` with its baseline at `path` and writes what `mode` allows.
///
/// Returns the comparison (whose [`Comparison::failed`] says whether the test fails), or an
/// error for a baseline file that cannot be read or trusted.
pub fn compare(
    outcome: &dyn OutcomeView,
    path: &Path,
    tolerance: f64,
    mode: UpdateMode,
) -> Result<Comparison> {
    let now = Baseline::of(outcome);
    let pending = pending_path(path);
    let mut replaced = None;
    let before = if path.exists() {
        match read_for(path, &now) {
            Ok(b) => Some(b),
            // Blessing is how a broken baseline is repaired: it is replaced, and the verdict
            // says what was wrong with it.
            Err(e) if mode == UpdateMode::Always => {
                replaced = Some(e.to_string());
                None
            }
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    let mut changes = Vec::new();
    let mut provenance = Vec::new();
    let mut verdict = match &before {
        None => {
            for (name, v) in &now.metrics {
                changes.push(Change {
                    metric: name.clone(),
                    before: None,
                    after: Some(*v),
                    gated: true,
                    regressed: false,
                });
            }
            if replaced.is_some() {
                Verdict::Replaced
            } else {
                Verdict::Missing
            }
        }
        Some(b) => {
            let names: std::collections::BTreeSet<&String> =
                b.metrics.keys().chain(now.metrics.keys()).collect();
            for name in names {
                let (old, new) = (b.metrics.get(name).copied(), now.metrics.get(name).copied());
                if old == new {
                    continue;
                }
                // 1e-12 absorbs the rounding of a share printed and parsed back.
                let regressed =
                    matches!((old, new), (Some(o), Some(n)) if n < o - tolerance - 1e-12);
                changes.push(Change {
                    metric: name.clone(),
                    before: old,
                    after: new,
                    gated: true,
                    regressed,
                });
            }
            for (name, new) in &now.info {
                let old = b.info.get(name).copied();
                if old != Some(*new) {
                    changes.push(Change {
                        metric: name.clone(),
                        before: old,
                        after: Some(*new),
                        gated: false,
                        regressed: false,
                    });
                }
            }
            let (p, q) = (&b.provenance, &now.provenance);
            let mut differ = |field: &str, a: String, c: String| {
                if a != c {
                    provenance.push((field.to_string(), a, c));
                }
            };
            differ("configuration", p.config.clone(), q.config.clone());
            differ("model", p.model.clone(), q.model.clone());
            differ("seed", p.seed.to_string(), q.seed.to_string());
            differ("samples", p.samples.to_string(), q.samples.to_string());
            differ(
                "data fingerprint",
                p.data_fingerprint.clone(),
                q.data_fingerprint.clone(),
            );
            differ(
                "model fingerprint (outputs)",
                p.model_fingerprint.clone(),
                q.model_fingerprint.clone(),
            );
            if changes.iter().any(|c| c.regressed) {
                Verdict::Regressed
            } else if changes.is_empty() {
                Verdict::Unchanged
            } else {
                Verdict::WithinTolerance
            }
        }
    };
    let same_file = before.as_ref() == Some(&now);
    match mode {
        UpdateMode::Always => {
            if !same_file {
                now.write(path)?;
                if verdict != Verdict::Replaced {
                    verdict = Verdict::Recorded;
                }
            }
            remove_if_present(&pending)?;
        }
        UpdateMode::New if same_file || verdict == Verdict::Unchanged && before.is_some() => {
            remove_if_present(&pending)?;
        }
        UpdateMode::New => now.write(&pending)?,
        UpdateMode::No => {}
    }
    Ok(Comparison {
        path: path.to_path_buf(),
        verdict,
        changes,
        provenance,
        tolerance,
        replaced,
    })
}

/// Reads the baseline at `path` and checks that it can judge `now`: it belongs to the same
/// test, and it records exactly the gated metrics `now` has. A gated metric missing on either
/// side (deleted, renamed or misspelt by hand) is an error: comparing only the metrics both
/// sides have would let a baseline without `robust_accuracy` pass every run.
fn read_for(path: &Path, now: &Baseline) -> Result<Baseline> {
    let b = Baseline::read(path)?;
    // A test's `_cuda` variant is compared with the test's own baseline.
    let variant_of = now.test.strip_suffix(crate::eval::CUDA_SUFFIX);
    if b.test != now.test && variant_of != Some(b.test.as_str()) {
        return Err(Error::format(
            "baseline",
            path,
            format!(
                "it records test `{}`; expected `{}` (a file copied from another test?)",
                b.test, now.test
            ),
        ));
    }
    /// The names of `of` that `other` lacks.
    fn lacking<'m>(of: &'m BTreeMap<String, f64>, other: &BTreeMap<String, f64>) -> Vec<&'m str> {
        of.keys()
            .filter(|k| !other.contains_key(*k))
            .map(String::as_str)
            .collect()
    }
    let missing = lacking(&now.metrics, &b.metrics);
    let unknown = lacking(&b.metrics, &now.metrics);
    if !missing.is_empty() || !unknown.is_empty() {
        let list = |names: &[&str]| {
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut found = Vec::new();
        if !missing.is_empty() {
            found.push(format!("it lacks the gated metric(s) {}", list(&missing)));
        }
        if !unknown.is_empty() {
            found.push(format!(
                "it records gated metric(s) {} that this test does not measure",
                list(&unknown)
            ));
        }
        let expected: Vec<&str> = now.metrics.keys().map(String::as_str).collect();
        return Err(Error::format(
            "baseline",
            path,
            format!(
                "{}; expected the gated metrics {} (a test's configuration changed, or the file \
                 was edited by hand? re-record it with ROBUST_BLESS=1 cargo test)",
                found.join(" and "),
                list(&expected)
            ),
        ));
    }
    Ok(b)
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

/// A `.new` file waiting for review.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    /// The baseline it would replace (which may not exist yet).
    pub baseline: PathBuf,
    /// The pending file.
    pub pending: PathBuf,
}

impl Pending {
    /// Replaces the baseline with the pending file.
    pub fn accept(&self) -> Result<()> {
        Baseline::read(&self.pending)?;
        std::fs::rename(&self.pending, &self.baseline).map_err(|e| Error::io(&self.pending, e))
    }

    /// Deletes the pending file.
    pub fn reject(&self) -> Result<()> {
        remove_if_present(&self.pending)
    }

    /// The pending values next to the baseline's, metric by metric.
    pub fn describe(&self) -> Result<String> {
        let new = Baseline::read(&self.pending)?;
        let old = if self.baseline.exists() {
            Some(Baseline::read(&self.baseline)?)
        } else {
            None
        };
        let mut s = format!(
            "{} ({})",
            self.baseline.display(),
            if old.is_some() { "changed" } else { "new" }
        );
        let _ = write!(s, "\n  test: {}", new.test);
        let _ = write!(s, "\n  {}: {}", new.provenance.kind, new.provenance.config);
        let all = new.metrics.iter().chain(&new.info);
        for (name, v) in all {
            let before = old
                .as_ref()
                .and_then(|o| o.metrics.get(name).or(o.info.get(name)).copied());
            let line = match before {
                Some(b) if b == *v => format!("{name:<28} {v:.4}"),
                Some(b) => format!("{name:<28} {b:.4} → {v:.4}  ({:+.2} pp)", 100.0 * (v - b)),
                None => format!("{name:<28} {v:.4}  (new)"),
            };
            let _ = write!(s, "\n  {line}");
        }
        if let Some(o) = &old {
            for (field, a, b) in [
                (
                    "seed",
                    o.provenance.seed.to_string(),
                    new.provenance.seed.to_string(),
                ),
                (
                    "samples",
                    o.provenance.samples.to_string(),
                    new.provenance.samples.to_string(),
                ),
                (
                    "data fingerprint",
                    o.provenance.data_fingerprint.clone(),
                    new.provenance.data_fingerprint.clone(),
                ),
                (
                    "model fingerprint",
                    o.provenance.model_fingerprint.clone(),
                    new.provenance.model_fingerprint.clone(),
                ),
                (
                    "configuration",
                    o.provenance.config.clone(),
                    new.provenance.config.clone(),
                ),
            ] {
                if a != b {
                    let _ = write!(s, "\n  {field}: {a} → {b}");
                }
            }
        }
        Ok(s)
    }
}

/// The pending baselines under `dir` (a `robust-baselines/` folder), sorted by path.
pub fn pending(dir: &Path) -> Result<Vec<Pending>> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let name = path.to_string_lossy();
        if let Some(baseline) = name.strip_suffix(PENDING_SUFFIX) {
            found.push(Pending {
                baseline: PathBuf::from(baseline),
                pending: path.clone(),
            });
        }
    }
    found.sort_by(|a, b| a.pending.cmp(&b.pending));
    Ok(found)
}
