//! `cargo robust`: the command a crate that uses robust runs (the `cargo-robust` binary of this
//! package, which `cargo install robust-runtime` puts on the `PATH`).
//!
//! ```text
//! cargo robust review                       pending baselines next to the committed ones
//! cargo robust bless [--reject] [FILTER]    accept (or discard) the pending baselines
//! cargo robust run [SUITE.toml] [--junit FILE] [--json FILE] [--filter WORD] [--include-ignored]
//!                                           run a declarative suite: exit 0 pass, 1 fail, 2 could not run
//! cargo robust report [--filter WORD]       target/robust/index.html over every test's last run
//! cargo robust verify MODEL.onnx PROPERTY.vnnlib [--timeout S] [--counterexample FILE]
//!                                           decide a VNN-LIB property: prints sat, unsat or unknown
//! ```
//!
//! It works on the crate in the current folder (the nearest `Cargo.toml` above it) and its
//! workspace: baselines live in `robust-baselines/` beside each member's `Cargo.toml`, report
//! files in the workspace's target folder, as `cargo metadata` reports them. `cargo xtask
//! review` / `bless` in this repository call the same functions.

mod junit;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use crate::baseline::{self, Pending};
use crate::harness::{Suite, TrialResult, Verdict};
use crate::report;
use crate::{Error, Result};

pub use junit::junit_xml;

/// The suite `cargo robust run` reads when none is named.
pub const DEFAULT_SUITE: &str = "tests/robustness.toml";

const USAGE: &str = "usage: cargo robust review
       cargo robust bless [--reject] [FILTER]
       cargo robust run [SUITE.toml] [--junit FILE] [--json FILE] [--filter WORD] [--include-ignored]
       cargo robust report [--filter WORD]
       cargo robust verify MODEL.onnx PROPERTY.vnnlib [--timeout S] [--counterexample FILE]";

/// Where a command works: the crate in the current folder and its workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    /// The folder of the crate's `Cargo.toml`.
    pub crate_dir: PathBuf,
    /// Every workspace member's folder (the crate's alone when `cargo metadata` cannot say).
    pub members: Vec<PathBuf>,
    /// The target folder (`CARGO_TARGET_DIR`, or cargo's own choice).
    pub target_dir: PathBuf,
}

impl Project {
    /// The crate whose `Cargo.toml` is nearest above `start`.
    ///
    /// # Errors
    /// When no `Cargo.toml` is above `start`.
    pub fn find(start: &Path) -> Result<Project> {
        let crate_dir = start
            .ancestors()
            .find(|d| d.join("Cargo.toml").is_file())
            .ok_or_else(|| {
                Error::param(
                    "folder",
                    start.display().to_string(),
                    "a folder inside a crate (no Cargo.toml above it)",
                )
            })?
            .to_path_buf();
        let metadata =
            std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
                .args([
                    "metadata",
                    "--no-deps",
                    "--format-version",
                    "1",
                    "--offline",
                ])
                .current_dir(&crate_dir)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok());
        let mut members = vec![crate_dir.clone()];
        let mut target_dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate_dir.join("target"));
        if let Some(m) = metadata {
            if let Some(t) = m["target_directory"].as_str() {
                target_dir = PathBuf::from(t);
            }
            if let Some(packages) = m["packages"].as_array() {
                members = packages
                    .iter()
                    .filter_map(|p| p["manifest_path"].as_str())
                    .filter_map(|p| Path::new(p).parent().map(Path::to_path_buf))
                    .collect();
                members.sort();
                members.dedup();
            }
        }
        if target_dir.is_relative() {
            target_dir = crate_dir.join(target_dir);
        }
        Ok(Project {
            crate_dir,
            members,
            target_dir,
        })
    }

    /// `target/robust/`, where tests leave their report folders.
    pub fn robust_dir(&self) -> PathBuf {
        self.target_dir.join("robust")
    }

    /// The pending baselines of every member whose path contains `filter`.
    pub fn pending(&self, filter: Option<&str>) -> Result<Vec<Pending>> {
        let mut all = Vec::new();
        for member in &self.members {
            let dir = member.join(baseline::BASELINE_DIR);
            all.extend(
                baseline::pending(&dir)?
                    .into_iter()
                    .filter(|p| filter.is_none_or(|f| p.pending.to_string_lossy().contains(f))),
            );
        }
        Ok(all)
    }
}

