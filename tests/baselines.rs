//! Committed baselines, the update workflow, confidence-bound assertions and report files, on
//! real runs of the MNIST MLP (FGSM on 200 digits takes milliseconds).
//!
//! Every test works in its own temporary folder and passes the update mode explicitly (or
//! leaves it to the environment only where every mode gives the same answer), so tests stay
//! independent of each other and of `CI`/`ROBUST_UPDATE` in the environment.

mod common;

use std::path::Path;

use robust_runtime::attack::{Fgsm, FgsmConfig};
use robust_runtime::baseline::{self, Baseline, UpdateMode, Verdict};
use robust_runtime::eval::{evaluate, Fingerprint, RunConfig, TestSpec, Thresholds};
use robust_runtime::harness;
use robust_runtime::prelude::*;

fn case() -> robust_runtime::Result<RobustnessCase> {
    Ok(RobustnessCase::from_model(
        common::mlp()?.named("mnist_mlp"),
        common::test_digits(200)?,
    ))
}

/// FGSM at ε = 0.05 on the MLP's first 200 test digits, with its fingerprint: 93.5 % clean,
/// 47.5 % robust.
fn report(test: &str) -> RobustnessReport {
    let case = case().unwrap();
    let fgsm = Fgsm::new(FgsmConfig {
        eps: 0.05,
        ..FgsmConfig::default()
    })
    .unwrap();
    let cfg = RunConfig {
        test_name: Some(test.into()),
        ..RunConfig::default()
    };
    let mut report = evaluate(&case, &fgsm, &cfg).unwrap();
    report.fingerprint = Some(Fingerprint::of(&case, None, 250, &Device::Cpu).unwrap());
    report
}

fn edit(path: &Path, f: impl FnOnce(&mut Baseline)) {
    let mut b = Baseline::read(path).unwrap();
    f(&mut b);
    b.write(path).unwrap();
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn measure_what_the_baseline_records() {
    let r = report("t");
    assert_eq!(
        (r.clean_correct, r.robust_correct, r.samples),
        (187, 95, 200)
    );
}

#[test]
fn a_missing_baseline_fails_and_ci_mode_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = baseline::path_for(dir.path(), "suite::mnist_mlp::fgsm_eps_0_05");
    assert!(path.ends_with("robust-baselines/suite__mnist_mlp__fgsm_eps_0_05.json"));
    let r = report("suite::mnist_mlp::fgsm_eps_0_05");
    let c = baseline::compare(&r, &path, 0.01, UpdateMode::No).unwrap();
    assert_eq!(c.verdict, Verdict::Missing);
    assert!(c.failed());
    assert!(files_in(&dir.path().join("robust-baselines")).is_empty());
    assert!(c.describe(UpdateMode::No).contains("missing"));
}

#[test]
fn bless_records_the_baseline_and_an_identical_rerun_passes_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = baseline::path_for(dir.path(), "t");
    let r = report("t");
    let c = baseline::compare(&r, &path, 0.01, UpdateMode::Always).unwrap();
    assert_eq!(c.verdict, Verdict::Recorded);
    let b = Baseline::read(&path).unwrap();
    assert_eq!(b.metrics["clean_accuracy"], 0.935);
    assert_eq!(b.metrics["robust_accuracy"], 0.475);
    assert_eq!(b.provenance.samples, 200);
    assert_eq!(b.provenance.data_fingerprint.len(), 16);
    for mode in [UpdateMode::No, UpdateMode::New, UpdateMode::Always] {
        let c = baseline::compare(&r, &path, 0.01, mode).unwrap();
        assert_eq!(c.verdict, Verdict::Unchanged, "{mode:?}");
        assert!(!c.failed());
    }
    assert_eq!(files_in(path.parent().unwrap()), ["t.json"]);
}

