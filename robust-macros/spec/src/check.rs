//! `set(key, value)` for every written key, then `check`: the rules that relate keys. The
//! attribute and the suite call [`parse`] on what was written; the runtime calls
//! [`check_spec`] on what was set from Rust. Each check is a function, preceded by its rule.

use crate::keys::{key, key_names, Options, Scope};
use crate::names::{CERTIFIERS, PERTURBATIONS};
use crate::spec::{Composition, Kind, Radius, Spec};
use crate::suggest::{backticked, closest, or_list, unknown};
use crate::ty::{check_float, check_name, Given, Ty};
use crate::value::Value;

/// One `key = value` as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// Its value.
    pub value: Value,
}

impl Entry {
    /// `key = value`.
    pub fn new(key: impl Into<String>, value: Value) -> Entry {
        Entry {
            key: key.into(),
            value,
        }
    }
}

/// Where a mistake is: the front end turns it into a span or a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// The description as a whole (a missing key).
    Whole,
    /// The key of entry `i` (unknown, duplicate).
    Entry(usize),
    /// The key named so (a key that does not belong to this test).
    Key(&'static str),
    /// The value of that key, or element `j` of its list.
    Value(&'static str, Option<usize>),
}

/// One mistake, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Where.
    pub at: At,
    /// What is wrong and what was expected.
    pub message: String,
}

#[derive(Default)]
struct Issues(Vec<Issue>);

impl Issues {
    fn at(&mut self, at: At, message: impl Into<String>) {
        self.0.push(Issue {
            at,
            message: message.into(),
        });
    }
}

/// Reads every entry, then checks how they relate; every mistake is reported, in order.
pub fn parse(entries: &[Entry]) -> Result<Spec, Vec<Issue>> {
    let mut issues = Issues::default();
    let mut written: Vec<&'static str> = Vec::new();
    // Keys a typo was meant to be: `epss = 0.1` says "did you mean `eps`?", so "missing
    // `eps`" would repeat it.
    let mut meant: Vec<&'static str> = Vec::new();
    let mut spec = Spec::new(Kind::Attack);
    let known = key_names();

    for (i, Entry { key: name, value }) in entries.iter().enumerate() {
        let Some(k) = key(name) else {
            issues.at(At::Entry(i), unknown("key", name, &known));
            meant.extend(closest(name, &known));
            continue;
        };
        let name = k.name;
        if written.contains(&name) {
            issues.at(At::Entry(i), format!("duplicate key `{name}`"));
            continue;
        }
        match name {
            // attack = "pgd"
            // attack = ["fgsm", "pgd"]
            "attack" | "certify" => {
                let Ty::Names(what, names) = k.ty else {
                    unreachable!("`{name}` takes names")
                };
                let list = list(name, value, &mut issues, |g| {
                    g.name(what, names).map_err(|m| vec![m])
                });
                let list = list.unwrap_or_default();
                if name == "attack" {
                    spec.attacks = list;
                } else {
                    spec.certifiers = list;
                }
            }
            // perturbation = "rotation"
            // perturbation = ["rotation", "shift", "rotation+brightness"]
            "perturbation" => {
                spec.perturbations =
                    list(name, value, &mut issues, read_composition).unwrap_or_default()
            }
            // eps = 0.1
            // eps = [0.05, 8e-3]
            "eps" | "radius" => {
                let list = list(name, value, &mut issues, radius).unwrap_or_default();
                if name == "eps" {
                    spec.eps = list;
                } else {
                    spec.radius = list;
                }
            }
            // attacks = ["apgd-ce", "square"]: each member checked where it is written
            "attacks" => {
                let Ty::Names(what, names) = k.ty else {
                    unreachable!("`attacks` takes names")
                };
                if let Some(list) = list(name, value, &mut issues, |g| {
                    g.name(what, names).map_err(|m| vec![m])
                }) {
                    spec.options.attacks = Some(Box::leak(list.into_boxed_slice()));
                }
            }
            // crate = "my_runtime"
            "crate" => match (Given { key: name, value }).string("::robust_runtime") {
                Ok(path) => spec.krate = Some(path.to_owned()),
                Err(m) => issues.at(At::Value(name, None), m),
            },
            // norm = "l2", steps = 10, max_degrees = 15.0, ...: see `keys`.
            _ => {
                if let Some(Err(m)) = spec.options.set(name, value) {
                    issues.at(At::Value(name, None), m);
                }
            }
        }
        // A key written with a bad value is still written: "missing `min_acc`" would be wrong.
        written.push(name);
    }

    let has = |key: &str| written.contains(&key) || meant.contains(&key);
    spec.kind = check_kind(&written, &has, &mut issues);
    check(&spec, &written, &has, &mut issues);
    if issues.0.is_empty() {
        Ok(spec)
    } else {
        Err(issues.0)
    }
}

