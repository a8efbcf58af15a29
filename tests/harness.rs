//! The libtest-mimic suite harness: case names, `--list`, filters, `--exact`, `--ignored`, as
//! `cargo test` and `cargo nextest` call the `suite` test binary, and bad suite files.

use std::path::PathBuf;
use std::process::Command;

use robust_runtime::harness::{Suite, SuiteCase};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

const ALL: &[&str] = &[
    "robustness::mnist_mlp::fgsm_eps_0_05",
    "robustness::mnist_mlp::fgsm_eps_0_1",
    "robustness::mnist_mlp::pgd_eps_0_05",
    "robustness::mnist_mlp::pgd_eps_0_1",
    "robustness::mnist_cnn::fgsm_eps_0_05",
    "robustness::mnist_cnn::fgsm_eps_0_1",
    "robustness::mnist_cnn::pgd_eps_0_05",
    "robustness::mnist_ibp::ibp_eps_0_1",
    "robustness::mnist_ibp::crown_eps_0_1",
    "robustness::mnist_cnn::brightness",
    "robustness::mnist_cnn::autoattack_eps_0_1",
];

#[test]
fn the_shipped_suite_has_one_case_per_model_attack_and_eps() {
    let suite = Suite::from_file(MANIFEST_DIR, "tests/robustness.toml").unwrap();
    let cases = suite.cases().unwrap();
    let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ALL);
    let ignored: Vec<&str> = cases
        .iter()
        .filter(|c| c.ignored)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(ignored, ["robustness::mnist_cnn::autoattack_eps_0_1"]);
}

/// The `suite` test binary cargo built beside this one (`target/debug/deps/suite-<hash>`),
/// built first if this test runs alone.
fn suite_binary() -> PathBuf {
    let deps = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let newest = || {
        std::fs::read_dir(&deps)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("suite-") && !name.contains('.')
            })
            .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
            .map(|e| e.path())
    };
    if let Some(path) = newest() {
        return path;
    }
    let status = Command::new(env!("CARGO"))
        .args(["test", "--no-run", "--test", "suite"])
        .current_dir(MANIFEST_DIR)
        .status()
        .unwrap();
    assert!(status.success(), "building the suite binary failed");
    newest().expect("cargo built the suite binary")
}

/// The names `suite --list <args>` prints (libtest's `name: test` lines).
fn listed(args: &[&str]) -> Vec<String> {
    let out = Command::new(suite_binary())
        .arg("--list")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_string)
        .collect()
}