#[test]
fn a_regression_beyond_the_tolerance_fails_and_one_within_passes() {
    let dir = tempfile::tempdir().unwrap();
    let path = baseline::path_for(dir.path(), "t");
    let r = report("t");
    baseline::compare(&r, &path, 0.01, UpdateMode::Always).unwrap();
    // The committed model was 2 pp more robust than this run.
    edit(&path, |b| {
        b.metrics.insert("robust_accuracy".into(), 0.495);
    });
    let c = baseline::compare(&r, &path, 0.01, UpdateMode::No).unwrap();
    assert_eq!(c.verdict, Verdict::Regressed);
    assert!(c.failed());
    let regressed: Vec<&str> = c
        .changes
        .iter()
        .filter(|ch| ch.regressed)
        .map(|ch| ch.metric.as_str())
        .collect();
    assert_eq!(regressed, ["robust_accuracy"]);
    assert!(
        c.describe(UpdateMode::No).contains("-2.00 pp"),
        "{}",
        c.describe(UpdateMode::No)
    );
    // A 3 pp tolerance lets the same 2 pp fall through, and so does exactly the fall allowed.
    let c = baseline::compare(&r, &path, 0.03, UpdateMode::No).unwrap();
    assert_eq!(c.verdict, Verdict::WithinTolerance);
    assert!(!c.failed());
    let c = baseline::compare(&r, &path, 0.02, UpdateMode::No).unwrap();
    assert!(!c.failed());
    // Clean accuracy is gated too.
    edit(&path, |b| {
        b.metrics.insert("robust_accuracy".into(), 0.475);
        b.metrics.insert("clean_accuracy".into(), 0.96);
    });
    let c = baseline::compare(&r, &path, 0.01, UpdateMode::No).unwrap();
    assert_eq!(c.verdict, Verdict::Regressed);
}

#[test]
fn an_improvement_passes_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = baseline::path_for(dir.path(), "t");
    let r = report("t");
    baseline::compare(&r, &path, 0.01, UpdateMode::Always).unwrap();
    edit(&path, |b| {
        b.metrics.insert("robust_accuracy".into(), 0.4);
    });
    let c = baseline::compare(&r, &path, 0.01, UpdateMode::No).unwrap();
    assert_eq!(c.verdict, Verdict::WithinTolerance);
    let text = c.describe(UpdateMode::No);
    assert!(text.contains("improved"), "{text}");
    assert!(text.contains("+7.50 pp"), "{text}");
}

#[test]
fn new_mode_leaves_a_pending_file_that_bless_accepts_and_reject_discards() {
    let dir = tempfile::tempdir().unwrap();
    let path = baseline::path_for(dir.path(), "t");
    let r = report("t");
    baseline::compare(&r, &path, 0.01, UpdateMode::Always).unwrap();
    edit(&path, |b| {
        b.metrics.insert("robust_accuracy".into(), 0.6);
    });
    let c = baseline::compare(&r, &path, 0.01, UpdateMode::New).unwrap();
    assert!(c.failed());
    assert!(c.describe(UpdateMode::New).contains("cargo robust bless"));
    let folder = path.parent().unwrap();
    assert_eq!(files_in(folder), ["t.json", "t.json.new"]);
    // The baseline itself is untouched until blessed.
    assert_eq!(
        Baseline::read(&path).unwrap().metrics["robust_accuracy"],
        0.6
    );

    let pending = baseline::pending(folder).unwrap();
    assert_eq!(pending.len(), 1);
    let shown = pending[0].describe().unwrap();
    assert!(shown.contains("0.6000 → 0.4750"), "{shown}");
    pending[0].reject().unwrap();
    assert_eq!(files_in(folder), ["t.json"]);

    baseline::compare(&r, &path, 0.01, UpdateMode::New).unwrap();
    baseline::pending(folder).unwrap()[0].accept().unwrap();
    assert_eq!(files_in(folder), ["t.json"]);
    let c = baseline::compare(&r, &path, 0.01, UpdateMode::No).unwrap();
    assert_eq!(c.verdict, Verdict::Unchanged);
}

