//! The attribute and the suite file read the same keys with the same code: for every key of the
//! table, in a test it belongs to and in one it does not, with good values and bad ones, the
//! attribute's tokens and the suite's TOML give the same spec (hence the same test names) or
//! the same messages. The suite runs exactly `robust_spec::toml::entries` + `robust_spec::parse`
//! (see `robust_runtime::harness::Suite`); this test writes each case in both languages.

use proc_macro2::TokenStream;
use robust_spec::{Kind, Scope, Ty, KEYS};

use super::parse;

/// What one front end made of a description: the spec and its test names, or the messages.
#[derive(Debug, PartialEq)]
enum Outcome {
    Spec(robust_spec::Spec, Vec<String>),
    Errors(Vec<String>),
}

fn through_the_attribute(lines: &[(&str, String)]) -> Outcome {
    let text = lines
        .iter()
        .map(|(k, v)| format!("{k} = {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    let tokens: TokenStream = text.parse().expect("the sample is Rust tokens");
    match parse(tokens) {
        Ok(spec) => {
            let names = spec.cases().into_iter().map(|c| c.name).collect();
            Outcome::Spec(spec.spec, names)
        }
        Err(error) => Outcome::Errors(error.into_iter().map(|e| e.to_string()).collect()),
    }
}

fn through_the_suite(lines: &[(&str, String)]) -> Outcome {
    let text: String = lines.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    let entries = robust_spec::toml::parse_entries(&text).expect("the sample is TOML");
    match robust_spec::parse(&entries) {
        Ok(spec) => {
            let names = spec.cases().into_iter().map(|c| c.name).collect();
            Outcome::Spec(spec, names)
        }
        Err(issues) => Outcome::Errors(issues.into_iter().map(|i| i.message).collect()),
    }
}

/// The keys a test of each kind needs, with `8e-3` as ε so that naming is compared too.
fn base(scope: Scope) -> Vec<(&'static str, String)> {
    let s = |v: &str| v.to_string();
    match scope {
        Scope::Any | Scope::Attack => vec![
            ("attack", s(r#"["pgd", "fgsm"]"#)),
            ("eps", s("[8e-3, 0.05, 1]")),
            ("min_acc", s("0.5")),
        ],
        Scope::Perturbation => vec![
            ("perturbation", s(r#"["rotation", "shift+brightness"]"#)),
            ("min_invariance", s("0.9")),
        ],
        Scope::Family(families) => vec![
            ("perturbation", format!("{:?}", families[0])),
            ("min_invariance", s("0.9")),
        ],
        Scope::Certify => vec![
            ("certify", s(r#"["ibp", "crown", "bab"]"#)),
            ("eps", s("[8e-3, 0.1]")),
            ("min_certified_acc", s("0.5")),
        ],
        Scope::Smoothing => vec![
            ("certify", s(r#""smoothing""#)),
            ("radius", s("[0.25, 5e-1]")),
            ("sigma", s("0.25")),
            ("min_certified_acc", s("0.5")),
        ],
    }
}

/// Adds what a key needs beside it in an attack test: the attack it belongs to (`square` for
/// `rescale_schedule`, `autoattack` for `version` and `attacks`) and, for `attacks`, the custom
/// version.
fn with_prerequisites(key: &str, lines: &mut Vec<(&'static str, String)>) {
    let attack = match key {
        "rescale_schedule" => "square",
        "version" | "attacks" => "autoattack",
        _ => return,
    };
    for (k, v) in lines.iter_mut() {
        if *k == "attack" {
            *v = format!(r#"["pgd", "{attack}"]"#);
        }
    }
    if key == "attacks" && lines.iter().any(|(k, _)| *k == "attack") {
        lines.push(("version", r#""custom""#.to_string()));
    }
}

/// Values to write for a key of type `ty`: good ones, and every kind of bad one.
fn samples(ty: Ty) -> Vec<String> {
    let mut out: Vec<String> = [
        "0",
        "1",
        "3",
        "0.5",
        "8e-3",
        "-0.5",
        "1.5",
        "60",
        // A count above smoothing's default n0 = 100, the only good value of `n` alone.
        "1000",
        "200.0",
        "true",
        r#""0.5""#,
        r#""true""#,
        r#""3""#,
        "[]",
        "[0.5]",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Ty::Name(_, names) | Ty::Names(_, names) = ty {
        out.push(format!("{:?}", names[0]));
        out.push(format!("{:?}", names[names.len() - 1]));
        // A typo one edit away, and a name from nowhere.
        out.push(format!("{:?}", format!("{}x", names[0])));
        out.push(r#""nowhere""#.into());
        out.push(format!("[{:?}, {:?}]", names[0], names[0]));
    }
    if let Ty::Compositions = ty {
        out.extend(
            [
                r#""rotation""#,
                r#""rotation+rotaton""#,
                r#"["shift", "shift"]"#,
            ]
            .iter()
            .map(|s| s.to_string()),
        );
    }
    if let Ty::Radii = ty {
        out.push("[0.1, 0.10]".into());
        out.push("[1e-2, 2E-2, 3e+1]".into());
    }
    out
}

#[test]
fn accept_every_key_alike_with_the_same_messages_and_test_names() {
    let mut compared = 0;
    let mut accepted = 0;
    for key in KEYS.iter().filter(|k| !k.attribute_only) {
        // In each test the key belongs to, and in an attack and a perturbation test.
        let mut scopes: Vec<Scope> = key.scopes.to_vec();
        scopes.extend([Scope::Attack, Scope::Perturbation, Scope::Certify]);
        for scope in scopes {
            for value in samples(key.ty) {
                let mut lines = base(scope);
                lines.retain(|(k, _)| *k != key.name);
                with_prerequisites(key.name, &mut lines);
                lines.push((key.name, value.clone()));
                let attribute = through_the_attribute(&lines);
                let suite = through_the_suite(&lines);
                assert_eq!(attribute, suite, "{lines:?}");
                compared += 1;
                accepted += usize::from(matches!(attribute, Outcome::Spec(..)));
            }
        }
    }
    // Every key was accepted somewhere: the comparison covered good values, not only errors.
    for key in KEYS.iter().filter(|k| !k.attribute_only) {
        let scope = key.scopes[0];
        let mut lines = base(scope);
        lines.retain(|(k, _)| *k != key.name);
        with_prerequisites(key.name, &mut lines);
        let good = samples(key.ty).into_iter().find(|v| {
            let mut lines = lines.clone();
            lines.push((key.name, v.clone()));
            matches!(through_the_suite(&lines), Outcome::Spec(..))
        });
        assert!(
            good.is_some(),
            "no sample value of `{}` is accepted",
            key.name
        );
    }
    assert!(
        compared > 1000 && accepted > 100,
        "{compared} compared, {accepted} accepted"
    );
}

#[test]
fn name_tests_identically_including_exponents() {
    let lines = base(Scope::Attack);
    let Outcome::Spec(spec, names) = through_the_suite(&lines) else {
        panic!("the base attack test is valid");
    };
    assert_eq!(spec.kind, Kind::Attack);
    assert_eq!(
        names,
        [
            "pgd_eps_8e_3",
            "pgd_eps_0_05",
            "pgd_eps_1",
            "fgsm_eps_8e_3",
            "fgsm_eps_0_05",
            "fgsm_eps_1"
        ]
    );
    assert_eq!(through_the_attribute(&lines), Outcome::Spec(spec, names));
}
