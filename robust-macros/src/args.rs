//! The attribute's arguments, `#[robustness_test(key = value, ...)]`, parsed into a typed [`Spec`].
//!
//! `attack`, `perturbation`, `eps` and `crate` shape the expansion and are parsed in [`parse`];
//! every other key is an [`Options`] field, declared once with its type, its range and the kind
//! of test it belongs to, and forwarded as the builder call of the same name. Defaults belong to
//! the runtime, so a key the user did not write produces no call at all. Mistakes are
//! collected, each at its own token, so that one build reports all of them.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, ExprUnary, Ident, Lit, LitStr, Token, UnOp};

use crate::errors::Errors;

/// The attacks the runtime implements. Adding one here (and to the runtime) is all it takes for
/// `attack = "..."` to accept it.
pub(crate) const KNOWN_ATTACKS: &[&str] = &[
    "fgsm",
    "pgd",
    "apgd",
    "apgd-t",
    "autoattack",
    "square",
    "cw",
    "deepfool",
];

/// The perturbation families the runtime implements (`robust_runtime::perturb::Family::NAMES`);
/// `perturbation = "rotation+brightness"` composes several.
pub(crate) const KNOWN_PERTURBATIONS: &[&str] = &[
    "linf",
    "l2",
    "gaussian",
    "salt_pepper",
    "brightness",
    "contrast",
    "shift",
    "rotation",
    "occlusion",
];

const NORMS: &[&str] = &["linf", "l2"];
const LOSSES: &[&str] = &["ce", "cw", "dlr"];
const DEVICES: &[&str] = &["cpu", "cuda", "auto"];
const MASKING: &[&str] = &["fail", "warn", "off"];

/// The keys that shape the expansion instead of becoming a builder call.
const STRUCTURAL_KEYS: &[&str] = &[
    "attack",
    "perturbation",
    "certify",
    "eps",
    "radius",
    "crate",
];

/// The certifiers the runtime implements (`robust_runtime::eval::CERTIFIERS`): bound
/// propagation at L∞ `eps`, or randomized smoothing at L2 `radius`.
pub(crate) const KNOWN_CERTIFIERS: &[&str] = &["ibp", "crown", "smoothing"];

/// The perturbations whose radius `eps` is.
const EPS_FAMILIES: &[&str] = &["linf", "l2"];

/// A robustness test as the attribute describes it.
pub(crate) struct Spec {
    /// What the generated tests do.
    pub kind: Kind,
    pub options: Options,
    /// `crate`: where the runtime is, for users who renamed the dependency.
    pub krate: Option<syn::Path>,
}

/// The kinds of test the attribute generates, chosen by the key that names what to run. A new
/// kind (a certifier, say) is a new variant here, its key in [`STRUCTURAL_KEYS`], a [`Scope`]
/// for its options, and its arm in `expand::render`.
pub(crate) enum Kind {
    /// `attack = ...` with `eps = ...`: one test per attack × ε, asserting robust accuracy.
    Attack {
        /// At least one known attack, none repeated.
        attacks: Vec<Attack>,
        /// At least one finite ε > 0, none repeated.
        eps: Vec<Eps>,
    },
    /// `certify = ...`: one test per certifier × ε (IBP, CROWN) or × radius (smoothing),
    /// asserting certified accuracy.
    Certify {
        /// At least one known certifier, none repeated.
        certifiers: Vec<Attack>,
        /// The L∞ radii of `ibp` and `crown`.
        eps: Vec<Eps>,
        /// The L2 radii of `smoothing`.
        radius: Vec<Eps>,
    },
    /// `perturbation = ...`: one test per perturbation, asserting invariance.
    Perturbation {
        /// At least one, none repeated.
        perturbations: Vec<Perturbation>,
        /// The radius of `linf` and `l2`, when written.
        eps: Option<Eps>,
    },
}

/// Which tests a key belongs to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Scope {
    /// Every kind of test.
    Any,
    /// Attack tests.
    Attack,
    /// Perturbation tests.
    Perturbation,
    /// Certification tests.
    Certify,
    /// Certification tests with randomized smoothing.
    Smoothing,
    /// Perturbation tests drawing from one of these families.
    Family(&'static [&'static str]),
}

#[derive(Debug)]
pub(crate) struct Attack {
    pub name: &'static str,
    span: Span,
}

/// `perturbation = "rotation+brightness"`: known families joined by `+`.
#[derive(Debug)]
pub(crate) struct Perturbation {
    /// The families, in the order written, joined by `+`.
    pub name: String,
    families: Vec<&'static str>,
    span: Span,
}

#[derive(Debug)]
pub(crate) struct Eps {
    pub value: f64,
    /// The literal's digits as written (`0.05`, `8e-3`): test names are made from them, so that
    /// `pgd_eps_0_05` reads like the attribute that produced it.
    digits: String,
    span: Span,
}

impl Eps {
    /// The part of a test name this ε contributes: `0.05` → `0_05`, `8e-3` → `8e_3`.
    fn name_part(&self) -> String {
        identifier_chars(&self.digits)
    }
}

/// One generated test.
pub(crate) struct Case<'a> {
    /// The test function's name, e.g. `pgd_eps_0_1` or `rotation`.
    pub name: String,
    pub test: CaseKind<'a>,
}

/// What one generated test runs.
pub(crate) enum CaseKind<'a> {
    Attack {
        attack: &'a Attack,
        eps: &'a Eps,
    },
    Certify {
        certifier: &'a Attack,
        radius: &'a Eps,
    },
    Perturbation {
        perturbation: &'a Perturbation,
    },
}

impl Spec {
    /// Every test: attack × ε, attack-major, so tests sort by attack in `cargo test` output; or
    /// one per perturbation.
    pub(crate) fn cases(&self) -> Vec<Case<'_>> {
        match &self.kind {
            Kind::Attack { attacks, eps } => attacks
                .iter()
                .flat_map(move |attack| {
                    eps.iter().map(move |eps| Case {
                        name: format!("{}_eps_{}", identifier_chars(attack.name), eps.name_part()),
                        test: CaseKind::Attack { attack, eps },
                    })
                })
                .collect(),
            Kind::Certify {
                certifiers,
                eps,
                radius,
            } => certifiers
                .iter()
                .flat_map(move |certifier| {
                    let (key, list) = if certifier.name == "smoothing" {
                        ("radius", radius)
                    } else {
                        ("eps", eps)
                    };
                    list.iter().map(move |r| Case {
                        name: format!("{}_{key}_{}", certifier.name, r.name_part()),
                        test: CaseKind::Certify {
                            certifier,
                            radius: r,
                        },
                    })
                })
                .collect(),
            Kind::Perturbation { perturbations, .. } => perturbations
                .iter()
                .map(|perturbation| Case {
                    name: identifier_chars(&perturbation.name),
                    test: CaseKind::Perturbation { perturbation },
                })
                .collect(),
        }
    }
}