#[test]
fn corrupt_or_hand_edited_baselines_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = baseline::path_for(dir.path(), "t");
    let r = report("t");
    baseline::compare(&r, &path, 0.01, UpdateMode::Always).unwrap();
    let good = std::fs::read_to_string(&path).unwrap();

    let err = |text: &str| {
        std::fs::write(&path, text).unwrap();
        baseline::compare(&r, &path, 0.01, UpdateMode::No)
            .unwrap_err()
            .to_string()
    };
    let e = err("{ not json");
    assert!(e.contains("t.json") && e.contains("ROBUST_BLESS=1"), "{e}");
    let e = err(&good.replace("0.475", "47.5"));
    assert!(
        e.contains("metric `robust_accuracy` is 47.5; expected a share in [0, 1]"),
        "{e}"
    );
    let e = err(&good.replace("\"format\": 1", "\"format\": 7"));
    assert!(
        e.contains("format 7 is not understood; expected format 1"),
        "{e}"
    );
    let e = err(&good.replace("\"metrics\"", "\"metrix\""));
    assert!(e.contains("metrix"), "{e}");
    let e = err(&good.replace("\"test\": \"t\"", "\"test\": \"other::test\""));
    assert!(
        e.contains("it records test `other::test`; expected `t`"),
        "{e}"
    );
    // Hand edits that keep the file valid are compared like any baseline.
    std::fs::write(&path, &good).unwrap();
    assert!(!baseline::compare(&r, &path, 0.01, UpdateMode::No)
        .unwrap()
        .failed());
}

#[test]
fn a_changed_data_set_or_configuration_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = baseline::path_for(dir.path(), "t");
    let r = report("t");
    baseline::compare(&r, &path, 0.01, UpdateMode::Always).unwrap();
    edit(&path, |b| {
        b.provenance.data_fingerprint = "0123456789abcdef".into();
        b.provenance.config = "FGSM-L∞ (ε = 0.03, CE loss)".into();
    });
    let c = baseline::compare(&r, &path, 0.01, UpdateMode::No).unwrap();
    let fields: Vec<&str> = c.provenance.iter().map(|(f, _, _)| f.as_str()).collect();
    assert_eq!(fields, ["configuration", "data fingerprint"]);
    let text = c.describe(UpdateMode::No);
    assert!(text.contains("changed since the baseline: data fingerprint `0123456789abcdef`"));
    // A different data set gives a different fingerprint.
    let other =
        RobustnessCase::from_model(common::mlp().unwrap(), common::test_digits(199).unwrap());
    let fp = Fingerprint::of(&other, None, 250, &Device::Cpu).unwrap();
    assert_ne!(Some(&fp), r.fingerprint.as_ref());
}

#[test]
fn update_modes_follow_the_environment_like_insta() {
    let mode = UpdateMode::resolve;
    assert_eq!(mode(None, None, None).unwrap(), UpdateMode::New);
    assert_eq!(mode(None, None, Some("true")).unwrap(), UpdateMode::No);
    assert_eq!(mode(None, Some("auto"), Some("1")).unwrap(), UpdateMode::No);
    assert_eq!(
        mode(None, Some("always"), Some("1")).unwrap(),
        UpdateMode::Always
    );
    assert_eq!(
        mode(Some("1"), None, Some("1")).unwrap(),
        UpdateMode::Always
    );
    assert_eq!(mode(None, Some("no"), None).unwrap(), UpdateMode::No);
    assert_eq!(mode(None, Some("new"), Some("1")).unwrap(), UpdateMode::New);
    assert_eq!(mode(None, None, Some("false")).unwrap(), UpdateMode::New);
    let e = mode(None, Some("sometimes"), None).unwrap_err().to_string();
    assert!(
        e.contains("ROBUST_UPDATE") && e.contains("auto, always, new, no"),
        "{e}"
    );
}