#[test]
fn list_every_case_and_filter_like_cargo_test() {
    assert_eq!(listed(&[]), ALL);
    assert_eq!(
        listed(&["pgd"]),
        [
            "robustness::mnist_mlp::pgd_eps_0_05",
            "robustness::mnist_mlp::pgd_eps_0_1",
            "robustness::mnist_cnn::pgd_eps_0_05",
        ]
    );
    assert_eq!(
        listed(&["mnist_ibp::"]),
        [
            "robustness::mnist_ibp::ibp_eps_0_1",
            "robustness::mnist_ibp::crown_eps_0_1"
        ]
    );
    // `--exact` as nextest runs one test: `fgsm_eps_0_1` must not also match `fgsm_eps_0_1x`.
    assert_eq!(
        listed(&["--exact", "robustness::mnist_mlp::fgsm_eps_0_1"]),
        ["robustness::mnist_mlp::fgsm_eps_0_1"]
    );
    assert_eq!(
        listed(&["--ignored"]),
        ["robustness::mnist_cnn::autoattack_eps_0_1"]
    );
    assert_eq!(
        listed(&["--skip", "mnist_cnn", "--skip", "mnist_ibp"]).len(),
        4
    );
    // nextest lists with `--format terse`.
    let out = Command::new(suite_binary())
        .args(["--list", "--format", "terse"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().lines().count(),
        ALL.len()
    );
}

fn parse(text: &str) -> Result<Vec<SuiteCase>, String> {
    Suite::from_toml(MANIFEST_DIR, "bad", text)
        .and_then(|s| s.cases())
        .map_err(|e| e.to_string())
}

#[test]
fn reject_bad_suite_files_with_what_was_expected() {
    let e =
        parse("[[test]]\nmodel = \"m\"\nattack = \"pgd\"\neps = 0.1\nmin_ac = 0.5\n").unwrap_err();
    assert!(e.contains("unknown field `min_ac`"), "{e}");
    let e = parse("[[test]]\nmodel = \"m\"\nattack = \"pgd\"\n").unwrap_err();
    assert!(
        e.contains("[[test]] number 1: an attack test needs `eps`"),
        "{e}"
    );
    let e = parse("[[test]]\nmodel = \"m\"\nattack = \"pgd\"\ncertify = \"ibp\"\neps = 0.1\n")
        .unwrap_err();
    assert!(
        e.contains("exactly one of `attack`, `certify` and `perturbation`"),
        "{e}"
    );
    let e = parse("[[test]]\nmodel = \"m\"\ncertify = \"crwn\"\neps = 0.1\n").unwrap_err();
    assert!(e.contains("unknown certifier `crwn`"), "{e}");
    let e = parse("[[test]]\nattack = \"pgd\"\neps = 0.1\n").unwrap_err();
    assert!(e.contains("no `model`"), "{e}");
    let e = parse("[[test]\n").unwrap_err();
    assert!(e.contains("bad"), "{e}");
    // A model that is neither a table nor registered fails when its trials are made.
    let suite = Suite::from_toml(
        MANIFEST_DIR,
        "bad",
        "[[test]]\nmodel = \"nowhere\"\nattack = \"pgd\"\neps = 0.1\nmin_acc = 0.5\n",
    )
    .unwrap();
    let e = suite.trials().unwrap_err().to_string();
    assert!(e.contains("`model`") && e.contains("nowhere"), "{e}");
}

#[test]
fn reject_what_the_attribute_rejects_before_anything_runs() {
    let entry = |keys: &str| format!("[[test]]\nmodel = \"m\"\n{keys}\n");
    // Two ε that print alike would be one trial name run twice.
    let e = parse(&entry("attack = \"pgd\"\neps = [0.1, 0.10]\nmin_acc = 0.5")).unwrap_err();
    assert!(
        e.contains(
            "[[test]] number 1: it names trial `bad::m::pgd_eps_0_1` a second time (two values \
             that print alike, such as eps = [0.1, 0.10]"
        ),
        "{e}"
    );
    // ... and so would a second entry with the same trial.
    let twice = entry("attack = \"fgsm\"\neps = 0.1\nmin_acc = 0.5").repeat(2);
    let e = parse(&twice).unwrap_err();
    assert!(
        e.contains("[[test]] number 2: it names trial `bad::m::fgsm_eps_0_1` a second time"),
        "{e}"
    );
    // Keys of another kind of test are refused, not ignored.
    for (keys, expected) in [
        (
            "attack = \"pgd\"\neps = 0.1\nmin_acc = 0.5\nmin_certified_acc = 0.5",
            "`min_certified_acc` is a parameter of certification tests (`certify = ...`); this \
             test does not use it",
        ),
        (
            "attack = \"pgd\"\neps = 0.1\nmin_acc = 0.5\nmax_degrees = 10.0",
            "`max_degrees` is a parameter of the rotation perturbation",
        ),
        (
            "certify = \"ibp\"\neps = 0.1\nmin_certified_acc = 0.5\nsteps = 3",
            "`steps` is a parameter of attack tests",
        ),
        (
            "certify = \"ibp\"\neps = 0.1\nmin_certified_acc = 0.5\nsigma = 0.25",
            "`sigma` is a parameter of the gaussian perturbation and smoothing certification",
        ),
        (
            "perturbation = \"brightness\"\nmin_invariance = 0.9\npatch = 3",
            "`patch` is a parameter of the occlusion perturbation",
        ),
    ] {
        let e = parse(&entry(keys)).unwrap_err();
        assert!(e.contains(expected), "{keys}: {e}");
    }
    // Value errors of any trial, even the last, stop the suite when it is read.
    let mut text = entry("attack = \"fgsm\"\neps = 0.1\nmin_acc = 0.5");
    text.push_str(&entry(
        "attack = \"pgd\"\neps = 0.1\nmin_acc = 0.5\nsteps = 0",
    ));
    let e = parse(&text).unwrap_err();
    assert!(
        e.contains(
            "[[test]] number 2: `bad::m::pgd_eps_0_1`: invalid value for `steps`: 0; expected an \
             integer ≥ 1"
        ),
        "{e}"
    );
    for (keys, key) in [
        ("attack = \"pgd\"\neps = 1e39\nmin_acc = 0.5", "eps"),
        ("attack = \"pgd\"\neps = 0.1\nmin_acc = 1.5", "min_acc"),
        ("attack = \"pgd\"\neps = 0.1", "min_acc"),
        (
            "attack = \"pgd\"\neps = 0.1\nmin_acc = 0.5\ndevice = \"tpu\"",
            "tpu",
        ),
        (
            "attack = \"pgd\"\neps = 0.1\nmin_acc = 0.5\nsamples = 0",
            "samples",
        ),
        (
            "certify = \"smoothing\"\nradius = 0.5\nmin_certified_acc = 0.5",
            "sigma",
        ),
        (
            "certify = \"smoothing\"\nradius = 0.5\nsigma = 1e39\nmin_certified_acc = 0.5",
            "sigma",
        ),
        (
            "perturbation = \"rotation\"\nmax_degrees = 270.0\nmin_invariance = 0.9",
            "max_degrees",
        ),
        (
            "perturbation = \"rotation\"\nmin_invariance = 0.9\ncases = 0",
            "cases",
        ),
    ] {
        let e = parse(&entry(keys)).unwrap_err();
        assert!(e.contains(&format!("`{key}`")), "{keys}: {e}");
    }
}
