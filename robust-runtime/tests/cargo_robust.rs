//! `cargo robust` as a user meets it: a crate outside this workspace, made in a temporary
//! folder, that depends on robust-runtime by path. Its `cargo test` fails on a missing
//! baseline, `cargo robust review` shows it, `cargo robust bless` accepts it and the rerun
//! passes; `cargo robust run` on a suite exits 1 on a failed threshold (2 when a trial cannot
//! run) and writes JUnit that a JUnit parser reads; `cargo robust report` writes the page.
//!
//! The crate builds into this workspace's target folder, so only robust's own crates compile
//! again for it (about a minute and a half on 2 cores).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_cargo-robust");

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("robust-runtime lives in the workspace")
        .to_path_buf()
}

/// The target folder this test was built in (`target/<profile>/deps/<test>` → `target`).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::current_exe()
                .unwrap()
                .ancestors()
                .find(|d| d.join("CACHEDIR.TAG").is_file())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| workspace().join("target"))
        })
}

fn text(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A command in the user's crate, as a developer's machine runs it (not as CI: `CI` would stop
/// the test from writing its pending baseline).
fn command(dir: &Path, program: &str) -> Command {
    let mut c = Command::new(program);
    c.current_dir(dir)
        .env("CARGO_TARGET_DIR", target_dir())
        .env_remove("CI")
        .env_remove("ROBUST_UPDATE")
        .env_remove("ROBUST_BLESS");
    c
}

fn cargo_test(dir: &Path) -> Output {
    command(dir, env!("CARGO"))
        .args(["test", "--offline", "--test", "robust"])
        .output()
        .unwrap()
}

fn robust(dir: &Path, args: &[&str]) -> Output {
    command(dir, BIN).arg("robust").args(args).output().unwrap()
}

/// The user's crate: one attack test with a baseline, and a suite with a passing and a failing
/// threshold. Profiles as the README asks (dependencies optimised), the robust crates at the
/// workspace's own level so their build is the only one.
fn user_crate(dir: &Path) {
    let ws = workspace();
    let weights = ws.join("tests/fixtures/mnist_mlp.safetensors");
    std::fs::create_dir_all(dir.join("tests")).unwrap();
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("src/lib.rs"), "").unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            r#"[package]
name = "user-crate"
version = "0.1.0"
edition = "2021"

[dev-dependencies]
robust-runtime = {{ path = "{}" }}

[profile.dev]
opt-level = 1
[profile.dev.package."*"]
opt-level = 3
[profile.dev.package.robust-runtime]
opt-level = 1
[profile.dev.package.robust-macros]
opt-level = 1
[profile.dev.package.robust-spec]
opt-level = 1
"#,
            ws.join("robust-runtime").display()
        ),
    )
    .unwrap();
    // The workspace's lock file, so that the crate resolves to what is already built.
    std::fs::copy(ws.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    std::fs::write(
        dir.join("tests/robust.rs"),
        format!(
            r#"use robust_runtime::prelude::*;

#[robustness_test(attack = "fgsm", eps = 0.05, min_acc = 0.3, samples = 100, baseline = true)]
fn mnist_mlp() -> robust_runtime::Result<RobustnessCase> {{
    let model = zoo::MnistMlp::load({weights:?}, &Device::Cpu)?;
    Ok(RobustnessCase::new(model, Dataset::mnist_sample()?.test_split()))
}}
"#
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("tests/robustness.toml"),
        format!(
            r#"[models.mlp]
zoo = "mnist_mlp"
weights = {weights:?}

[[test]]
model = "mlp"
attack = "fgsm"
eps = 0.05
min_acc = 0.3
samples = 100

[[test]]
model = "mlp"
attack = "pgd"
eps = 0.1
min_acc = 0.9
samples = 100
"#
        ),
    )
    .unwrap();
}

#[test]
fn review_bless_run_and_report_in_a_crate_outside_the_workspace() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("user-crate");
    user_crate(&dir);

    // A test with a baseline and none committed: fails, and writes the pending one.
    let first = cargo_test(&dir);
    let out = text(&first);
    assert!(!first.status.success(), "{out}");
    assert!(out.contains("has no committed baseline"), "{out}");
    assert!(out.contains("cargo robust bless"), "{out}");
    let baseline = dir.join("robust-baselines/robust__mnist_mlp__fgsm_eps_0_05.json");
    let mut pending = baseline.clone().into_os_string();
    pending.push(".new");
    assert!(Path::new(&pending).is_file(), "{out}");

    let review = robust(&dir, &["review"]);
    let said = text(&review);
    assert!(review.status.success(), "{said}");
    assert!(
        said.contains("robust__mnist_mlp__fgsm_eps_0_05.json (new)"),
        "{said}"
    );
    assert!(said.contains("1 pending"), "{said}");

    let bless = robust(&dir, &["bless"]);
    assert!(bless.status.success(), "{}", text(&bless));
    assert!(baseline.is_file() && !Path::new(&pending).exists());

    let rerun = cargo_test(&dir);
    let out = text(&rerun);
    assert!(rerun.status.success(), "{out}");
    assert!(
        out.contains("test mnist_mlp::fgsm_eps_0_05 ... ok"),
        "{out}"
    );

    // The suite: FGSM passes, PGD at ε = 0.1 cannot reach 90 %: exit code 1, and JUnit.
    let run = robust(&dir, &["run", "--junit", "junit.xml", "--json", "run.json"]);
    let said = text(&run);
    assert_eq!(run.status.code(), Some(1), "{said}");
    assert!(
        said.contains("test robustness::mlp::fgsm_eps_0_05 ... ok"),
        "{said}"
    );
    assert!(
        said.contains("test robustness::mlp::pgd_eps_0_1 ... FAILED"),
        "{said}"
    );
    let junit = std::fs::File::open(dir.join("junit.xml")).unwrap();
    let suites = junit_parser::from_reader(std::io::BufReader::new(junit)).unwrap();
    assert_eq!((suites.tests, suites.failures, suites.errors), (2, 1, 0));
    let cases = &suites.suites[0].cases;
    assert_eq!(cases[0].name, "robustness::mlp::fgsm_eps_0_05");
    assert_eq!(cases[0].classname.as_deref(), Some("robustness::mlp"));
    assert!(cases[0].status.is_success());
    assert!(cases[1].status.is_failure());
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap();
    assert_eq!(json[1]["verdict"], "failed");

    // A filter that leaves the passing trial alone: exit code 0.
    let only = robust(&dir, &["run", "--filter", "fgsm"]);
    assert_eq!(only.status.code(), Some(0), "{}", text(&only));
    // A filter that matches nothing must not pass a CI job.
    let none = robust(&dir, &["run", "--filter", "fgms"]);
    let said = text(&none);
    assert_eq!(none.status.code(), Some(2), "{said}");
    assert!(
        said.contains("no trial of tests/robustness.toml matches `--filter fgms`"),
        "{said}"
    );

    // A suite that names a missing weights file cannot run: exit code 2.
    std::fs::write(
        dir.join("broken.toml"),
        "[models.m]\nzoo = \"mnist_mlp\"\nweights = \"nowhere.safetensors\"\n\n[[test]]\nmodel = \"m\"\nattack = \"fgsm\"\neps = 0.1\nmin_acc = 0.5\n",
    )
    .unwrap();
    let broken = robust(&dir, &["run", "broken.toml"]);
    let said = text(&broken);
    assert_eq!(broken.status.code(), Some(2), "{said}");
    assert!(said.contains("nowhere.safetensors"), "{said}");

    let report = robust(&dir, &["report"]);
    let said = text(&report);
    assert!(report.status.success(), "{said}");
    let page = target_dir().join("robust/index.html");
    let html = std::fs::read_to_string(&page).unwrap();
    for name in [
        "robust::mnist_mlp::fgsm_eps_0_05",
        "robustness::mlp::pgd_eps_0_1",
    ] {
        assert!(
            html.contains(name),
            "{name} missing from {}",
            page.display()
        );
    }
    assert!(html.contains("data:image/png;base64,"));
}