/// Lower-cases `text` and turns everything that cannot appear in an identifier into `_`.
fn identifier_chars(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Declares the optional keys. Each line names the key, which is also the builder method it
/// becomes, the type that method takes, the check its value must pass, and the tests it belongs
/// to; keeping them together means a new option is one line here and nothing anywhere else.
macro_rules! options {
    ($($(#[doc = $doc:literal])* $key:ident: $ty:ty = $check:ident($($arg:expr),*) for $scope:expr;)*) => {
        /// The optional settings the user wrote; `None` leaves the runtime's default in place.
        #[derive(Debug, Default)]
        pub(crate) struct Options {
            $($(#[doc = $doc])* pub $key: Option<$ty>,)*
        }

        impl Options {
            const KEYS: &'static [&'static str] = &[$(stringify!($key)),*];
            const SCOPES: &'static [Scope] = &[$($scope),*];

            /// Sets `key` from `value`, or returns `None` when `key` is not an option.
            fn set(&mut self, key: &str, value: &Value<'_>) -> Option<syn::Result<()>> {
                match key {
                    $(stringify!($key) => Some(value.$check($($arg),*).map(|v| self.$key = Some(v))),)*
                    _ => None,
                }
            }

            /// The options that were written, as (builder method, argument), in declaration order.
            pub(crate) fn written(&self) -> Vec<(&'static str, &dyn ToTokens)> {
                let mut written: Vec<(&'static str, &dyn ToTokens)> = Vec::new();
                $(if let Some(value) = &self.$key {
                    written.push((stringify!($key), value));
                })*
                written
            }

            /// The tests `key` belongs to (`eps` too, for perturbation tests).
            fn scope(key: &str) -> Scope {
                match Self::KEYS.iter().position(|k| *k == key) {
                    Some(i) => Self::SCOPES[i],
                    None if key == "eps" => Scope::Family(EPS_FAMILIES),
                    None => Scope::Any,
                }
            }
        }
    };
}

const ATTACK: Scope = Scope::Attack;
const PERTURBATION: Scope = Scope::Perturbation;
const CERTIFY: Scope = Scope::Certify;
const SMOOTHING: Scope = Scope::Smoothing;
const ANY: Scope = Scope::Any;

options! {
    /// `norm = "linf"` or `norm = "l2"`: the norm of the ε-ball.
    norm: &'static str = one_of("norm", NORMS) for ATTACK;
    /// `steps = 10` (≥ 1): iterations of iterative attacks.
    steps: usize = integer(1) for ATTACK;
    /// `step_size = 0.01` (> 0): the step of iterative attacks, in input units.
    step_size: f64 = positive() for ATTACK;
    /// `restarts = 5` (≥ 1): independent runs per sample; the worst one counts.
    restarts: usize = integer(1) for ATTACK;
    /// `random_start = true`: start iterative attacks at a random point of the ε-ball.
    random_start: bool = boolean() for ATTACK;
    /// `targeted = true`: aim for a chosen wrong class instead of any wrong class.
    targeted: bool = boolean() for ATTACK;
    /// `loss = "ce"`, `"cw"` or `"dlr"`: cross-entropy, Carlini–Wagner margin or difference of
    /// logits ratio (APGD).
    loss: &'static str = one_of("loss", LOSSES) for ATTACK;
    /// `target_classes = 9` (≥ 1): how many of the most likely wrong classes APGD-T targets.
    target_classes: usize = integer(1) for ATTACK;
    /// `queries = 5000` (≥ 1): Square's forward passes per sample.
    queries: usize = integer(1) for ATTACK;
    /// `p_init = 0.8` (in (0, 1]): Square's initial square size, as a fraction of the pixels.
    p_init: f64 = positive_at_most(1.0) for ATTACK;
    /// `kappa = 0.0` (≥ 0): the logit margin κ C&W's examples must reach.
    kappa: f64 = non_negative() for ATTACK;
    /// `binary_search_steps = 9` (≥ 1): C&W's rounds of binary search over c.
    binary_search_steps: usize = integer(1) for ATTACK;
    /// `initial_const = 0.01` (> 0): C&W's first c.
    initial_const: f64 = positive() for ATTACK;
    /// `learning_rate = 0.1` (> 0): C&W's Adam learning rate.
    learning_rate: f64 = positive() for ATTACK;
    /// `overshoot = 0.02` (≥ 0): how far DeepFool steps past the boundary.
    overshoot: f64 = non_negative() for ATTACK;
    /// `sigma = 0.1` (> 0): the standard deviation of `gaussian` noise.
    sigma: f64 = positive() for Scope::Family(&["gaussian"]);
    /// `pixels = 10` (≥ 1): how many pixels `salt_pepper` sets.
    pixels: usize = integer(1) for Scope::Family(&["salt_pepper"]);
    /// `max_brightness = 0.2` (> 0): the largest change of `brightness`, in input units.
    max_brightness: f64 = positive() for Scope::Family(&["brightness"]);
    /// `max_contrast = 0.2` (in (0, 1)): `contrast` factors range over 1 ± this.
    max_contrast: f64 = positive_below(1.0) for Scope::Family(&["contrast"]);
    /// `max_shift = 2.0` (> 0): the largest `shift` on each axis, in pixels.
    max_shift: f64 = positive() for Scope::Family(&["shift"]);
    /// `max_degrees = 15.0` (in (0, 180]): the largest `rotation`.
    max_degrees: f64 = positive_at_most(180.0) for Scope::Family(&["rotation"]);
    /// `patch = 6` (≥ 1): the side of the `occlusion` square, in pixels.
    patch: usize = integer(1) for Scope::Family(&["occlusion"]);
    /// `min_certified_acc = 0.8` (in [0, 1]): the lowest acceptable share of samples classified
    /// correctly and certified.
    min_certified_acc: f64 = fraction() for CERTIFY;
    /// `n0 = 100` (≥ 1): smoothing's noisy copies that choose the class.
    n0: usize = integer(1) for SMOOTHING;
    /// `n = 100000` (≥ 1): smoothing's noisy copies that estimate its probability.
    n: usize = integer(1) for SMOOTHING;
    /// `alpha = 0.001` (in (0, 1)): the probability that a smoothing certificate is wrong.
    alpha: f64 = positive_below(1.0) for SMOOTHING;
    /// `cases = 256` (≥ 1): perturbations drawn per sample.
    cases: usize = integer(1) for PERTURBATION;
    /// `min_acc = 0.6` (in [0, 1]): the lowest acceptable robust accuracy.
    min_acc: f64 = fraction() for ATTACK;
    /// `max_drop = 0.2` (in [0, 1]): the largest acceptable fall from clean to robust accuracy.
    max_drop: f64 = fraction() for ATTACK;
    /// `min_invariance = 0.99` (in [0, 1]): the lowest acceptable share of correctly classified
    /// samples whose prediction survives every perturbation.
    min_invariance: f64 = fraction() for PERTURBATION;
    /// `samples = 500` (≥ 1): how many test samples to evaluate.
    samples: usize = integer(1) for ANY;
    /// `batch_size = 128` (≥ 1)
    batch_size: usize = integer(1) for ANY;
    /// `seed = 42` (any u64): the run's RNG seed.
    seed: u64 = integer(0) for ANY;
    /// `device = "cpu"`, `"cuda"` or `"auto"`
    device: &'static str = one_of("device", DEVICES) for ANY;
    /// `masking_checks = "fail"`, `"warn"` or `"off"`: what gradient-masking symptoms do.
    masking_checks: &'static str = one_of("masking_checks", MASKING) for ATTACK;
    /// `confidence = 0.95` (in (0, 1)): assert on the one-sided Clopper–Pearson bound at this
    /// level instead of the measured share.
    confidence: f64 = confidence_level() for ANY;
    /// `baseline = true`: compare with the committed baseline in `robust-baselines/`.
    baseline: bool = boolean() for ANY;
    /// `tolerance = 0.02` (in [0, 1]): how far a metric may fall below its baseline.
    tolerance: f64 = fraction() for ANY;
}

/// Parses the attribute's arguments, reporting every mistake at once.
pub(crate) fn parse(tokens: TokenStream) -> syn::Result<Spec> {
    let args = Punctuated::<Arg, Token![,]>::parse_terminated.parse2(tokens)?;
    let mut errors = Errors::default();
    let mut written: Vec<(String, Span)> = Vec::new();
    let mut meant: Vec<&str> = Vec::new();
    let mut attacks = None;
    let mut perturbations = None;
    let mut certifiers = None;
    let mut radius = None;
    let mut eps = None;
    let mut krate = None;
    let mut options = Options::default();

    for Arg { key, value } in &args {
        let name = key.unraw().to_string();
        if !all_keys().any(|known| known == name) {
            let known: Vec<&str> = all_keys().collect();
            errors.at(key.span(), unknown("key", &name, &known));
            // `epss = 0.1` already says "did you mean `eps`?": "missing `eps`" would repeat it.
            meant.extend(closest(&name, &known));
            continue;
        }
        if written.iter().any(|(k, _)| *k == name) {
            errors.at(key.span(), format!("duplicate key `{name}`"));
            continue;
        }
        let value = Value {
            key: &name,
            expr: value,
        };
        match name.as_str() {
            // attack = "pgd"
            // attack = ["fgsm", "pgd"]
            "attack" => attacks = errors.check(value.list(Value::attack)),
            // perturbation = "rotation"
            // perturbation = ["rotation", "shift", "rotation+brightness"]
            "perturbation" => perturbations = errors.check(value.list(Value::perturbation)),
            // certify = "ibp"
            // certify = ["ibp", "crown", "smoothing"]
            "certify" => certifiers = errors.check(value.list(Value::certifier)),
            // radius = 0.5
            // radius = [0.25, 0.5]
            "radius" => radius = errors.check(value.list(Value::eps)),
            // eps = 0.1
            // eps = [0.05, 0.1]
            "eps" => eps = errors.check(value.list(Value::eps)),
            // crate = "my_runtime"
            // crate = "::some::path::robust_runtime"
            "crate" => krate = errors.check(value.path()),
            // norm = "l2", steps = 10, max_degrees = 15.0, ...: see `Options`.
            _ => {
                if let Some(result) = options.set(&name, &value) {
                    errors.check(result);
                }
            }
        }
        written.push((name, key.span()));
    }

    let has = |key: &str| written.iter().any(|(k, _)| k == key) || meant.contains(&key);
    let kind = if has("certify") {
        for other in ["attack", "perturbation"] {
            if let Some((_, span)) = written.iter().find(|(k, _)| k == other) {
                errors.at(
                    *span,
                    format!(
                        "`{other}` and `certify` cannot be combined: a certification test proves \
                         robustness, an {other} test looks for failures; write one function for each"
                    ),
                );
            }
        }
        Scope::Certify
    } else if has("perturbation") {
        if let Some((_, span)) = written.iter().find(|(k, _)| k == "attack") {
            errors.at(
                *span,
                "`attack` and `perturbation` cannot be combined: a test either attacks \
                 (`attack = ...`) or draws random perturbations (`perturbation = ...`); write \
                 one function for each",
            );
        }
        Scope::Perturbation
    } else {
        Scope::Attack
    };
    match kind {
        Scope::Certify => {
            check_certify(&written, certifiers.as_deref(), &options, &has, &mut errors)
        }
        Scope::Perturbation => {
            if !has("min_invariance") {
                errors.at(
                    Span::call_site(),
                    "missing `min_invariance`: a perturbation test asserts the lowest acceptable \
                     share of correctly classified samples whose prediction survives every \
                     perturbation, e.g. `min_invariance = 0.99`",
                );
            }
            if let (Some(list), Some((_, span))) = (&eps, written.iter().find(|(k, _)| k == "eps"))
            {
                if list.len() > 1 {
                    errors.at(
                        *span,
                        "`eps` takes one value in a perturbation test: it is the radius of \
                         `linf` and `l2` noise",
                    );
                }
            }
        }
        _ => {
            if !has("attack") {
                errors.at(
                    Span::call_site(),
                    format!(
                        "missing `attack`, `perturbation` or `certify`: name the attacks to run, \
                         e.g. `attack = \"pgd\"` or `attack = [\"fgsm\", \"pgd\"]` (known: {}), the \
                         perturbations to draw, e.g. `perturbation = \"rotation\"` (known: {}), or \
                         the certifiers, e.g. `certify = \"crown\"` (known: {})",
                        backticked(KNOWN_ATTACKS),
                        backticked(KNOWN_PERTURBATIONS),
                        backticked(KNOWN_CERTIFIERS)
                    ),
                );
            } else if !has("eps") {
                errors.at(
                    Span::call_site(),
                    "missing `eps`: give the perturbation budget, e.g. `eps = 0.1` or `eps = [0.05, 0.1]`",
                );
            }
            if has("attack") && !has("min_acc") && !has("max_drop") {
                errors.at(
                    Span::call_site(),
                    "missing `min_acc` or `max_drop`: a robustness test needs something to \
                     assert, the lowest acceptable robust accuracy (`min_acc = 0.6`) and/or the \
                     largest acceptable drop from clean accuracy (`max_drop = 0.2`)",
                );
            }
        }
    }
    // With neither, or both, the kind of test is unknown: its keys cannot be judged.
    if kind == Scope::Certify || has("attack") != has("perturbation") {
        check_scopes(&written, kind, perturbations.as_deref(), &mut errors);
    }
    if options.baseline == Some(false) {
        if let Some((_, span)) = written.iter().find(|(k, _)| k == "tolerance") {
            errors.at(
                *span,
                "`tolerance` is how far a metric may fall below its baseline, but `baseline = \
                 false` turns the baseline off: drop one of them",
            );
        }
    }
    if let (Some(attacks), Some(eps)) = (&attacks, &eps) {
        check_distinct(attacks, eps, &mut errors);
    }
    if let Some(perturbations) = &perturbations {
        check_distinct_perturbations(perturbations, &mut errors);
    }

    errors.finish()?;
    let kind = match (kind, attacks, perturbations, eps) {
        (Scope::Certify, _, _, eps) => Kind::Certify {
            certifiers: certifiers.unwrap_or_default(),
            eps: eps.unwrap_or_default(),
            radius: radius.unwrap_or_default(),
        },
        (Scope::Attack, Some(attacks), _, Some(eps)) => Kind::Attack { attacks, eps },
        (Scope::Perturbation, _, Some(perturbations), eps) => Kind::Perturbation {
            perturbations,
            eps: eps.and_then(|mut list| list.pop()),
        },
        // Unreachable: a missing or invalid key has been reported above.
        _ => {
            return Err(syn::Error::new(
                Span::call_site(),
                "`attack` and `eps`, or `perturbation`, are required",
            ))
        }
    };
    Ok(Spec {
        kind,
        options,
        krate,
    })
}

fn all_keys() -> impl Iterator<Item = &'static str> {
    STRUCTURAL_KEYS.iter().chain(Options::KEYS).copied()
}

/// The keys a certification test needs: `min_certified_acc`, `eps` for IBP and CROWN, `radius`
/// and `sigma` for smoothing, and none of them where no certifier uses them.
fn check_certify(
    written: &[(String, Span)],
    certifiers: Option<&[Attack]>,
    options: &Options,
    has: &dyn Fn(&str) -> bool,
    errors: &mut Errors,
) {
    let Some(certifiers) = certifiers else {
        return;
    };
    let span_of = |key: &str| written.iter().find(|(k, _)| k == key).map(|(_, s)| *s);
    for (i, c) in certifiers.iter().enumerate() {
        if certifiers[..i].iter().any(|d| d.name == c.name) {
            errors.at(c.span, format!("certifier `{}` is listed twice", c.name));
        }
    }
    if !has("min_certified_acc") {
        errors.at(
            Span::call_site(),
            "missing `min_certified_acc`: a certification test asserts the lowest acceptable \
             share of samples classified correctly and certified, e.g. `min_certified_acc = 0.8`",
        );
    }
    let bounds = certifiers.iter().any(|c| c.name != "smoothing");
    let smoothing = certifiers.iter().any(|c| c.name == "smoothing");
    if bounds && !has("eps") {
        errors.at(
            Span::call_site(),
            "missing `eps`: IBP and CROWN certify the L∞ ball of radius `eps`, e.g. `eps = 0.1`",
        );
    }
    if !bounds {
        if let Some(span) = span_of("eps") {
            errors.at(
                span,
                "`eps` is the L∞ radius of `ibp` and `crown`; smoothing certifies L2 `radius = ...`",
            );
        }
    }
    if smoothing {
        if !has("radius") {
            errors.at(
                Span::call_site(),
                "missing `radius`: smoothing certifies an L2 radius, e.g. `radius = 0.5`",
            );
        }
        if !has("sigma") {
            errors.at(
                Span::call_site(),
                "missing `sigma`: smoothing needs the standard deviation of its Gaussian noise, \
                 the one the model was trained with, e.g. `sigma = 0.25`",
            );
        }
        if let (Some(n0), Some(n), Some(span)) = (options.n0, options.n, span_of("n0")) {
            if n0 > n {
                errors.at(
                    span,
                    format!("`n0 = {n0}` must be at most `n = {n}`: the selection sample is the smaller one"),
                );
            }
        }
    } else {
        for key in ["radius", "sigma", "n0", "n", "alpha"] {
            if let Some(span) = span_of(key) {
                errors.at(
                    span,
                    format!("`{key}` is a parameter of `certify = \"smoothing\"`, which this test does not run"),
                );
            }
        }
    }
}

/// Every key written must belong to the kind of test: `steps` to attacks, `max_degrees` to a
/// test that rotates. Misplaced keys are errors rather than ignored, since a key that does
/// nothing is a test that checks something other than what it says.
fn check_scopes(
    written: &[(String, Span)],
    kind: Scope,
    perturbations: Option<&[Perturbation]>,
    errors: &mut Errors,
) {
    for (key, span) in written {
        if matches!(key.as_str(), "attack" | "perturbation" | "certify" | "crate")
            || (key == "eps" && matches!(kind, Scope::Attack | Scope::Certify))
            || (key == "radius" && kind == Scope::Certify)
            // σ is the noise of smoothing as well as of the `gaussian` perturbation.
            || (key == "sigma" && kind == Scope::Certify)
        {
            continue;
        }
        let scope = if key == "radius" {
            Scope::Smoothing
        } else {
            Options::scope(key)
        };
        let message = match (scope, kind) {
            (Scope::Certify | Scope::Smoothing, Scope::Certify) => continue,
            (Scope::Certify | Scope::Smoothing, _) => format!(
                "`{key}` is a parameter of certification tests (`certify = ...`); this test \
                 does not use it"
            ),
            (Scope::Attack | Scope::Perturbation | Scope::Family(_), Scope::Certify) => {
                format!("`{key}` is not a parameter of certification tests (`certify = ...`)")
            }
            (Scope::Any, _) | (Scope::Attack, Scope::Attack) => continue,
            (Scope::Perturbation, Scope::Perturbation) => continue,
            (Scope::Attack, _) => format!(
                "`{key}` is a parameter of attack tests; a perturbation test \
                 (`perturbation = ...`) does not use it"
            ),
            (Scope::Perturbation, _) => format!(
                "`{key}` is a parameter of perturbation tests; an attack test (`attack = ...`) \
                 does not use it"
            ),
            (Scope::Family(families), Scope::Attack) => format!(
                "`{key}` is a parameter of the {} perturbation; an attack test \
                 (`attack = ...`) does not use it",
                or_list(families)
            ),
            (Scope::Family(families), _) => {
                let drawn: Vec<&str> = perturbations
                    .unwrap_or_default()
                    .iter()
                    .flat_map(|p| p.families.iter().copied())
                    .collect();
                if drawn.is_empty() || drawn.iter().any(|f| families.contains(f)) {
                    continue;
                }
                let mut names: Vec<&str> = Vec::new();
                for p in perturbations.unwrap_or_default() {
                    if !names.contains(&p.name.as_str()) {
                        names.push(&p.name);
                    }
                }
                format!(
                    "`{key}` does not apply to {}: it is a parameter of {}",
                    or_list(&names),
                    or_list(families)
                )
            }
        };
        errors.at(*span, message);
    }
}

/// "`a`", "`a` or `b`", "`a`, `b` or `c`".
fn or_list(words: &[&str]) -> String {
    let quoted: Vec<String> = words.iter().map(|w| format!("`{w}`")).collect();
    match quoted.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// Two entries that would generate the same test are a mistake, not something to merge quietly:
/// the error points at the second one. Comparing ε by value is enough: test names come from
/// syn's normalised digits (no `_`, no `+`), so equal names imply equal values, while equal
/// values can be written differently (`0.1`, `0.10`).
fn check_distinct(attacks: &[Attack], eps: &[Eps], errors: &mut Errors) {
    for (i, attack) in attacks.iter().enumerate() {
        if attacks[..i].iter().any(|a| a.name == attack.name) {
            errors.at(
                attack.span,
                format!(
                    "attack `{}` is listed twice, so its `{}_eps_*` tests would be generated twice",
                    attack.name, attack.name
                ),
            );
        }
    }
    for (i, e) in eps.iter().enumerate() {
        if let Some(first) = eps[..i].iter().find(|f| f.value == e.value) {
            errors.at(
                e.span,
                format!(
                    "eps `{}` is the same value as `{}`, listed before, so its tests would be \
                     generated twice",
                    e.digits, first.digits
                ),
            );
        }
    }
}

fn check_distinct_perturbations(perturbations: &[Perturbation], errors: &mut Errors) {
    for (i, p) in perturbations.iter().enumerate() {
        if perturbations[..i].iter().any(|q| q.name == p.name) {
            errors.at(
                p.span,
                format!(
                    "perturbation `{}` is listed twice, so its test would be generated twice",
                    p.name
                ),
            );
        }
    }
}

/// One `key = value`; the value stays an expression until its key says what it must be.
struct Arg {
    key: Ident,
    value: Expr,
}

impl Parse for Arg {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        // `parse_any` so that the keyword `crate` is read as a key like any other.
        let key = Ident::parse_any(input)?;
        if !input.peek(Token![=]) {
            return Err(syn::Error::new(
                key.span(),
                format!("expected `{} = value`", key.unraw()),
            ));
        }
        input.parse::<Token![=]>()?;
        let value = input.parse()?;
        Ok(Arg { key, value })
    }
}

/// A value together with the key it was given for, which every message names.
struct Value<'a> {
    key: &'a str,
    expr: &'a Expr,
}

/// A number literal, possibly negated, as written.
struct Number {
    value: f64,
    /// The digits without sign or suffix, underscores removed.
    digits: String,
    /// The literal as written, with its sign, for messages.
    text: String,
}

impl Value<'_> {
    // attack = "pgd"
    fn attack(&self) -> syn::Result<Attack> {
        let name = self.one_of("attack", KNOWN_ATTACKS)?;
        Ok(Attack {
            name,
            span: self.span(),
        })
    }

    // certify = "crown"
    fn certifier(&self) -> syn::Result<Attack> {
        let name = self.one_of("certifier", KNOWN_CERTIFIERS)?;
        Ok(Attack {
            name,
            span: self.span(),
        })
    }

    // perturbation = "rotation"
    // perturbation = "rotation+brightness"
    fn perturbation(&self) -> syn::Result<Perturbation> {
        let lit = self.string(KNOWN_PERTURBATIONS[0])?;
        let name = lit.value();
        let mut families: Vec<&'static str> = Vec::new();
        let mut errors = Errors::default();
        for part in name.split('+').map(str::trim) {
            match KNOWN_PERTURBATIONS.iter().find(|known| **known == part) {
                Some(_) if families.contains(&part) => errors.at(
                    lit.span(),
                    format!("perturbation `{part}` appears twice in `{name}`"),
                ),
                Some(known) => families.push(known),
                None => errors.at(
                    lit.span(),
                    unknown("perturbation", part, KNOWN_PERTURBATIONS),
                ),
            }
        }
        errors.finish()?;
        Ok(Perturbation {
            name: families.join("+"),
            families,
            span: lit.span(),
        })
    }

    // eps = 0.1
    // eps = 8e-3
    // eps = 1
    fn eps(&self) -> syn::Result<Eps> {
        let number = self.number()?;
        self.check_positive(&number)?;
        Ok(Eps {
            value: number.value,
            digits: number.digits,
            span: self.span(),
        })
    }

    /// `[a, b, ...]` with each element checked by `item`, or a single value standing for `[value]`.
    fn list<T>(&self, item: impl Fn(&Self) -> syn::Result<T>) -> syn::Result<Vec<T>> {
        let Expr::Array(array) = self.expr else {
            return Ok(vec![item(self)?]);
        };
        if array.elems.is_empty() {
            return Err(syn::Error::new_spanned(
                array,
                format!("`{}` needs at least one value", self.key),
            ));
        }
        let mut errors = Errors::default();
        let items: Vec<T> = array
            .elems
            .iter()
            .filter_map(|expr| {
                errors.check(item(&Value {
                    key: self.key,
                    expr,
                }))
            })
            .collect();
        errors.finish()?;
        Ok(items)
    }

    fn number(&self) -> syn::Result<Number> {
        let (sign, literal) = match self.expr {
            Expr::Unary(ExprUnary {
                op: UnOp::Neg(_),
                expr,
                ..
            }) => ("-", &**expr),
            expr => ("", expr),
        };
        let (digits, suffix) = match literal {
            Expr::Lit(ExprLit {
                lit: Lit::Float(lit),
                ..
            }) => (lit.base10_digits(), lit.suffix()),
            Expr::Lit(ExprLit {
                lit: Lit::Int(lit), ..
            }) => (lit.base10_digits(), lit.suffix()),
            _ => {
                let hint = match self.string_value() {
                    Some(s) if s.trim().parse::<f64>().is_ok() => {
                        format!("; remove the quotes: `{} = {}`", self.key, s.trim())
                    }
                    _ => String::new(),
                };
                return Err(self.expected("a number", &hint));
            }
        };
        if !matches!(suffix, "" | "f32" | "f64") {
            return Err(self.error(format!(
                "unexpected suffix `{suffix}` on `{}`: write a plain number",
                self.key
            )));
        }
        let magnitude: f64 = digits.parse().map_err(|_| self.expected("a number", ""))?;
        Ok(Number {
            value: if sign.is_empty() {
                magnitude
            } else {
                -magnitude
            },
            digits: digits.to_owned(),
            text: format!("{sign}{digits}"),
        })
    }

    // step_size = 0.01
    fn positive(&self) -> syn::Result<f64> {
        let number = self.number()?;
        self.check_positive(&number)?;
        Ok(number.value)
    }

    fn check_positive(&self, number: &Number) -> syn::Result<()> {
        if !number.value.is_finite() {
            return Err(self.error(format!(
                "`{}` must be finite, found `{}`",
                self.key, number.text
            )));
        }
        if number.value <= 0.0 {
            return Err(self.error(format!(
                "`{}` must be greater than 0, found `{}`",
                self.key, number.text
            )));
        }
        Ok(())
    }

    // min_acc = 0.6
    // confidence = 0.0 (finite and ≥ 0)
    fn non_negative(&self) -> syn::Result<f64> {
        let number = self.number()?;
        if !number.value.is_finite() || number.value < 0.0 {
            return Err(self.error(format!(
                "`{}` must be a finite number ≥ 0, found `{}`",
                self.key, number.text
            )));
        }
        Ok(number.value)
    }

    // p_init = 0.8 (in (0, 1])
    // max_degrees = 15.0 (in (0, 180])
    fn positive_at_most(&self, hi: f64) -> syn::Result<f64> {
        let value = self.positive()?;
        if value > hi {
            return Err(self.error(format!(
                "`{}` must be in (0, {hi}], found `{value}`",
                self.key
            )));
        }
        Ok(value)
    }

    // max_contrast = 0.2 (in (0, 1))
    // confidence = 0.95 (in (0, 1))
    fn confidence_level(&self) -> syn::Result<f64> {
        let number = self.number()?;
        if !(number.value > 0.0 && number.value < 1.0) {
            return Err(self.error(format!(
                "`confidence` is the confidence level of the assertions, in (0, 1) (e.g. 0.95), \
                 found `{}`; C&W's logit margin κ is `kappa`",
                number.text
            )));
        }
        Ok(number.value)
    }

    fn positive_below(&self, hi: f64) -> syn::Result<f64> {
        let value = self.positive()?;
        if value >= hi {
            return Err(self.error(format!(
                "`{}` must be in (0, {hi}), found `{value}`",
                self.key
            )));
        }
        Ok(value)
    }

    fn fraction(&self) -> syn::Result<f64> {
        let number = self.number()?;
        if !(0.0..=1.0).contains(&number.value) {
            // `min_acc = 60` is almost surely a percentage; `1.5` is more likely a slip.
            let hint = if (1.0..=100.0).contains(&number.value) && number.value.fract() == 0.0 {
                format!(
                    "; it is a fraction, so {}% is `{} = {}`",
                    number.text,
                    self.key,
                    number.value / 100.0
                )
            } else {
                String::new()
            };
            return Err(self.error(format!(
                "`{}` must be between 0 and 1, found `{}`{hint}",
                self.key, number.text
            )));
        }
        Ok(number.value)
    }

    // steps = 10
    // seed = 42
    fn integer<T: TryFrom<u64>>(&self, min: u64) -> syn::Result<T> {
        let wanted = if min == 0 {
            "a non-negative integer".to_owned()
        } else {
            format!("an integer ≥ {min}")
        };
        let lit = match self.expr {
            Expr::Lit(ExprLit {
                lit: Lit::Int(lit), ..
            }) => lit,
            Expr::Unary(ExprUnary {
                op: UnOp::Neg(_),
                expr,
                ..
            }) if matches!(
                **expr,
                Expr::Lit(ExprLit {
                    lit: Lit::Int(_),
                    ..
                })
            ) =>
            {
                return Err(self.expected(&wanted, ""));
            }
            _ => {
                let hint = match self.string_value() {
                    Some(s) if s.trim().parse::<u64>().is_ok() => {
                        format!("; remove the quotes: `{} = {}`", self.key, s.trim())
                    }
                    _ => String::new(),
                };
                return Err(self.expected(&wanted, &hint));
            }
        };
        const INTEGER_SUFFIXES: &[&str] = &[
            "", "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128",
            "isize",
        ];
        if !INTEGER_SUFFIXES.contains(&lit.suffix()) {
            return Err(self.error(format!(
                "unexpected suffix `{}` on `{}`: write a plain integer",
                lit.suffix(),
                self.key
            )));
        }
        let too_large = || {
            self.error(format!(
                "`{}` is too large, found `{}`",
                self.key,
                lit.base10_digits()
            ))
        };
        let value: u64 = lit.base10_parse().map_err(|_| too_large())?;
        if value < min {
            return Err(self.expected(&wanted, ""));
        }
        T::try_from(value).map_err(|_| too_large())
    }

    // targeted = true
    fn boolean(&self) -> syn::Result<bool> {
        if let Expr::Lit(ExprLit {
            lit: Lit::Bool(lit),
            ..
        }) = self.expr
        {
            return Ok(lit.value);
        }
        let hint = match self.string_value().as_deref().map(str::trim) {
            Some(s @ ("true" | "false")) => format!("; remove the quotes: `{} = {s}`", self.key),
            _ => String::new(),
        };
        Err(self.expected("`true` or `false`", &hint))
    }

    fn string(&self, example: &str) -> syn::Result<&LitStr> {
        if let Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) = self.expr
        {
            return Ok(lit);
        }
        let hint = match self.expr {
            Expr::Path(path) => format!(
                "; add quotes: `{} = \"{}\"`",
                self.key,
                path.to_token_stream().to_string().replace(' ', "")
            ),
            _ => format!(", e.g. `{} = \"{example}\"`", self.key),
        };
        Err(self.expected("a string", &hint))
    }

    // norm = "linf"
    fn one_of(&self, what: &str, choices: &[&'static str]) -> syn::Result<&'static str> {
        let lit = self.string(choices[0])?;
        let value = lit.value();
        match choices.iter().find(|choice| **choice == value) {
            Some(choice) => Ok(*choice),
            None => Err(syn::Error::new(lit.span(), unknown(what, &value, choices))),
        }
    }

    // crate = "my_runtime"
    fn path(&self) -> syn::Result<syn::Path> {
        let lit = self.string("::robust_runtime")?;
        lit.parse().map_err(|_| {
            syn::Error::new(
                lit.span(),
                format!(
                    "`crate` must be a path to the runtime crate, such as \"::robust_runtime\", \
                     found {:?}",
                    lit.value()
                ),
            )
        })
    }

    fn string_value(&self) -> Option<String> {
        match self.expr {
            Expr::Lit(ExprLit {
                lit: Lit::Str(lit), ..
            }) => Some(lit.value()),
            _ => None,
        }
    }

    fn span(&self) -> Span {
        match self.expr {
            Expr::Lit(ExprLit { lit, .. }) => lit.span(),
            _ => syn::spanned::Spanned::span(self.expr),
        }
    }

    fn error(&self, message: String) -> syn::Error {
        syn::Error::new_spanned(self.expr, message)
    }

    /// "expected {wanted} for `key`, found {what the value is}{hint}"
    fn expected(&self, wanted: &str, hint: &str) -> syn::Error {
        let found = match self.expr {
            Expr::Lit(ExprLit {
                lit: Lit::Str(lit), ..
            }) => format!("the string {:?}", lit.value()),
            Expr::Array(_) => {
                "a list (only `attack`, `perturbation` and `eps` take lists)".to_owned()
            }
            Expr::Lit(_) | Expr::Path(_) | Expr::Unary(_) => format!(
                "`{}`",
                self.expr.to_token_stream().to_string().replace(' ', "")
            ),
            _ => "an expression (only literals are accepted)".to_owned(),
        };
        self.error(format!(
            "expected {wanted} for `{}`, found {found}{hint}",
            self.key
        ))
    }
}

/// "unknown {what} `{value}`", with the closest candidate when one is a likely typo, else the list.
fn unknown(what: &str, value: &str, candidates: &[&str]) -> String {
    match closest(value, candidates) {
        Some(candidate) => format!("unknown {what} `{value}`; did you mean `{candidate}`?"),
        None => format!(
            "unknown {what} `{value}`; expected one of {}",
            backticked(candidates)
        ),
    }
}

fn backticked(words: &[&str]) -> String {
    words
        .iter()
        .map(|word| format!("`{word}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The candidate `input` was most likely meant to be: at most one edit per three characters, or
/// one a prefix of the other (`epsilon` → `eps`, `step` → `steps`). Inputs of one or two
/// characters get no suggestion, since one edit there is a different word (`l1` is not `l2`).
fn closest<'a>(input: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let input = input.to_lowercase();
    let threshold = input.chars().count() / 3;
    candidates
        .iter()
        .filter_map(|&candidate| {
            let distance = edit_distance(&input, candidate);
            let prefix = input.len() >= 3
                && candidate.len() >= 3
                && (candidate.starts_with(&input) || input.starts_with(candidate));
            (distance <= threshold || prefix).then_some((distance, candidate))
        })
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance where swapping two neighbours counts as one edit (`pdg` → `pgd`).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // d[i][j]: distance between the first i chars of a and the first j chars of b.
    let mut d = vec![vec![0; b.len() + 1]; a.len() + 1];
    d[0] = (0..=b.len()).collect();
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let substitution = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + substitution);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod should {
    use quote::quote;

    use super::*;

    const ALL_KEYS: &str = "`attack`, `perturbation`, `certify`, `eps`, `radius`, `crate`, `norm`, `steps`, `step_size`, `restarts`, `random_start`, `targeted`, `loss`, `target_classes`, `queries`, `p_init`, `kappa`, `binary_search_steps`, `initial_const`, `learning_rate`, `overshoot`, `sigma`, `pixels`, `max_brightness`, `max_contrast`, `max_shift`, `max_degrees`, `patch`, `min_certified_acc`, `n0`, `n`, `alpha`, `cases`, `min_acc`, `max_drop`, `min_invariance`, `samples`, `batch_size`, `seed`, `device`, `masking_checks`, `confidence`, `baseline`, `tolerance`";

    fn spec(tokens: TokenStream) -> Spec {
        parse(tokens).unwrap_or_else(|e| panic!("unexpected error: {e}"))
    }

    /// Every message the tokens produce, in order.
    fn errors(tokens: TokenStream) -> Vec<String> {
        match parse(tokens) {
            Ok(spec) => panic!("expected errors, parsed {:?}", names(&spec)),
            Err(error) => error.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    /// The one message the tokens produce.
    fn error(tokens: TokenStream) -> String {
        let mut all = errors(tokens);
        assert_eq!(all.len(), 1, "expected exactly one error, got {all:#?}");
        all.remove(0)
    }

    fn eps(spec: &Spec) -> Vec<f64> {
        match &spec.kind {
            Kind::Attack { eps, .. } => eps.iter().map(|e| e.value).collect(),
            Kind::Perturbation { eps, .. } => eps.iter().map(|e| e.value).collect(),
            Kind::Certify { eps, radius, .. } => {
                eps.iter().chain(radius).map(|e| e.value).collect()
            }
        }
    }

    fn names(spec: &Spec) -> Vec<String> {
        spec.cases().into_iter().map(|case| case.name).collect()
    }

    #[test]
    fn name_certification_tests_by_certifier_and_radius() {
        let spec = spec(quote!(
            certify = ["ibp", "crown", "smoothing"],
            eps = [0.05, 0.1],
            radius = 0.5,
            sigma = 0.25,
            min_certified_acc = 0.8
        ));
        assert_eq!(
            names(&spec),
            [
                "ibp_eps_0_05",
                "ibp_eps_0_1",
                "crown_eps_0_05",
                "crown_eps_0_1",
                "smoothing_radius_0_5"
            ]
        );
        assert_eq!(eps(&spec), [0.05, 0.1, 0.5]);
        assert_eq!(spec.options.sigma, Some(0.25));
    }

    #[test]
    fn reject_a_certification_test_without_its_threshold() {
        let message = error(quote!(certify = "ibp", eps = 0.1));
        assert!(message.contains("missing `min_certified_acc`"), "{message}");
    }

    #[test]
    fn parse_a_single_attack_and_eps() {
        let spec = spec(quote!(attack = "pgd", eps = 0.1, min_acc = 0.5));
        assert_eq!(names(&spec), ["pgd_eps_0_1"]);
        assert_eq!(eps(&spec), [0.1]);
        assert_eq!(spec.options.min_acc, Some(0.5));
        assert!(spec.krate.is_none());
    }

    #[test]
    fn generate_one_case_per_attack_and_eps_attack_major() {
        let spec = spec(quote!(
            attack = ["fgsm", "pgd"],
            eps = [0.05, 0.1],
            max_drop = 0.2,
        ));
        assert_eq!(
            names(&spec),
            [
                "fgsm_eps_0_05",
                "fgsm_eps_0_1",
                "pgd_eps_0_05",
                "pgd_eps_0_1"
            ]
        );
    }

    #[test]
    fn name_tests_after_the_digits_as_written() {
        let spec = spec(quote!(
            attack = "pgd",
            eps = [1, 8e-3, 0.25f64, 1_0.5, 2E+1],
            min_acc = 0
        ));
        assert_eq!(
            names(&spec),
            [
                "pgd_eps_1",
                "pgd_eps_8e_3",
                "pgd_eps_0_25",
                "pgd_eps_10_5",
                "pgd_eps_2e1"
            ]
        );
        assert_eq!(eps(&spec), [1.0, 0.008, 0.25, 10.5, 20.0]);
    }

    #[test]
    fn reject_a_tolerance_when_the_baseline_is_off() {
        assert_eq!(
            error(quote!(
                attack = "pgd",
                eps = 0.1,
                min_acc = 0.5,
                baseline = false,
                tolerance = 0.02
            )),
            "`tolerance` is how far a metric may fall below its baseline, but `baseline = false` \
             turns the baseline off: drop one of them"
        );
    }

    #[test]
    fn reject_a_confidence_level_outside_the_open_unit_interval() {
        assert_eq!(
            error(quote!(
                attack = "cw",
                eps = 0.1,
                min_acc = 0.5,
                confidence = 0.0
            )),
            "`confidence` is the confidence level of the assertions, in (0, 1) (e.g. 0.95), \
             found `0.0`; C&W's logit margin κ is `kappa`"
        );
    }

    #[test]
    fn accept_every_option_with_its_type() {
        let spec = spec(quote!(
            attack = "pgd",
            eps = 0.1,
            norm = "l2",
            steps = 40,
            step_size = 0.01,
            restarts = 2,
            random_start = true,
            targeted = false,
            loss = "cw",
            target_classes = 9,
            queries = 100,
            p_init = 0.5,
            kappa = 0.0,
            binary_search_steps = 3,
            initial_const = 0.1,
            learning_rate = 0.05,
            overshoot = 0.02,
            min_acc = 1,
            max_drop = 0.0,
            samples = 500usize,
            batch_size = 64,
            seed = 18446744073709551615,
            device = "auto",
            masking_checks = "warn",
            confidence = 0.95,
            baseline = true,
            tolerance = 0.02,
        ));
        let o = &spec.options;
        assert_eq!(o.norm, Some("l2"));
        assert_eq!(o.steps, Some(40));
        assert_eq!(o.step_size, Some(0.01));
        assert_eq!(o.restarts, Some(2));
        assert_eq!(o.random_start, Some(true));
        assert_eq!(o.targeted, Some(false));
        assert_eq!(o.loss, Some("cw"));
        assert_eq!(o.target_classes, Some(9));
        assert_eq!(o.queries, Some(100));
        assert_eq!(o.p_init, Some(0.5));
        assert_eq!(o.kappa, Some(0.0));
        assert_eq!(o.binary_search_steps, Some(3));
        assert_eq!(o.initial_const, Some(0.1));
        assert_eq!(o.learning_rate, Some(0.05));
        assert_eq!(o.overshoot, Some(0.02));
        assert_eq!(o.min_acc, Some(1.0));
        assert_eq!(o.max_drop, Some(0.0));
        assert_eq!(o.samples, Some(500));
        assert_eq!(o.batch_size, Some(64));
        assert_eq!(o.seed, Some(u64::MAX));
        assert_eq!(o.device, Some("auto"));
        assert_eq!(o.masking_checks, Some("warn"));
        assert_eq!(
            (o.confidence, o.baseline, o.tolerance),
            (Some(0.95), Some(true), Some(0.02))
        );
        // Every option of attack tests was written above, so every one must come back as a
        // builder call.
        let written: Vec<&str> = o.written().into_iter().map(|(key, _)| key).collect();
        let expected: Vec<&str> = Options::KEYS
            .iter()
            .copied()
            .filter(|k| matches!(Options::scope(k), Scope::Attack | Scope::Any))
            .collect();
        assert_eq!(written, expected);
    }

    #[test]
    fn accept_every_perturbation_option_with_its_type() {
        let spec = spec(quote!(
            perturbation = [
                "linf",
                "gaussian",
                "salt_pepper",
                "brightness",
                "contrast",
                "shift+rotation",
                "occlusion"
            ],
            eps = 0.05,
            sigma = 0.1,
            pixels = 10,
            max_brightness = 0.2,
            max_contrast = 0.3,
            max_shift = 2,
            max_degrees = 15.0,
            patch = 6,
            cases = 256,
            min_invariance = 0.99,
            samples = 100,
            batch_size = 512,
            seed = 3,
            device = "cpu",
            confidence = 0.99,
            baseline = false,
        ));
        let o = &spec.options;
        assert_eq!(eps(&spec), [0.05]);
        assert_eq!(
            (o.sigma, o.pixels, o.max_brightness, o.max_contrast),
            (Some(0.1), Some(10), Some(0.2), Some(0.3))
        );
        assert_eq!(
            (
                o.max_shift,
                o.max_degrees,
                o.patch,
                o.cases,
                o.min_invariance
            ),
            (Some(2.0), Some(15.0), Some(6), Some(256), Some(0.99))
        );
        let written: Vec<&str> = o.written().into_iter().map(|(key, _)| key).collect();
        let expected: Vec<&str> = Options::KEYS
            .iter()
            .copied()
            .filter(|k| {
                !matches!(
                    Options::scope(k),
                    Scope::Attack | Scope::Certify | Scope::Smoothing
                )
            })
            // `tolerance` with `baseline = false` is an error of its own (tested below).
            .filter(|k| *k != "tolerance")
            .collect();
        assert_eq!(written, expected);
        assert_eq!(
            names(&spec),
            [
                "linf",
                "gaussian",
                "salt_pepper",
                "brightness",
                "contrast",
                "shift_rotation",
                "occlusion"
            ]
        );
    }

    #[test]
    fn name_a_perturbation_test_after_the_perturbation() {
        let spec = spec(quote!(perturbation = "rotation", min_invariance = 0.9));
        assert_eq!(names(&spec), ["rotation"]);
        assert!(eps(&spec).is_empty());
    }

    #[test]
    fn suggest_the_closest_perturbation_in_a_composition() {
        assert_eq!(
            error(quote!(
                perturbation = "rotation+brightnes",
                min_invariance = 0.9
            )),
            "unknown perturbation `brightnes`; did you mean `brightness`?"
        );
        assert_eq!(
            error(quote!(perturbation = "blur", min_invariance = 0.9)),
            "unknown perturbation `blur`; expected one of `linf`, `l2`, `gaussian`, \
             `salt_pepper`, `brightness`, `contrast`, `shift`, `rotation`, `occlusion`"
        );
    }

    #[test]
    fn reject_a_family_twice_in_a_composition_and_a_perturbation_listed_twice() {
        assert_eq!(
            error(quote!(perturbation = "shift+shift", min_invariance = 0.9)),
            "perturbation `shift` appears twice in `shift+shift`"
        );
        assert_eq!(
            error(quote!(
                perturbation = ["rotation", "shift", "rotation"],
                min_invariance = 0.9
            )),
            "perturbation `rotation` is listed twice, so its test would be generated twice"
        );
    }

    #[test]
    fn reject_parameters_of_another_perturbation() {
        assert_eq!(
            error(quote!(
                perturbation = ["rotation", "shift"],
                sigma = 0.1,
                min_invariance = 0.9
            )),
            "`sigma` does not apply to `rotation` or `shift`: it is a parameter of `gaussian`"
        );
        assert_eq!(
            error(quote!(
                perturbation = "rotation",
                eps = 0.1,
                min_invariance = 0.9
            )),
            "`eps` does not apply to `rotation`: it is a parameter of `linf` or `l2`"
        );
    }

    #[test]
    fn accept_a_parameter_used_by_one_perturbation_of_the_list() {
        let spec = spec(quote!(
            perturbation = ["rotation", "gaussian+brightness"],
            sigma = 0.2,
            min_invariance = 0.9
        ));
        assert_eq!(spec.options.sigma, Some(0.2));
    }

    #[test]
    fn reject_keys_of_the_other_kind_of_test() {
        assert_eq!(
            errors(quote!(
                perturbation = "rotation",
                steps = 10,
                min_acc = 0.5,
                min_invariance = 0.9
            )),
            [
                "`steps` is a parameter of attack tests; a perturbation test \
                 (`perturbation = ...`) does not use it",
                "`min_acc` is a parameter of attack tests; a perturbation test \
                 (`perturbation = ...`) does not use it",
            ]
        );
        assert_eq!(
            errors(quote!(
                attack = "pgd",
                eps = 0.1,
                min_acc = 0.5,
                cases = 10,
                max_degrees = 5
            )),
            [
                "`cases` is a parameter of perturbation tests; an attack test (`attack = ...`) \
                 does not use it",
                "`max_degrees` is a parameter of the `rotation` perturbation; an attack test \
                 (`attack = ...`) does not use it",
            ]
        );
    }

    #[test]
    fn reject_attack_and_perturbation_together() {
        let message = error(quote!(
            attack = "pgd",
            perturbation = "rotation",
            min_invariance = 0.9
        ));
        assert!(
            message.starts_with("`attack` and `perturbation` cannot be combined"),
            "{message}"
        );
    }

    #[test]
    fn require_min_invariance_in_a_perturbation_test() {
        let message = error(quote!(perturbation = "rotation", cases = 10));
        assert!(message.starts_with("missing `min_invariance`"), "{message}");
    }

    #[test]
    fn reject_perturbation_parameters_out_of_range() {
        assert_eq!(
            errors(quote!(
                perturbation = ["rotation", "contrast", "occlusion", "linf"],
                max_degrees = 270,
                max_contrast = 1.0,
                patch = 0,
                eps = [0.1, 0.2],
                min_invariance = 0.9
            )),
            [
                "`max_degrees` must be in (0, 180], found `270`",
                "`max_contrast` must be in (0, 1), found `1`",
                "expected an integer ≥ 1 for `patch`, found `0`",
                "`eps` takes one value in a perturbation test: it is the radius of `linf` and \
                 `l2` noise",
            ]
        );
    }

    #[test]
    fn emit_only_the_options_written() {
        let spec = spec(quote!(attack = "pgd", eps = 0.1, min_acc = 0.5, seed = 7));
        let written: Vec<&str> = spec.options.written().into_iter().map(|(k, _)| k).collect();
        assert_eq!(written, ["min_acc", "seed"]);
    }

    #[test]
    fn read_the_crate_path() {
        let spec = spec(quote!(
            attack = "pgd",
            eps = 0.1,
            min_acc = 0.5,
            crate = "::my::rt"
        ));
        let path = spec.krate.expect("crate is set");
        assert_eq!(path.to_token_stream().to_string(), ":: my :: rt");
    }

    #[test]
    fn reject_a_crate_that_is_not_a_path() {
        let message = error(quote!(
            attack = "pgd",
            eps = 0.1,
            min_acc = 0.5,
            crate = "my rt"
        ));
        assert!(message.starts_with("`crate` must be a path"), "{message}");
    }

    #[test]
    fn reject_negative_eps() {
        assert_eq!(
            error(quote!(attack = "pgd", eps = -0.1, min_acc = 0.5)),
            "`eps` must be greater than 0, found `-0.1`"
        );
    }

    #[test]
    fn reject_zero_eps() {
        assert_eq!(
            error(quote!(attack = "pgd", eps = [0.1, 0], min_acc = 0.5)),
            "`eps` must be greater than 0, found `0`"
        );
    }

    #[test]
    fn reject_infinite_eps() {
        assert_eq!(
            error(quote!(attack = "pgd", eps = 1e999, min_acc = 0.5)),
            "`eps` must be finite, found `1e999`"
        );
    }

    #[test]
    fn reject_quoted_eps_and_say_how_to_fix_it() {
        assert_eq!(
            error(quote!(attack = "pgd", eps = "0.1", min_acc = 0.5)),
            "expected a number for `eps`, found the string \"0.1\"; remove the quotes: `eps = 0.1`"
        );
    }

    #[test]
    fn reject_expressions_for_numbers() {
        assert_eq!(
            error(quote!(attack = "pgd", eps = 8.0 / 255.0, min_acc = 0.5)),
            "expected a number for `eps`, found an expression (only literals are accepted)"
        );
    }

    #[test]
    fn reject_unknown_number_suffixes() {
        assert_eq!(
            error(quote!(attack = "pgd", eps = 0.1f16, min_acc = 0.5)),
            "unexpected suffix `f16` on `eps`: write a plain number"
        );
    }

    #[test]
    fn reject_fractional_steps() {
        assert_eq!(
            error(quote!(
                attack = "pgd",
                eps = 0.1,
                min_acc = 0.5,
                steps = 1.5
            )),
            "expected an integer ≥ 1 for `steps`, found `1.5`"
        );
    }

    #[test]
    fn reject_zero_and_negative_counts() {
        assert_eq!(
            errors(quote!(
                attack = "pgd",
                eps = 0.1,
                min_acc = 0.5,
                samples = 0,
                restarts = -2
            )),
            [
                "expected an integer ≥ 1 for `samples`, found `0`",
                "expected an integer ≥ 1 for `restarts`, found `-2`"
            ]
        );
    }

    #[test]
    fn reject_seeds_beyond_u64() {
        assert_eq!(
            error(quote!(
                attack = "pgd",
                eps = 0.1,
                min_acc = 0.5,
                seed = 18446744073709551616
            )),
            "`seed` is too large, found `18446744073709551616`"
        );
    }

    #[test]
    fn reject_an_integer_for_a_bool() {
        assert_eq!(
            error(quote!(
                attack = "pgd",
                eps = 0.1,
                min_acc = 0.5,
                targeted = 1
            )),
            "expected `true` or `false` for `targeted`, found `1`"
        );
    }

    #[test]
    fn reject_a_quoted_bool_and_say_how_to_fix_it() {
        assert_eq!(
            error(quote!(
                attack = "pgd",
                eps = 0.1,
                min_acc = 0.5,
                random_start = "true"
            )),
            "expected `true` or `false` for `random_start`, found the string \"true\"; remove \
             the quotes: `random_start = true`"
        );
    }

    #[test]
    fn reject_min_acc_above_one_and_suggest_the_fraction() {
        assert_eq!(
            error(quote!(attack = "pgd", eps = 0.1, min_acc = 60)),
            "`min_acc` must be between 0 and 1, found `60`; it is a fraction, so 60% is \
             `min_acc = 0.6`"
        );
    }

    #[test]
    fn reject_negative_max_drop() {
        assert_eq!(
            error(quote!(attack = "pgd", eps = 0.1, max_drop = -0.1)),
            "`max_drop` must be between 0 and 1, found `-0.1`"
        );
    }

    #[test]
    fn suggest_the_closest_key() {
        assert_eq!(
            error(quote!(attack = "pgd", epss = 0.1, eps = 0.1, min_acc = 0.5)),
            "unknown key `epss`; did you mean `eps`?"
        );
        assert_eq!(
            error(quote!(
                attack = "pgd",
                epsilon = 0.1,
                eps = 0.1,
                min_acc = 0.5
            )),
            "unknown key `epsilon`; did you mean `eps`?"
        );
        assert_eq!(
            error(quote!(
                attack = "pgd",
                eps = 0.1,
                min_acc = 0.5,
                stepsize = 0.01
            )),
            "unknown key `stepsize`; did you mean `step_size`?"
        );
    }

    #[test]
    fn list_the_keys_when_none_is_close() {
        assert_eq!(
            error(quote!(attack = "pgd", eps = 0.1, min_acc = 0.5, budget = 1)),
            format!("unknown key `budget`; expected one of {ALL_KEYS}")
        );
    }

    #[test]
    fn suggest_the_closest_attack() {
        assert_eq!(
            error(quote!(attack = ["fgsm", "pdg"], eps = 0.1, min_acc = 0.5)),
            "unknown attack `pdg`; did you mean `pgd`?"
        );
        assert_eq!(
            error(quote!(attack = "FGSM", eps = 0.1, min_acc = 0.5)),
            "unknown attack `FGSM`; did you mean `fgsm`?"
        );
    }

    #[test]
    fn list_the_attacks_when_none_is_close() {
        assert_eq!(
            error(quote!(attack = "boundary", eps = 0.1, min_acc = 0.5)),
            "unknown attack `boundary`; expected one of `fgsm`, `pgd`, `apgd`, `apgd-t`, `autoattack`, `square`, `cw`, `deepfool`"
        );
    }

    #[test]
    fn reject_unknown_norms_losses_and_devices() {
        assert_eq!(
            errors(quote!(
                attack = "pgd",
                eps = 0.1,
                min_acc = 0.5,
                norm = "linfty",
                loss = "mse",
                device = "metal",
            )),
            [
                "unknown norm `linfty`; did you mean `linf`?",
                "unknown loss `mse`; expected one of `ce`, `cw`, `dlr`",
                "unknown device `metal`; expected one of `cpu`, `cuda`, `auto`",
            ]
        );
    }

    #[test]
    fn not_mistake_another_norm_for_a_typo() {
        assert_eq!(
            error(quote!(
                attack = "pgd",
                eps = 0.1,
                min_acc = 0.5,
                norm = "l1"
            )),
            "unknown norm `l1`; expected one of `linf`, `l2`"
        );
    }

    #[test]
    fn reject_an_unquoted_choice_and_say_how_to_fix_it() {
        assert_eq!(
            error(quote!(
                attack = "pgd",
                eps = 0.1,
                min_acc = 0.5,
                norm = linf
            )),
            "expected a string for `norm`, found `linf`; add quotes: `norm = \"linf\"`"
        );
    }

    #[test]
    fn reject_a_list_where_one_value_is_expected() {
        assert_eq!(
            error(quote!(attack = "pgd", eps = 0.1, min_acc = [0.5, 0.6])),
            "expected a number for `min_acc`, found a list (only `attack`, `perturbation` and `eps` take lists)"
        );
    }

    #[test]
    fn reject_empty_lists() {
        assert_eq!(
            errors(quote!(attack = [], eps = [], min_acc = 0.5)),
            [
                "`attack` needs at least one value",
                "`eps` needs at least one value"
            ]
        );
    }

    #[test]
    fn reject_a_duplicate_key() {
        assert_eq!(
            error(quote!(attack = "pgd", eps = 0.1, min_acc = 0.5, eps = 0.2)),
            "duplicate key `eps`"
        );
    }

    #[test]
    fn require_attack_and_eps() {
        let all = errors(quote!(min_acc = 0.5));
        assert_eq!(all.len(), 1, "{all:#?}");
        assert!(
            all[0].starts_with("missing `attack`, `perturbation` or `certify`"),
            "{}",
            all[0]
        );
        assert!(all[0].contains("`rotation`"), "{}", all[0]);
        assert!(error(quote!(attack = "pgd", min_acc = 0.5)).starts_with("missing `eps`"));
    }

    #[test]
    fn not_report_a_missing_key_that_a_typo_was_meant_to_be() {
        assert_eq!(
            errors(quote!(attack = "pgd", epss = 0.1, min_accc = 0.5)),
            [
                "unknown key `epss`; did you mean `eps`?",
                "unknown key `min_accc`; did you mean `min_acc`?"
            ]
        );
    }

    #[test]
    fn give_the_percentage_hint_only_for_whole_numbers() {
        assert_eq!(
            error(quote!(attack = "pgd", eps = 0.1, min_acc = 1.5)),
            "`min_acc` must be between 0 and 1, found `1.5`"
        );
    }

    #[test]
    fn require_something_to_assert() {
        let message = error(quote!(attack = "pgd", eps = 0.1, samples = 100));
        assert!(
            message.starts_with("missing `min_acc` or `max_drop`"),
            "{message}"
        );
    }

    #[test]
    fn not_report_a_missing_key_that_was_written_wrongly() {
        assert_eq!(
            error(quote!(attack = "pgd", eps = 0.1, min_acc = 2)),
            "`min_acc` must be between 0 and 1, found `2`; it is a fraction, so 2% is \
             `min_acc = 0.02`"
        );
    }

    #[test]
    fn reject_an_attack_listed_twice() {
        assert_eq!(
            error(quote!(
                attack = ["pgd", "fgsm", "pgd"],
                eps = 0.1,
                min_acc = 0.5
            )),
            "attack `pgd` is listed twice, so its `pgd_eps_*` tests would be generated twice"
        );
    }

    #[test]
    fn reject_the_same_eps_written_twice() {
        assert_eq!(
            error(quote!(attack = "pgd", eps = [0.1, 0.10], min_acc = 0.5)),
            "eps `0.10` is the same value as `0.1`, listed before, so its tests would be \
             generated twice"
        );
    }

    #[test]
    fn report_every_error_at_once() {
        let all = errors(quote!(
            attack = "pgm",
            eps = [-0.1, "0.2"],
            steps = 0,
            targeted = 1,
            colour = "red",
        ));
        assert_eq!(
            all,
            [
                "unknown attack `pgm`; did you mean `pgd`?",
                "`eps` must be greater than 0, found `-0.1`",
                "expected a number for `eps`, found the string \"0.2\"; remove the quotes: \
                 `eps = 0.2`",
                "expected an integer ≥ 1 for `steps`, found `0`",
                "expected `true` or `false` for `targeted`, found `1`",
                &format!("unknown key `colour`; expected one of {ALL_KEYS}"),
                "missing `min_acc` or `max_drop`: a robustness test needs something to assert, \
                 the lowest acceptable robust accuracy (`min_acc = 0.6`) and/or the largest \
                 acceptable drop from clean accuracy (`max_drop = 0.2`)",
            ]
        );
    }

    #[test]
    fn reject_a_key_without_a_value() {
        assert_eq!(
            error(quote!(attack = "pgd", eps = 0.1, min_acc = 0.5, targeted)),
            "expected `targeted = value`"
        );
    }

    #[test]
    fn count_a_swap_of_neighbours_as_one_edit() {
        assert_eq!(edit_distance("pdg", "pgd"), 1);
        assert_eq!(edit_distance("epss", "eps"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