/// Checks a spec set from Rust (the runtime's builders) with the same rules as [`parse`]: every
/// value in its key's range, every name known, and the rules relating keys.
pub fn check_spec(spec: &Spec) -> Result<(), Vec<Issue>> {
    let mut issues = Issues::default();
    let mut written: Vec<&'static str> = Vec::new();
    let lists: [(&'static str, bool); 5] = [
        ("attack", !spec.attacks.is_empty()),
        ("perturbation", !spec.perturbations.is_empty()),
        ("certify", !spec.certifiers.is_empty()),
        ("eps", !spec.eps.is_empty()),
        ("radius", !spec.radius.is_empty()),
    ];
    written.extend(lists.iter().filter(|(_, set)| *set).map(|(k, _)| *k));
    written.extend(spec.options.written().into_iter().map(|(k, _)| k));
    for (what, names, list) in [
        ("attack", crate::names::ATTACKS, &spec.attacks),
        ("certifier", CERTIFIERS, &spec.certifiers),
    ] {
        let key = if what == "attack" {
            "attack"
        } else {
            "certify"
        };
        for (j, name) in list.iter().enumerate() {
            if let Err(m) = check_name(what, name, names) {
                issues.at(At::Value(key, Some(j)), m);
            }
        }
    }
    for (j, p) in spec.perturbations.iter().enumerate() {
        for family in &p.families {
            if let Err(m) = check_name("perturbation", family, PERTURBATIONS) {
                issues.at(At::Value("perturbation", Some(j)), m);
            }
        }
    }
    for (key, list) in [("eps", &spec.eps), ("radius", &spec.radius)] {
        for (j, r) in list.iter().enumerate() {
            if let Err(m) = check_float(Ty::Radii, key, r.value, &r.digits) {
                issues.at(At::Value(key, Some(j)), m);
            }
        }
    }
    if let Err((key, m)) = spec.options.check_values() {
        issues.at(At::Value(key, None), m);
    }
    let has = |key: &str| written.contains(&key);
    check(spec, &written, &has, &mut issues);
    if issues.0.is_empty() {
        Ok(())
    } else {
        Err(issues.0)
    }
}

/// `[a, b, ...]` with each element read by `item`, or a single value standing for `[value]`.
fn list<T>(
    key: &'static str,
    value: &Value,
    issues: &mut Issues,
    item: impl Fn(&Given<'_>) -> Result<T, Vec<String>>,
) -> Option<Vec<T>> {
    let Value::List(values) = value else {
        return match item(&Given { key, value }) {
            Ok(v) => Some(vec![v]),
            Err(messages) => {
                for m in messages {
                    issues.at(At::Value(key, None), m);
                }
                None
            }
        };
    };
    if values.is_empty() {
        issues.at(
            At::Value(key, None),
            format!("`{key}` needs at least one value"),
        );
        return None;
    }
    let mut items = Vec::new();
    let mut ok = true;
    for (j, value) in values.iter().enumerate() {
        match item(&Given { key, value }) {
            Ok(v) => items.push(v),
            Err(messages) => {
                ok = false;
                for m in messages {
                    issues.at(At::Value(key, Some(j)), m);
                }
            }
        }
    }
    ok.then_some(items)
}

// perturbation = "rotation+brightness"
fn read_composition(given: &Given<'_>) -> Result<Composition, Vec<String>> {
    let name = given.string(PERTURBATIONS[0]).map_err(|m| vec![m])?;
    composition(name)
}

/// `"rotation+brightness"`: known families joined by `+`, none twice.
pub fn composition(name: &str) -> Result<Composition, Vec<String>> {
    let mut families: Vec<&'static str> = Vec::new();
    let mut errors = Vec::new();
    for part in name.split('+').map(str::trim) {
        match PERTURBATIONS.iter().find(|known| **known == part) {
            Some(_) if families.contains(&part) => {
                errors.push(format!("perturbation `{part}` appears twice in `{name}`"))
            }
            Some(known) => families.push(known),
            None => errors.push(unknown("perturbation", part, PERTURBATIONS)),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Composition {
        name: families.join("+"),
        families,
    })
}

// eps = 0.1
// eps = 8e-3
// eps = 1
fn radius(given: &Given<'_>) -> Result<Radius, Vec<String>> {
    let number = given.number().map_err(|m| vec![m])?;
    let value = number.value().unwrap_or(f64::NAN);
    check_float(Ty::Radii, given.key, value, &number.text()).map_err(|m| vec![m])?;
    Ok(Radius {
        value,
        digits: number.digits,
    })
}

/// The kind of test is chosen by the key naming what to run; `certify` cannot be combined with
/// `attack` or `perturbation`, nor `attack` with `perturbation`.
fn check_kind(written: &[&str], has: &dyn Fn(&str) -> bool, issues: &mut Issues) -> Kind {
    if has("certify") {
        for other in ["attack", "perturbation"] {
            if let Some(key) = written.iter().find(|k| **k == other) {
                issues.at(
                    At::Key(key_static(key)),
                    format!(
                        "`{other}` and `certify` cannot be combined: a certification test proves \
                         robustness, an {other} test looks for failures; write one function for each"
                    ),
                );
            }
        }
        Kind::Certify
    } else if has("perturbation") {
        if written.contains(&"attack") {
            issues.at(
                At::Key("attack"),
                "`attack` and `perturbation` cannot be combined: a test either attacks \
                 (`attack = ...`) or draws random perturbations (`perturbation = ...`); write \
                 one function for each",
            );
        }
        Kind::Perturbation
    } else {
        Kind::Attack
    }
}

fn key_static(name: &str) -> &'static str {
    key(name).map_or("", |k| k.name)
}

/// The rules that relate keys, in the order their messages appear.
fn check(spec: &Spec, written: &[&'static str], has: &dyn Fn(&str) -> bool, issues: &mut Issues) {
    match spec.kind {
        Kind::Certify => check_certify(spec, written, has, issues),
        Kind::Perturbation => check_perturbation(spec, written, has, issues),
        Kind::Attack => {
            check_attack(has, issues);
            check_norm(spec, issues);
            check_attack_only_keys(spec, written, issues);
            check_custom_version(spec, written, issues);
        }
    }
    // With neither `attack` nor `perturbation`, or both, the kind of test is unknown: its
    // keys cannot be judged.
    if spec.kind == Kind::Certify || has("attack") != has("perturbation") {
        check_scopes(spec, written, issues);
    }
    check_baseline(&spec.options, written, issues);
    check_distinct(spec, issues);
}

/// An attack test names its attacks and its ε, and asserts something: `min_acc` and/or
/// `max_drop` (a test that asserts nothing cannot fail).
fn check_attack(has: &dyn Fn(&str) -> bool, issues: &mut Issues) {
    if !has("attack") {
        issues.at(
            At::Whole,
            format!(
                "missing `attack`, `perturbation` or `certify`: name the attacks to run, \
                 e.g. `attack = \"pgd\"` or `attack = [\"fgsm\", \"pgd\"]` (known: {}), the \
                 perturbations to draw, e.g. `perturbation = \"rotation\"` (known: {}), or \
                 the certifiers, e.g. `certify = \"crown\"` (known: {})",
                backticked(crate::names::ATTACKS),
                backticked(PERTURBATIONS),
                backticked(CERTIFIERS)
            ),
        );
    } else if !has("eps") {
        issues.at(
            At::Whole,
            "missing `eps`: give the perturbation budget, e.g. `eps = 0.1` or `eps = [0.05, 0.1]`",
        );
    }
    if has("attack") && !has("min_acc") && !has("max_drop") {
        issues.at(
            At::Whole,
            "missing `min_acc` or `max_drop`: a robustness test needs something to \
             assert, the lowest acceptable robust accuracy (`min_acc = 0.6`) and/or the \
             largest acceptable drop from clean accuracy (`max_drop = 0.2`)",
        );
    }
}

/// The keys of one attack (`version` of `autoattack`, `rescale_schedule` of `square`) are
/// not written beside attacks that would ignore them. Each generated test checks the keys written
/// for the whole list, so one listed attack that takes the key is enough.
fn check_attack_only_keys(spec: &Spec, written: &[&str], issues: &mut Issues) {
    for (key, attack, what) in [
        ("version", "autoattack", "AutoAttack's version"),
        (
            "attacks",
            "autoattack",
            "the members of a custom AutoAttack",
        ),
        (
            "rescale_schedule",
            "square",
            "the Square attack's schedule of square sizes",
        ),
    ] {
        if written.contains(&key) && !spec.attacks.contains(&attack) {
            issues.at(
                At::Key(key),
                format!(
                    "`{key}` sets {what}; it needs `attack = \"{attack}\"`, which this test \
                     does not run"
                ),
            );
        }
    }
}

/// `version = "custom"` and `attacks = […]` go together: the custom version runs the listed
/// members, and the other versions have theirs.
fn check_custom_version(spec: &Spec, written: &[&str], issues: &mut Issues) {
    let custom = spec.options.version == Some("custom");
    if custom && !written.contains(&"attacks") {
        issues.at(
            At::Value("version", None),
            "`version = \"custom\"` runs the members listed in `attacks`, which is missing; \
             expected e.g. `attacks = [\"apgd-ce\", \"square\"]`"
                .to_string(),
        );
    }
    if !custom && written.contains(&"attacks") {
        issues.at(
            At::Key("attacks"),
            format!(
                "`attacks` lists the members of a custom AutoAttack; it needs \
                 `version = \"custom\"` (the {} version has its own members)",
                spec.options.version.unwrap_or("standard")
            ),
        );
    }
}

/// An attack that exists for one norm only is not asked for another.
fn check_norm(spec: &Spec, issues: &mut Issues) {
    let Some(norm) = spec.options.norm else {
        return;
    };
    for &(attack, only, why) in crate::names::ONE_NORM_ATTACKS {
        if norm != only && spec.attacks.contains(&attack) {
            issues.at(
                At::Value("norm", None),
                format!(
                    "attack `{attack}` has no `{norm}` version ({why}); expected `norm = \"{only}\"`, \
                     or another attack for `{norm}`"
                ),
            );
        }
    }
}

/// A perturbation test asserts `min_invariance`; its `eps` is one radius, that of `linf` and
/// `l2` noise.
fn check_perturbation(
    spec: &Spec,
    written: &[&str],
    has: &dyn Fn(&str) -> bool,
    issues: &mut Issues,
) {
    if !has("min_invariance") {
        issues.at(
            At::Whole,
            "missing `min_invariance`: a perturbation test asserts the lowest acceptable \
             share of correctly classified samples whose prediction survives every \
             perturbation, e.g. `min_invariance = 0.99`",
        );
    }
    if spec.eps.len() > 1 && written.contains(&"eps") {
        issues.at(
            At::Value("eps", None),
            "`eps` takes one value in a perturbation test: it is the radius of \
             `linf` and `l2` noise",
        );
    }
}

/// A certification test needs `min_certified_acc`, `eps` for IBP and CROWN, `radius` and
/// `sigma` for smoothing, and none of them where no certifier uses them.
fn check_certify(spec: &Spec, written: &[&str], has: &dyn Fn(&str) -> bool, issues: &mut Issues) {
    if spec.certifiers.is_empty() {
        return;
    }
    let certifiers = &spec.certifiers;
    for (i, c) in certifiers.iter().enumerate() {
        if certifiers[..i].contains(c) {
            issues.at(
                At::Value("certify", Some(i)),
                format!("certifier `{c}` is listed twice"),
            );
        }
    }
    if !has("min_certified_acc") {
        issues.at(
            At::Whole,
            "missing `min_certified_acc`: a certification test asserts the lowest acceptable \
             share of samples classified correctly and certified, e.g. `min_certified_acc = 0.8`",
        );
    }
    let bounds = certifiers.iter().any(|c| *c != "smoothing");
    let smoothing = certifiers.contains(&"smoothing");
    if bounds && !has("eps") {
        issues.at(
            At::Whole,
            "missing `eps`: IBP, CROWN, α-CROWN and BaB certify the L∞ ball of radius `eps`, \
             e.g. `eps = 0.1`",
        );
    }
    if !bounds && written.contains(&"eps") {
        issues.at(
            At::Key("eps"),
            "`eps` is the L∞ radius of `ibp` and `crown`; smoothing certifies L2 `radius = ...`",
        );
    }
    if spec.options.precision == Some("tf32") {
        issues.at(
            At::Value("precision", None),
            "certification runs in strict f32: a bound computed with TF32 products (inputs \
             rounded to 10 mantissa bits) need not hold for the model; drop `precision` or \
             write `precision = \"f32\"`",
        );
    }
    // Each generated test checks its own certifier against the keys written for all of them, so
    // `timeout` beside `["alpha-crown", "bab"]` reaches the α-CROWN test too: allowed there.
    let verifies = certifiers
        .iter()
        .any(|c| crate::names::VERIFIERS.contains(c));
    if written.contains(&"timeout") && !verifies {
        issues.at(
            At::Key("timeout"),
            "`timeout` is the per-sample budget of `certify = \"bab\"`, which this test does not run",
        );
    }
    if smoothing {
        if !has("radius") {
            issues.at(
                At::Whole,
                "missing `radius`: smoothing certifies an L2 radius, e.g. `radius = 0.5`",
            );
        }
        if !has("sigma") {
            issues.at(
                At::Whole,
                "missing `sigma`: smoothing needs the standard deviation of its Gaussian noise, \
                 the one the model was trained with, e.g. `sigma = 0.25`",
            );
        }
        // Against the defaults when only one is written: `n = 3` alone leaves `n0` at 100.
        let n0 = spec.options.n0.unwrap_or(crate::names::SMOOTHING_N0);
        let n = spec.options.n.unwrap_or(crate::names::SMOOTHING_N);
        if n0 > n {
            let said = |key: &str, value: usize| {
                if has(key) {
                    format!("`{key} = {value}`")
                } else {
                    format!("`{key}` (default {value})")
                }
            };
            issues.at(
                At::Key(if has("n0") { "n0" } else { "n" }),
                format!(
                    "{} must be at most {}: the selection sample is the smaller one",
                    said("n0", n0),
                    said("n", n)
                ),
            );
        }
    } else {
        for key in ["radius", "sigma", "n0", "n", "alpha"] {
            if written.contains(&key) {
                issues.at(
                    At::Key(key_static(key)),
                    format!("`{key}` is a parameter of `certify = \"smoothing\"`, which this test does not run"),
                );
            }
        }
    }
}

/// Every key written must belong to the kind of test: `steps` to attacks, `max_degrees` to a
/// test that rotates. Misplaced keys are errors rather than ignored, since a key that does
/// nothing is a test that checks something other than what it says.
fn check_scopes(spec: &Spec, written: &[&'static str], issues: &mut Issues) {
    let drawn: Vec<&str> = spec
        .perturbations
        .iter()
        .flat_map(|p| p.families.iter().copied())
        .collect();
    for &name in written {
        // The keys that name what to run choose the kind; combining them is reported above.
        if matches!(name, "attack" | "perturbation" | "certify" | "crate") {
            continue;
        }
        let Some(k) = key(name) else { continue };
        let fits = |scope: &Scope| match (scope, spec.kind) {
            (Scope::Any, _)
            | (Scope::Attack, Kind::Attack)
            | (Scope::Perturbation, Kind::Perturbation)
            | (Scope::Certify | Scope::Smoothing, Kind::Certify) => true,
            (Scope::Family(families), Kind::Perturbation) => {
                drawn.is_empty() || drawn.iter().any(|f| families.contains(f))
            }
            _ => false,
        };
        if k.scopes.iter().any(fits) {
            continue;
        }
        let message = match (k.scopes[0], spec.kind) {
            (Scope::Certify | Scope::Smoothing, _) => format!(
                "`{name}` is a parameter of certification tests (`certify = ...`); this test \
                 does not use it"
            ),
            (_, Kind::Certify) => {
                format!("`{name}` is not a parameter of certification tests (`certify = ...`)")
            }
            (Scope::Attack, _) => format!(
                "`{name}` is a parameter of attack tests; a perturbation test \
                 (`perturbation = ...`) does not use it"
            ),
            (Scope::Perturbation, _) => format!(
                "`{name}` is a parameter of perturbation tests; an attack test (`attack = ...`) \
                 does not use it"
            ),
            (Scope::Family(families), Kind::Attack) => format!(
                "`{name}` is a parameter of the {} perturbation; an attack test \
                 (`attack = ...`) does not use it",
                or_list(families)
            ),
            (Scope::Family(families), _) => {
                let mut names: Vec<&str> = Vec::new();
                for p in &spec.perturbations {
                    if !names.contains(&p.name.as_str()) {
                        names.push(&p.name);
                    }
                }
                format!(
                    "`{name}` does not apply to {}: it is a parameter of {}",
                    or_list(&names),
                    or_list(families)
                )
            }
            (Scope::Any, _) => continue,
        };
        issues.at(At::Key(name), message);
    }
}

/// `tolerance` is how far below the baseline a metric may fall: with `baseline = false` it
/// would do nothing.
fn check_baseline(options: &Options, written: &[&str], issues: &mut Issues) {
    if options.baseline == Some(false) && written.contains(&"tolerance") {
        issues.at(
            At::Key("tolerance"),
            "`tolerance` is how far a metric may fall below its baseline, but `baseline = \
             false` turns the baseline off: drop one of them",
        );
    }
}

/// Two entries that would generate the same test are a mistake, not something to merge quietly:
/// the message points at the second one. Comparing ε by value is enough: test names come from
/// the normalised digits (no `_`, no `+`), so equal names imply equal values, while equal
/// values can be written differently (`0.1`, `0.10`).
fn check_distinct(spec: &Spec, issues: &mut Issues) {
    if spec.kind == Kind::Attack && !spec.eps.is_empty() {
        for (i, attack) in spec.attacks.iter().enumerate() {
            if spec.attacks[..i].contains(attack) {
                issues.at(
                    At::Value("attack", Some(i)),
                    format!(
                        "attack `{attack}` is listed twice, so its `{attack}_eps_*` tests would be generated twice"
                    ),
                );
            }
        }
        for (i, e) in spec.eps.iter().enumerate() {
            if let Some(first) = spec.eps[..i].iter().find(|f| f.value == e.value) {
                issues.at(
                    At::Value("eps", Some(i)),
                    format!(
                        "eps `{}` is the same value as `{}`, listed before, so its tests would be \
                         generated twice",
                        e.digits, first.digits
                    ),
                );
            }
        }
    }
    for (i, p) in spec.perturbations.iter().enumerate() {
        if spec.perturbations[..i].iter().any(|q| q.name == p.name) {
            issues.at(
                At::Value("perturbation", Some(i)),
                format!(
                    "perturbation `{}` is listed twice, so its test would be generated twice",
                    p.name
                ),
            );
        }
    }
}
