//! The libtest-mimic suite harness: case names, `--list`, filters, `--exact`, `--ignored`, as
//! `cargo test` and `cargo nextest` call the `suite` test binary, and bad suite files.

use std::path::PathBuf;
use std::process::Command;

use robust_runtime::harness::{Suite, SuiteCase};
use robust_runtime::spec::{self as robust_spec, Scope, Ty, KEYS};

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
    "robustness::mnist_ibp_onnx::ibp_eps_0_1",
    "robustness::mnist_ibp_onnx::crown_eps_0_1",
    "robustness::mnist_resnet_onnx::pgd_eps_0_02",
    "robustness::mnist_resnet_onnx::ibp_eps_0_00001",
    "robustness::mnist_resnet_onnx::crown_eps_0_002",
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
            "robustness::mnist_resnet_onnx::pgd_eps_0_02",
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
    // The MLP's four and the residual network's three (`mnist_ibp` skips `mnist_ibp_onnx` too).
    assert_eq!(
        listed(&["--skip", "mnist_cnn", "--skip", "mnist_ibp"]).len(),
        7
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
    assert!(
        e.contains("[[test]] number 1: unknown key `min_ac`; did you mean `min_acc`?"),
        "{e}"
    );
    let e = parse("[[test]]\nmodel = \"m\"\nattack = \"pgd\"\n").unwrap_err();
    assert!(
        e.contains("[[test]] number 1: missing `eps`: give the perturbation budget"),
        "{e}"
    );
    let e = parse("[[test]]\nmodel = \"m\"\nattack = \"pgd\"\ncertify = \"ibp\"\neps = 0.1\n")
        .unwrap_err();
    assert!(
        e.contains("`attack` and `certify` cannot be combined"),
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
    // A model table with an ONNX file and a zoo architecture both, or with neither.
    for table in [
        "onnx = \"m.onnx\"\nzoo = \"mnist_mlp\"\nweights = \"w.safetensors\"",
        "data = \"mnist_sample\"",
    ] {
        let text = format!(
            "[models.m]\n{table}\n[[test]]\nmodel = \"m\"\nattack = \"pgd\"\neps = 0.1\nmin_acc = 0.5\n"
        );
        let e = Suite::from_toml(MANIFEST_DIR, "bad", &text).and_then(|s| s.trials().map(|_| ()));
        let e = e.unwrap_err().to_string();
        assert!(
            e.contains("`onnx = \"<file>.onnx\"`, or with `zoo` and `weights`"),
            "{e}"
        );
    }
}

#[test]
fn reject_what_the_attribute_rejects_before_anything_runs() {
    let entry = |keys: &str| format!("[[test]]\nmodel = \"m\"\n{keys}\n");
    // Two equal ε would generate the same tests twice.
    let e = parse(&entry("attack = \"pgd\"\neps = [0.1, 0.10]\nmin_acc = 0.5")).unwrap_err();
    assert!(
        e.contains(
            "[[test]] number 1: eps `0.10` is the same value as `0.1`, listed before, so its \
             tests would be generated twice"
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
            "`max_degrees` is a parameter of the `rotation` perturbation; an attack test",
        ),
        (
            "certify = \"ibp\"\neps = 0.1\nmin_certified_acc = 0.5\nsteps = 3",
            "`steps` is not a parameter of certification tests (`certify = ...`)",
        ),
        (
            "certify = \"ibp\"\neps = 0.1\nmin_certified_acc = 0.5\nsigma = 0.25",
            "`sigma` is a parameter of `certify = \"smoothing\"`, which this test does not run",
        ),
        (
            "certify = \"ibp\"\neps = 0.1\nmin_certified_acc = 0.5\nprecision = \"tf32\"",
            "certification runs in strict f32: a bound computed with TF32 products",
        ),
        (
            "perturbation = \"brightness\"\nmin_invariance = 0.9\npatch = 3",
            "`patch` does not apply to `brightness`: it is a parameter of `occlusion`",
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
        e.contains("[[test]] number 2: expected an integer ≥ 1 for `steps`, found `0`"),
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

/// The keys a test of `scope` needs, as suite lines.
fn base(scope: Scope) -> Vec<(&'static str, String)> {
    let s = |v: &str| v.to_string();
    match scope {
        Scope::Any | Scope::Attack => vec![
            ("attack", s("\"pgd\"")),
            ("eps", s("8e-3")),
            ("min_acc", s("0.5")),
        ],
        Scope::Perturbation => vec![
            ("perturbation", s("\"rotation\"")),
            ("min_invariance", s("0.9")),
        ],
        Scope::Family(families) => vec![
            ("perturbation", format!("{:?}", families[0])),
            ("min_invariance", s("0.9")),
        ],
        Scope::Certify => vec![
            ("certify", s("\"bab\"")),
            ("eps", s("0.1")),
            ("min_certified_acc", s("0.5")),
        ],
        _ => vec![
            ("certify", s("\"smoothing\"")),
            ("radius", s("0.5")),
            ("sigma", s("0.25")),
            ("min_certified_acc", s("0.5")),
        ],
    }
}

/// A value of type `ty` the key table accepts, and one it rejects.
fn good_and_bad(ty: Ty) -> (String, String) {
    let (good, bad) = match ty {
        Ty::Name(_, names) => (format!("{:?}", names[0]), "\"nowhere\"".into()),
        Ty::Names(_, names) => (format!("[{:?}]", names[0]), "[]".into()),
        Ty::Compositions => ("\"rotation\"".into(), "\"rotation+rotaton\"".into()),
        // 1000, not 3: `n` must stay above smoothing's default `n0` (100), a rule the runtime
        // applies when it builds the certifier.
        Ty::Count(_) => ("1000".into(), "0".into()),
        Ty::Seed => ("3".into(), "-3".into()),
        Ty::Bool => ("true".into(), "\"true\"".into()),
        _ => ("0.25".into(), "-0.5".into()),
    };
    (good, bad)
}

fn suite_text(lines: &[(&str, String)]) -> String {
    let mut text = String::from("[[test]]\nmodel = \"m\"\n");
    for (k, v) in lines {
        text.push_str(&format!("{k} = {v}\n"));
    }
    text
}

/// Every key `#[robustness_test]` accepts, the suite accepts too, and with a bad value it says
/// what the key table (the attribute's own reading, see `robust-macros/src/args/agree.rs`)
/// says, word for word.
#[test]
fn accept_every_key_of_the_attribute_with_its_checks_and_messages() {
    for key in KEYS.iter().filter(|k| !k.attribute_only) {
        let (good, bad) = good_and_bad(key.ty);
        let mut lines = base(key.scopes[0]);
        lines.retain(|(k, _)| *k != key.name);
        // The keys of one attack need it: `rescale_schedule` Square, `version` and `attacks`
        // AutoAttack (`attacks` its custom version).
        let attack = match key.name {
            "rescale_schedule" => Some("square"),
            "version" | "attacks" => Some("autoattack"),
            _ => None,
        };
        if let Some(attack) = attack {
            for (k, v) in lines.iter_mut() {
                if *k == "attack" {
                    *v = format!("{attack:?}");
                }
            }
        }
        if key.name == "attacks" {
            lines.push(("version", "\"custom\"".into()));
        }
        lines.push((key.name, good.clone()));
        if let Err(e) = parse(&suite_text(&lines)) {
            panic!("`{} = {good}` is refused: {e}", key.name);
        }
        lines.pop();
        lines.push((key.name, bad.clone()));
        let e = parse(&suite_text(&lines)).unwrap_err();
        let entries: String = lines.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        let issues = robust_spec::parse(&robust_spec::toml::parse_entries(&entries).unwrap())
            .expect_err("a bad value");
        let messages: Vec<String> = issues.into_iter().map(|i| i.message).collect();
        let expected = format!("[[test]] number 1: {}", messages.join("; "));
        assert!(
            e.contains(&expected),
            "`{} = {bad}`:\n{e}\nexpected {expected}",
            key.name
        );
    }
    // `crate` names the runtime for the attribute's expansion: a suite refuses it, not ignores it.
    let e = parse(&suite_text(&[
        ("attack", "\"pgd\"".into()),
        ("eps", "0.1".into()),
        ("min_acc", "0.5".into()),
        ("crate", "\"::robust_runtime\"".into()),
    ]))
    .unwrap_err();
    assert!(e.contains("a suite file has no use for it"), "{e}");
}

/// Trials are named as the attribute names its tests: after the digits as written, so
/// `eps = 8e-3` is `pgd_eps_8e_3` in both (the suite used to print `0.008`).
#[test]
fn name_trials_after_the_digits_as_written_like_the_attribute() {
    let names = |text: &str| -> Vec<String> {
        parse(text)
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .filter(|n| !n.ends_with("_cuda"))
            .collect()
    };
    assert_eq!(
        names(
            "[[test]]\nmodel = \"m\"\nattack = [\"pgd\", \"apgd-t\"]\neps = [8e-3, 0.05, 1, 2E+1]\n\
             min_acc = 0\n"
        ),
        [
            "bad::m::pgd_eps_8e_3",
            "bad::m::pgd_eps_0_05",
            "bad::m::pgd_eps_1",
            "bad::m::pgd_eps_2e1",
            "bad::m::apgd_t_eps_8e_3",
            "bad::m::apgd_t_eps_0_05",
            "bad::m::apgd_t_eps_1",
            "bad::m::apgd_t_eps_2e1",
        ]
    );
    assert_eq!(
        names(
            "[[test]]\nmodel = \"m\"\ncertify = \"smoothing\"\nradius = [0.25, 5e-1]\nsigma = 0.25\n\
             min_certified_acc = 0.5\n\n[[test]]\nmodel = \"m\"\nperturbation = \
             [\"shift+brightness\", \"linf\"]\neps = 1e-2\nmin_invariance = 0.9\n"
        ),
        [
            "bad::m::smoothing_radius_0_25",
            "bad::m::smoothing_radius_5e_1",
            "bad::m::shift_brightness",
            "bad::m::linf",
        ]
    );
}