/// `cargo robust review`: each pending baseline next to the committed one, metric by metric.
pub fn review(project: &Project, out: &mut dyn std::io::Write) -> Result<usize> {
    let pending = project.pending(None)?;
    let io = |e| Error::io("standard output", e);
    if pending.is_empty() {
        writeln!(out, "no pending baselines").map_err(io)?;
        return Ok(0);
    }
    for p in &pending {
        writeln!(out, "{}\n", p.describe()?).map_err(io)?;
    }
    writeln!(
        out,
        "{} pending; accept with `cargo robust bless`, discard with `cargo robust bless --reject`",
        pending.len()
    )
    .map_err(io)?;
    Ok(pending.len())
}

/// `cargo robust bless [--reject] [FILTER]`: accepts (or discards) the pending baselines whose
/// path contains `filter`; returns how many.
pub fn bless(
    project: &Project,
    reject: bool,
    filter: Option<&str>,
    out: &mut dyn std::io::Write,
) -> Result<usize> {
    let pending = project.pending(filter)?;
    let io = |e| Error::io("standard output", e);
    for p in &pending {
        if reject {
            p.reject()?;
            writeln!(out, "discarded {}", p.pending.display()).map_err(io)?;
        } else {
            p.accept()?;
            writeln!(out, "blessed   {}", p.baseline.display()).map_err(io)?;
        }
    }
    if pending.is_empty() {
        writeln!(out, "no pending baselines").map_err(io)?;
    }
    Ok(pending.len())
}

/// What `cargo robust run` was asked to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// The suite file, relative to the crate (default [`DEFAULT_SUITE`]).
    pub suite: Option<PathBuf>,
    /// Where to write JUnit XML.
    pub junit: Option<PathBuf>,
    /// Where to write the results as JSON.
    pub json: Option<PathBuf>,
    /// Run only trials whose name contains this.
    pub filter: Option<String>,
    /// Run the `ignore = true` trials too.
    pub include_ignored: bool,
}

/// `cargo robust run`: every trial of the suite in order, each printed as it ends, then the
/// failures and a summary; JUnit / JSON written when asked. Returns the results.
///
/// # Errors
/// When the suite cannot be read (a mistake in the file stops it before anything runs) or an
/// output file cannot be written.
pub fn run(
    project: &Project,
    options: &RunOptions,
    out: &mut dyn std::io::Write,
) -> Result<Vec<TrialResult>> {
    let suite_path = options
        .suite
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SUITE));
    let suite = Suite::from_file(&project.crate_dir, &suite_path)?;
    let io = |e| Error::io("standard output", e);
    let started = Instant::now();
    let progress = std::cell::RefCell::new(&mut *out);
    let results = suite.run_each(
        options.filter.as_deref(),
        options.include_ignored,
        |name| {
            let mut out = progress.borrow_mut();
            let _ = write!(out, "test {name} ... ");
            let _ = out.flush();
        },
        |r| {
            let _ = writeln!(
                progress.borrow_mut(),
                "{} ({:.1} s)",
                r.verdict_word(),
                r.seconds
            );
        },
    )?;
    for r in &results {
        if matches!(r.verdict, Some(Verdict::Failed(_) | Verdict::Error(_))) {
            writeln!(out, "\n---- {} ----\n{}", r.name, r.message()).map_err(io)?;
        }
    }
    if results.is_empty() {
        writeln!(
            out,
            "no trial of {} matches{}: nothing ran",
            suite_path.display(),
            options
                .filter
                .as_deref()
                .map_or(String::new(), |f| format!(" `--filter {f}`"))
        )
        .map_err(io)?;
    }
    let count = |f: fn(&TrialResult) -> bool| results.iter().filter(|r| f(r)).count();
    writeln!(
        out,
        "\nsuite {}: {} passed; {} failed; {} could not run; {} ignored; finished in {:.1} s",
        suite_path.display(),
        count(|r| matches!(r.verdict, Some(Verdict::Passed(_)))),
        count(|r| matches!(r.verdict, Some(Verdict::Failed(_)))),
        count(|r| matches!(r.verdict, Some(Verdict::Error(_)))),
        count(|r| r.verdict.is_none()),
        started.elapsed().as_secs_f64()
    )
    .map_err(io)?;
    let suite_name = suite_path
        .file_stem()
        .map_or("suite".into(), |s| s.to_string_lossy().into_owned());
    if let Some(path) = &options.junit {
        let path = project.crate_dir.join(path);
        std::fs::write(&path, junit_xml(&suite_name, &results)).map_err(|e| Error::io(&path, e))?;
    }
    if let Some(path) = &options.json {
        let path = project.crate_dir.join(path);
        let json = serde_json::to_string_pretty(&results)
            .map_err(|e| Error::format("JSON", &path, e.to_string()))?;
        std::fs::write(&path, json + "\n").map_err(|e| Error::io(&path, e))?;
    }
    Ok(results)
}