#[test]
fn confidence_bounds_decide_thresholds_that_point_estimates_pass() {
    let r = report("t");
    // 95/200 robust: 47.5 %. The one-sided 95 % Clopper–Pearson lower bound is 41.5 %
    // (scipy: beta.ppf(0.05, 95, 106) = 0.414992937965042; the two-sided 95 % interval is
    // beta.ppf(0.025, 95, 106) = 0.40412 to beta.ppf(0.975, 96, 105) = 0.54663).
    let point = r.clone().check(&Thresholds {
        min_acc: Some(0.45),
        ..Thresholds::default()
    });
    assert!(point.passed());
    let bounded = r.clone().check(&Thresholds {
        min_acc: Some(0.45),
        confidence: Some(0.95),
        ..Thresholds::default()
    });
    assert!(!bounded.passed());
    assert!(
        (bounded.checks[0].measured - 0.414992937965042).abs() < 1e-9,
        "{}",
        bounded.checks[0].measured
    );
    assert!(
        bounded.to_string().contains("[40.41 %, 54.66 %] at 95 %"),
        "{bounded}"
    );
    let lower = r.check(&Thresholds {
        min_acc: Some(0.41),
        confidence: Some(0.95),
        ..Thresholds::default()
    });
    assert!(lower.passed());
}