/// The exit code of a run: 0 when every trial that ran passed, 1 when one failed, 2 when one
/// could not run or when no trial matched (a mistyped `--filter` must not pass a CI job).
pub fn exit_code(results: &[TrialResult]) -> u8 {
    if results.is_empty()
        || results
            .iter()
            .any(|r| matches!(r.verdict, Some(Verdict::Error(_))))
    {
        2
    } else if results
        .iter()
        .any(|r| matches!(r.verdict, Some(Verdict::Failed(_))))
    {
        1
    } else {
        0
    }
}

/// `cargo robust report [--filter WORD]`: writes `target/robust/index.html` over the tests
/// whose name contains `filter` (every test for `None`).
pub fn report(project: &Project, filter: Option<&str>) -> Result<report::Page> {
    report::write_page(&project.robust_dir(), filter)
}

/// The whole command line of `cargo robust` (`args` without the program name; a leading
/// `robust`, as cargo passes it, is skipped).
pub fn main(args: impl IntoIterator<Item = String>) -> ExitCode {
    let mut args: Vec<String> = args.into_iter().collect();
    if args.first().map(String::as_str) == Some("robust") {
        args.remove(0);
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let project = match Project::find(&cwd) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // Report files of the suite's trials go where the crate's tests put theirs.
    if std::env::var_os("CARGO_TARGET_DIR").is_none() {
        std::env::set_var("CARGO_TARGET_DIR", &project.target_dir);
    }
    let stdout = &mut std::io::stdout();
    let result: Result<u8> = match args.first().map(String::as_str) {
        Some("review") => review(&project, stdout).map(|_| 0),
        Some("bless") => {
            let reject = args.iter().any(|a| a == "--reject");
            let filter = args[1..].iter().find(|a| !a.starts_with("--"));
            bless(&project, reject, filter.map(String::as_str), stdout).map(|_| 0)
        }
        Some("run") => match parse_run(&args[1..]) {
            Ok(options) => run(&project, &options, stdout).map(|r| exit_code(&r)),
            Err(message) => {
                eprintln!("error: {message}\n{USAGE}");
                return ExitCode::from(2);
            }
        },
        Some("report") => match parse_report(&args[1..]) {
            Err(message) => {
                eprintln!("error: {message}\n{USAGE}");
                return ExitCode::from(2);
            }
            Ok(filter) => report(&project, filter),
        }
        .map(|page| {
            println!(
                "wrote {} ({} tests, {} failed)",
                page.path.display(),
                page.tests,
                page.failed
            );
            for s in &page.skipped {
                eprintln!("warning: skipped {s}");
            }
            0
        }),
        Some("verify") => match parse_verify(&args[1..]) {
            Ok(options) => verify(&options, stdout),
            Err(message) => {
                eprintln!("error: {message}\n{USAGE}");
                return ExitCode::from(2);
            }
        },
        Some("help" | "--help" | "-h") => {
            println!("{USAGE}");
            Ok(0)
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// What `cargo robust verify` was asked.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyOptions {
    /// The ONNX network.
    pub model: PathBuf,
    /// The VNN-LIB property.
    pub property: PathBuf,
    /// The budget in seconds (VNN-COMP's per-instance timeout).
    pub timeout: f64,
    /// Where to write the counterexample of a `sat` verdict.
    pub counterexample: Option<PathBuf>,
}

fn parse_verify(args: &[String]) -> std::result::Result<VerifyOptions, String> {
    let (mut files, mut timeout, mut counterexample) = (Vec::new(), 120.0, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--timeout" => {
                let v = it.next().ok_or("`--timeout` needs a value")?;
                timeout = v
                    .parse::<f64>()
                    .ok()
                    .filter(|t| t.is_finite() && *t > 0.0)
                    .ok_or_else(|| {
                        format!("`--timeout {v}`: expected seconds, a positive number")
                    })?;
            }
            "--counterexample" => {
                counterexample = Some(it.next().ok_or("`--counterexample` needs a file")?.into())
            }
            flag if flag.starts_with("--") => {
                return Err(format!(
                    "unknown option `{flag}`; expected --timeout or --counterexample"
                ))
            }
            file => files.push(PathBuf::from(file)),
        }
    }
    match <[PathBuf; 2]>::try_from(files) {
        Ok([model, property]) => Ok(VerifyOptions {
            model,
            property,
            timeout,
            counterexample,
        }),
        Err(files) => Err(format!(
            "expected MODEL.onnx and PROPERTY.vnnlib, got {} file(s)",
            files.len()
        )),
    }
}

/// `cargo robust verify`: decides the property on the network with [`crate::verify::verify`],
/// prints `sat`, `unsat` or `unknown` (VNN-COMP's words) and, for `sat`, writes the
/// counterexample as VNN-COMP's scripts read it (`((X_0 v) … (Y_0 v) …)`). Exit 0 for any
/// verdict.
pub fn verify(options: &VerifyOptions, out: &mut impl std::io::Write) -> Result<u8> {
    use crate::verify::{self, Verdict};
    let graph = crate::nn::Graph::from_onnx(&options.model, &candle_core::Device::Cpu)?;
    let model = crate::Model::new(graph).named(options.model.display().to_string());
    let property = crate::vnnlib::Property::from_file(&options.property)?;
    let run = verify::Options {
        timeout: std::time::Duration::from_secs_f64(options.timeout),
        ..verify::Options::default()
    };
    let outcome = verify::verify(&model, &property, &run)?;
    writeln!(out, "{}", outcome.verdict.vnncomp()).map_err(|e| Error::io("standard output", e))?;
    eprintln!(
        "{} in {:.2} s ({}, {} branches)",
        outcome.verdict.vnncomp(),
        outcome.time.as_secs_f64(),
        outcome.stage,
        outcome.branches
    );
    if let (Verdict::Falsified(x), Some(file)) = (&outcome.verdict, &options.counterexample) {
        let y = verify::outputs(&model, x)?;
        std::fs::write(file, counterexample_text(x, &y)).map_err(|e| Error::io(file, e))?;
    }
    Ok(0)
}

/// A counterexample as VNN-COMP's result files give it: `sat`, then `((X_i v) … (Y_j v))`.
pub fn counterexample_text(x: &[f64], y: &[f64]) -> String {
    let mut text = String::from("sat\n(");
    let pairs = (x.iter().enumerate().map(|(i, v)| format!("(X_{i} {v:e})")))
        .chain(y.iter().enumerate().map(|(j, v)| format!("(Y_{j} {v:e})")));
    text.push_str(&pairs.collect::<Vec<_>>().join("\n "));
    text.push_str(")\n");
    text
}

/// The `--filter` of `cargo robust report`, the only option it takes.
fn parse_report(args: &[String]) -> std::result::Result<Option<&str>, String> {
    match args {
        [] => Ok(None),
        [flag, word] if flag == "--filter" => Ok(Some(word)),
        [flag] if flag == "--filter" => Err("`--filter` needs a value".into()),
        [other, ..] => Err(format!(
            "unknown argument `{other}`; expected --filter WORD"
        )),
    }
}

fn parse_run(args: &[String]) -> std::result::Result<RunOptions, String> {
    let mut o = RunOptions::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("`{flag}` needs a value"))
        };
        match a.as_str() {
            "--junit" => o.junit = Some(value("--junit")?.into()),
            "--json" => o.json = Some(value("--json")?.into()),
            "--filter" => o.filter = Some(value("--filter")?),
            "--include-ignored" => o.include_ignored = true,
            flag if flag.starts_with("--") => {
                return Err(format!(
                "unknown option `{flag}`; expected --junit, --json, --filter or --include-ignored"
            ))
            }
            path if o.suite.is_none() => o.suite = Some(path.into()),
            extra => return Err(format!("a second suite file `{extra}`; expected one")),
        }
    }
    Ok(o)
}