#[test]
fn a_generated_test_leaves_its_report_files_and_names_them_when_it_fails() {
    let dir = tempfile::tempdir().unwrap();
    let folder: &'static str =
        Box::leak(dir.path().to_string_lossy().into_owned().into_boxed_str());
    let spec = TestSpec::new("files::mnist_mlp::fgsm_eps_0_05", "fgsm", 0.05)
        .manifest_dir(folder)
        .min_acc(0.9)
        .samples(200)
        .masking_checks("off");
    let message = harness::run(&spec, case).unwrap_err();
    let out = robust_runtime::report::output_dir(dir.path(), "files::mnist_mlp::fgsm_eps_0_05");
    assert!(
        message.contains("robust accuracy 47.50 % ≥ min_acc 90.00 %"),
        "{message}"
    );
    assert!(
        message.contains(&out.join("summary.md").display().to_string()),
        "{message}"
    );
    assert_eq!(
        files_in(&out),
        ["examples.png", "report.json", "result.json", "summary.md"]
    );
    let record = robust_runtime::report::TestRecord::read(&out.join("result.json")).unwrap();
    assert_eq!((record.verdict.as_str(), record.passed), ("failed", false));
    assert_eq!(record.metric("robust_accuracy").unwrap().value, 0.475);
    assert!(
        record.message.contains("min_acc 90.00 %"),
        "{}",
        record.message
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["robust_correct"], 95);
    let png = std::fs::read(out.join("examples.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // A single-ε attack has no curve worth a picture; a minimal-perturbation attack's sweep
    // has one.
    let swept = TestSpec::new("files::mnist_mlp::deepfool_eps_0_05", "deepfool", 0.05)
        .manifest_dir(folder)
        .samples(50)
        .max_drop(1.0)
        .sweep(&[0.02, 0.05, 0.1])
        .masking_checks("off");
    harness::run(&swept, case).unwrap();
    let swept_out =
        robust_runtime::report::output_dir(dir.path(), "files::mnist_mlp::deepfool_eps_0_05");
    let svg = std::fs::read_to_string(swept_out.join("curve.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("robust accuracy"));
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        md.starts_with("# files::mnist_mlp::fgsm_eps_0_05: FAILED"),
        "{md}"
    );
}

#[test]
fn a_generated_test_fails_on_a_regressed_baseline_even_above_its_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let folder: &'static str =
        Box::leak(dir.path().to_string_lossy().into_owned().into_boxed_str());
    let name = "regress::mnist_mlp::fgsm_eps_0_05";
    let spec = TestSpec::new(name, "fgsm", 0.05)
        .manifest_dir(folder)
        .min_acc(0.4)
        .samples(200)
        .masking_checks("off")
        .tolerance(0.01);
    let path = baseline::path_for(dir.path(), name);
    // Record what this run measures, then pretend the committed model was more robust.
    baseline::compare(&report(name), &path, 0.01, UpdateMode::Always).unwrap();
    assert!(harness::run(&spec, case).is_ok());
    edit(&path, |b| {
        b.metrics.insert("robust_accuracy".into(), 0.52);
    });
    let message = harness::run(&spec, case).unwrap_err();
    assert!(message.contains("fell below its baseline"), "{message}");
    assert!(
        message.contains("REGRESSED beyond the tolerance of 1 pp"),
        "{message}"
    );
    // The threshold itself held.
    assert!(
        message.contains("✓ robust accuracy 47.50 % ≥ min_acc 40.00 %"),
        "{message}"
    );
}

#[test]
fn a_baseline_without_a_gated_metric_is_an_error_not_a_pass() {
    let dir = tempfile::tempdir().unwrap();
    let path = baseline::path_for(dir.path(), "t");
    let r = report("t");
    baseline::compare(&r, &path, 0.01, UpdateMode::Always).unwrap();
    // Deleted: comparing only the metrics both sides have used to give "within tolerance".
    edit(&path, |b| {
        b.metrics.remove("robust_accuracy");
    });
    for mode in [UpdateMode::No, UpdateMode::New] {
        let e = baseline::compare(&r, &path, 0.01, mode)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "it lacks the gated metric(s) `robust_accuracy`; expected the gated metrics \
                 `clean_accuracy`, `robust_accuracy`"
            ) && e.contains("ROBUST_BLESS=1"),
            "{mode:?}: {e}"
        );
    }
    // Renamed: one missing, one that this test does not measure.
    edit(&path, |b| {
        b.metrics.insert("robust_acuracy".into(), 0.0);
    });
    let e = baseline::compare(&r, &path, 0.01, UpdateMode::No)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "it lacks the gated metric(s) `robust_accuracy` and it records gated metric(s) \
             `robust_acuracy` that this test does not measure"
        ),
        "{e}"
    );
    // A run that measures less than its baseline (a curve point gone) fails alike.
    baseline::compare(&r, &path, 0.01, UpdateMode::Always).unwrap();
    edit(&path, |b| {
        b.metrics.insert("robust_accuracy@0.1".into(), 0.1);
    });
    let e = baseline::compare(&r, &path, 0.01, UpdateMode::No)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "it records gated metric(s) `robust_accuracy@0.1` that this test does not measure"
        ),
        "{e}"
    );
}

#[test]
fn bless_replaces_a_corrupt_baseline_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = baseline::path_for(dir.path(), "t");
    let r = report("t");
    for corrupt in [
        "{ not json".to_string(),
        "{\"format\": 7}".to_string(),
        String::new(),
    ] {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &corrupt).unwrap();
        // The error message tells the user to bless ...
        let e = baseline::compare(&r, &path, 0.01, UpdateMode::No)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ROBUST_BLESS=1"), "{e}");
        // ... and blessing works: the file is replaced, the verdict says why.
        let c = baseline::compare(&r, &path, 0.01, UpdateMode::Always).unwrap();
        assert_eq!(c.verdict, Verdict::Replaced, "{corrupt:?}");
        assert!(!c.failed());
        let text = c.describe(UpdateMode::Always);
        assert!(
            text.contains("t.json: replaced, the file could not be used (malformed baseline file"),
            "{text}"
        );
        assert_eq!(Baseline::read(&path).unwrap(), Baseline::of(&r));
        let c = baseline::compare(&r, &path, 0.01, UpdateMode::No).unwrap();
        assert_eq!(c.verdict, Verdict::Unchanged);
    }
}