#[cfg(test)]
mod should {
    use super::*;

    #[test]
    fn read_the_verify_options_and_refuse_bad_ones() {
        let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let o = parse_verify(&args(
            "m.onnx p.vnnlib --timeout 30 --counterexample ce.txt",
        ))
        .unwrap();
        assert_eq!(
            o,
            VerifyOptions {
                model: "m.onnx".into(),
                property: "p.vnnlib".into(),
                timeout: 30.0,
                counterexample: Some("ce.txt".into()),
            }
        );
        assert_eq!(
            parse_verify(&args("m.onnx p.vnnlib")).unwrap().timeout,
            120.0
        );
        for (bad, says) in [
            ("m.onnx", "got 1 file"),
            ("m.onnx p.vnnlib q.vnnlib", "got 3 file"),
            ("m.onnx p.vnnlib --timeout", "needs a value"),
            ("m.onnx p.vnnlib --timeout -3", "positive"),
            ("m.onnx p.vnnlib --timeout inf", "positive"),
            ("m.onnx p.vnnlib --fast", "unknown option `--fast`"),
        ] {
            let e = parse_verify(&args(bad)).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn write_counterexamples_as_vnncomp_reads_them() {
        let text = counterexample_text(&[0.5, 0.25], &[1.0, -2.0]);
        assert_eq!(
            text,
            "sat\n((X_0 5e-1)\n (X_1 2.5e-1)\n (Y_0 1e0)\n (Y_1 -2e0))\n"
        );
    }

    #[test]
    fn read_the_run_options_and_refuse_unknown_ones() {
        let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let o = parse_run(&args("s.toml --junit j.xml --filter pgd --include-ignored")).unwrap();
        assert_eq!(o.suite, Some(PathBuf::from("s.toml")));
        assert_eq!(o.junit, Some(PathBuf::from("j.xml")));
        assert_eq!(o.filter.as_deref(), Some("pgd"));
        assert!(o.include_ignored && o.json.is_none());
        assert!(parse_run(&args("--junit"))
            .unwrap_err()
            .contains("needs a value"));
        assert!(parse_run(&args("--fast"))
            .unwrap_err()
            .contains("unknown option"));
        assert!(parse_run(&args("a.toml b.toml"))
            .unwrap_err()
            .contains("second suite"));
        assert_eq!(parse_report(&args("--filter pgd")), Ok(Some("pgd")));
        assert_eq!(parse_report(&[]), Ok(None));
        assert!(parse_report(&args("--filter"))
            .unwrap_err()
            .contains("needs a value"));
        assert!(parse_report(&args("--open"))
            .unwrap_err()
            .contains("unknown argument `--open`"));
    }

    #[test]
    fn exit_with_two_when_a_trial_could_not_run_and_one_when_one_failed() {
        let r = |v: Option<Verdict>| TrialResult {
            name: "s::m::t".into(),
            verdict: v,
            seconds: 0.0,
        };
        assert_eq!(
            exit_code(&[r(Some(Verdict::Passed("".into()))), r(None)]),
            0
        );
        assert_eq!(exit_code(&[r(Some(Verdict::Failed("".into())))]), 1);
        assert_eq!(exit_code(&[]), 2);
        assert_eq!(
            exit_code(&[
                r(Some(Verdict::Failed("".into()))),
                r(Some(Verdict::Error("".into())))
            ]),
            2
        );
    }
}
