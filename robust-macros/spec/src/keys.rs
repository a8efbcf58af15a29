//! The key table: every key of a robustness test, declared once with its type (and range), the
//! tests it belongs to, its default and a one-line doc. The attribute, the TOML suite, the
//! runtime's builders and the README's key table all come from this table.

use crate::names::{
    AUTOATTACK_MEMBERS, AUTOATTACK_VERSIONS, DEVICES, LOSSES, MASKING, NORMS, PRECISIONS,
};
use crate::ty::{self, Given, Ty};
use crate::value::Value;

/// Which tests a key belongs to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scope {
    /// Every kind of test.
    Any,
    /// Attack tests (`attack = …`).
    Attack,
    /// Perturbation tests (`perturbation = …`).
    Perturbation,
    /// Certification tests (`certify = …`).
    Certify,
    /// Certification tests with randomized smoothing.
    Smoothing,
    /// Perturbation tests drawing from one of these families.
    Family(&'static [&'static str]),
}

impl Scope {
    fn describe(&self) -> String {
        match self {
            Scope::Any => "all".into(),
            Scope::Attack => "attack".into(),
            Scope::Perturbation => "perturbation".into(),
            Scope::Certify => "certify".into(),
            Scope::Smoothing => "smoothing".into(),
            Scope::Family(families) => families.join(", "),
        }
    }
}

/// One key of the table.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// As written: `steps`.
    pub name: &'static str,
    /// What it takes.
    pub ty: Ty,
    /// The tests it belongs to; the first one names it in messages.
    pub scopes: &'static [Scope],
    /// The runtime's default, as the README shows it.
    pub default: &'static str,
    /// One line for the README.
    pub doc: &'static str,
    /// Only the attribute reads it (`crate`): a suite file has no use for it.
    pub attribute_only: bool,
}

impl Key {
    /// The README's "tests" column.
    pub fn tests(&self) -> String {
        self.scopes
            .iter()
            .map(Scope::describe)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A setting's value, for front ends that render it (the attribute writes it as a literal).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Setting {
    /// A name from one of the lists.
    Name(&'static str),
    /// A count.
    Usize(usize),
    /// A seed.
    U64(u64),
    /// A number.
    F64(f64),
    /// A flag.
    Bool(bool),
    /// Names from one of the lists, in order.
    Names(&'static [&'static str]),
}

/// How a field's Rust type is read from a written value and checked when set from Rust.
pub trait Field: Sized + Copy {
    /// The value as written, checked against `ty`.
    fn read(given: &Given<'_>, ty: Ty) -> Result<Self, String>;
    /// The same check for a value set from Rust.
    fn check(self, key: &str, ty: Ty) -> Result<(), String>;
    /// For rendering.
    fn setting(self) -> Setting;
}

impl Field for &'static str {
    fn read(given: &Given<'_>, ty: Ty) -> Result<Self, String> {
        match ty {
            Ty::Name(what, names) => given.name(what, names),
            _ => Err(format!("`{}` is not a name", given.key)),
        }
    }
    fn check(self, _key: &str, ty: Ty) -> Result<(), String> {
        match ty {
            Ty::Name(what, names) => ty::check_name(what, self, names).map(|_| ()),
            _ => Ok(()),
        }
    }
    fn setting(self) -> Setting {
        Setting::Name(self)
    }
}

/// A list of names (`attacks = ["apgd-ce", "square"]`). A written list is read once per test
/// declaration and kept for the process (leaked: a few words per key written).
impl Field for &'static [&'static str] {
    fn read(given: &Given<'_>, ty: Ty) -> Result<Self, String> {
        let Ty::Names(what, names) = ty else {
            return Err(format!("`{}` is not a list of names", given.key));
        };
        let items = match given.value {
            Value::List(items) => items.iter().collect::<Vec<_>>(),
            _ => vec![given.value],
        };
        if items.is_empty() {
            return Err(format!(
                "`{}` is an empty list; expected one or more of {}",
                given.key,
                names
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let list = items
            .into_iter()
            .map(|value| {
                Given {
                    key: given.key,
                    value,
                }
                .name(what, names)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Box::leak(list.into_boxed_slice()))
    }
    fn check(self, key: &str, ty: Ty) -> Result<(), String> {
        let Ty::Names(what, names) = ty else {
            return Ok(());
        };
        if self.is_empty() {
            return Err(format!("`{key}` is an empty list"));
        }
        self.iter()
            .try_for_each(|name| ty::check_name(what, name, names).map(|_| ()))
    }
    fn setting(self) -> Setting {
        Setting::Names(self)
    }
}

impl Field for usize {
    fn read(given: &Given<'_>, ty: Ty) -> Result<Self, String> {
        let Ty::Count(min) = ty else {
            return Err(format!("`{}` is not a count", given.key));
        };
        let value = given.integer(min)?;
        usize::try_from(value).map_err(|_| format!("`{}` is too large, found `{value}`", given.key))
    }
    fn check(self, key: &str, ty: Ty) -> Result<(), String> {
        match ty {
            Ty::Count(min) => ty::check_count(key, min, self as u64),
            _ => Ok(()),
        }
    }
    fn setting(self) -> Setting {
        Setting::Usize(self)
    }
}

impl Field for u64 {
    fn read(given: &Given<'_>, _ty: Ty) -> Result<Self, String> {
        given.integer(0)
    }
    fn check(self, _key: &str, _ty: Ty) -> Result<(), String> {
        Ok(())
    }
    fn setting(self) -> Setting {
        Setting::U64(self)
    }
}

impl Field for f64 {
    fn read(given: &Given<'_>, ty: Ty) -> Result<Self, String> {
        given.float(ty)
    }
    fn check(self, key: &str, ty: Ty) -> Result<(), String> {
        ty::check_float(ty, key, self, &self.to_string())
    }
    fn setting(self) -> Setting {
        Setting::F64(self)
    }
}

impl Field for bool {
    fn read(given: &Given<'_>, _ty: Ty) -> Result<Self, String> {
        given.boolean()
    }
    fn check(self, _key: &str, _ty: Ty) -> Result<(), String> {
        Ok(())
    }
    fn setting(self) -> Setting {
        Setting::Bool(self)
    }
}

/// Declares the key table. Each line of `options` names the key (also the builder method and
/// the `Options` field), the Rust type, the [`Ty`] its value must pass, the tests it belongs to
/// and its default; the doc comment is the README's meaning. A new key is one line here plus
/// its use.
macro_rules! keys {
    (
        structural { $($(#[doc = $sdoc:literal])* $skey:literal: $sty:expr, [$($sscope:expr),*], $sdefault:literal, $sonly:literal;)* }
        options { $($(#[doc = $doc:literal])* $key:ident: $rty:ty = $ty:expr, [$($scope:expr),*], $default:literal;)* }
    ) => {
        /// Every key: the ones that shape the tests first (`attack`, `eps`, …), then the options
        /// in declaration order.
        pub static KEYS: &[Key] = &[
            $(Key { name: $skey, ty: $sty, scopes: &[$($sscope),*], default: $sdefault, doc: concat!($($sdoc),*), attribute_only: $sonly },)*
            $(Key { name: stringify!($key), ty: $ty, scopes: &[$($scope),*], default: $default, doc: concat!($($doc),*), attribute_only: false },)*
        ];

        /// The optional settings of a test; `None` leaves the runtime's default in place.
        #[derive(Debug, Clone, Copy, Default, PartialEq)]
        pub struct Options {
            $($(#[doc = $doc])* pub $key: Option<$rty>,)*
        }

        impl Options {
            /// The option keys, in declaration order.
            pub const KEYS: &'static [&'static str] = &[$(stringify!($key)),*];

            /// Sets `key` from a written value; `None` when `key` is not an option.
            pub fn set(&mut self, key: &str, value: &Value) -> Option<Result<(), String>> {
                match key {
                    $(stringify!($key) => Some(
                        <$rty as Field>::read(&Given { key, value }, $ty).map(|v| self.$key = Some(v))
                    ),)*
                    _ => None,
                }
            }

            /// The options set, as (key, value), in declaration order.
            pub fn written(&self) -> Vec<(&'static str, Setting)> {
                let mut written = Vec::new();
                $(if let Some(value) = self.$key {
                    written.push((stringify!($key), Field::setting(value)));
                })*
                written
            }

            /// Unsets `key`.
            pub fn clear(&mut self, key: &str) {
                match key {
                    $(stringify!($key) => self.$key = None,)*
                    _ => {}
                }
            }

            /// Checks every option set from Rust with the rule of its key (a written value
            /// has passed it in [`Options::set`] already).
            pub fn check_values(&self) -> Result<(), (&'static str, String)> {
                $(if let Some(value) = self.$key {
                    Field::check(value, stringify!($key), $ty).map_err(|m| (stringify!($key), m))?;
                })*
                Ok(())
            }
        }

        /// Calls `$callback! { $(#[doc] key: type;)* }` with every option: the runtime
        /// generates its builder methods from it.
        #[macro_export]
        macro_rules! for_each_option {
            ($callback:ident) => {
                $callback! { $($(#[doc = $doc])* $key: $rty;)* }
            };
        }
    };
}

const ATTACK: Scope = Scope::Attack;
const PERTURBATION: Scope = Scope::Perturbation;
const CERTIFY: Scope = Scope::Certify;
const SMOOTHING: Scope = Scope::Smoothing;
const ANY: Scope = Scope::Any;

keys! {
    structural {
        /// attacks; one test each
        "attack": Ty::Names("attack", crate::names::ATTACKS), [ATTACK], "required", false;
        /// perturbations drawn; one test each
        "perturbation": Ty::Compositions, [PERTURBATION], "required", false;
        /// certifiers; one test each per radius
        "certify": Ty::Names("certifier", crate::names::CERTIFIERS), [CERTIFY], "required", false;
        /// radius in input units (L∞ for `ibp`/`crown`); one test each (one value for `linf`/`l2` perturbations)
        "eps": Ty::Radii, [Scope::Family(crate::names::EPS_FAMILIES), ATTACK, CERTIFY], "required for attacks and L∞ certifiers", false;
        /// L2 radius smoothing certifies; one test each
        "radius": Ty::Radii, [SMOOTHING], "required for smoothing", false;
        /// where the runtime is, for a renamed dependency
        "crate": Ty::Path, [ANY], "`\"::robust_runtime\"`", true;
    }
    options {
        /// threat-model norm
        norm: &'static str = Ty::Name("norm", NORMS), [ATTACK], "`\"linf\"`";
        /// iterations of iterative attacks
        steps: usize = Ty::Count(1), [ATTACK], "PGD 40, APGD 100, C&W 100 per round, DeepFool 50";
        /// step α of iterative attacks, in input units
        step_size: f64 = Ty::Positive, [ATTACK], "2.5·ε/steps";
        /// random restarts (PGD: worst case kept per sample; APGD: only unbroken samples rerun)
        restarts: usize = Ty::Count(1), [ATTACK], "1";
        /// PGD starts at a random point of the ball
        random_start: bool = Ty::Bool, [ATTACK], "true";
        /// aim at a random other class per sample (seeded)
        targeted: bool = Ty::Bool, [ATTACK], "false";
        /// cross-entropy, Carlini–Wagner margin, or DLR
        loss: &'static str = Ty::Name("loss", LOSSES), [ATTACK], "`\"ce\"`";
        /// APGD-T / FAB-T / autoattack: wrong classes targeted
        target_classes: usize = Ty::Count(1), [ATTACK], "9";
        /// Square: forward passes per sample
        queries: usize = Ty::Count(1), [ATTACK], "5000";
        /// Square: initial square size, as a fraction of the pixels
        p_init: f64 = Ty::AtMost(1.0), [ATTACK], "0.8";
        /// Square: fit the schedule of square sizes to `queries` (`autoattack`'s Square never does, as AutoAttack)
        rescale_schedule: bool = Ty::Bool, [ATTACK], "true";
        /// autoattack: `standard` (APGD-CE, APGD-T, FAB-T, Square), `rand` (APGD-CE, APGD-DLR with EOT over 20 draws) or `custom` (the members in `attacks`)
        version: &'static str = Ty::Name("version", AUTOATTACK_VERSIONS), [ATTACK], "`\"standard\"`; `rand` for a randomized model's adaptive run";
        /// autoattack with `version = "custom"`: its members, in order
        attacks: &'static [&'static str] = Ty::Names("AutoAttack member", AUTOATTACK_MEMBERS), [ATTACK], "required with `custom`";
        /// C&W: logit margin κ
        kappa: f64 = Ty::NonNegative, [ATTACK], "0";
        /// C&W: rounds of binary search over c
        binary_search_steps: usize = Ty::Count(1), [ATTACK], "9";
        /// C&W: first c
        initial_const: f64 = Ty::Positive, [ATTACK], "0.01";
        /// C&W: Adam's step (torchattacks uses 0.01 with more steps)
        learning_rate: f64 = Ty::Positive, [ATTACK], "0.1";
        /// DeepFool: how far to step past the boundary
        overshoot: f64 = Ty::NonNegative, [ATTACK], "0.02";
        /// standard deviation of `gaussian` noise; of smoothing's noise (required there, the one the model was trained with)
        sigma: f64 = Ty::Positive, [Scope::Family(&["gaussian"]), SMOOTHING], "0.1 (`gaussian`)";
        /// pixels `salt_pepper` sets
        pixels: usize = Ty::Count(1), [Scope::Family(&["salt_pepper"])], "10";
        /// largest change of `brightness`, in input units
        max_brightness: f64 = Ty::Positive, [Scope::Family(&["brightness"])], "0.2";
        /// `contrast` factors range over 1 ± this
        max_contrast: f64 = Ty::Below(1.0), [Scope::Family(&["contrast"])], "0.2";
        /// largest `shift` on each axis, in pixels
        max_shift: f64 = Ty::Positive, [Scope::Family(&["shift"])], "2";
        /// largest `rotation`, in degrees
        max_degrees: f64 = Ty::AtMost(180.0), [Scope::Family(&["rotation"])], "15";
        /// side of the `occlusion` square, in pixels
        patch: usize = Ty::Count(1), [Scope::Family(&["occlusion"])], "6";
        /// `bab`: seconds of branch and bound per sample before it counts as not certified
        timeout: f64 = Ty::Positive, [CERTIFY], "10";
        /// share of samples correct **and** certified must be ≥ this
        min_certified_acc: f64 = Ty::Fraction, [CERTIFY], "required";
        /// smoothing's noisy copies that choose the class (n0 ≤ n)
        n0: usize = Ty::Count(1), [SMOOTHING], "100";
        /// smoothing's noisy copies that estimate its probability
        n: usize = Ty::Count(1), [SMOOTHING], "100000";
        /// probability that a smoothing certificate is wrong
        alpha: f64 = Ty::Below(1.0), [SMOOTHING], "0.001";
        /// perturbations drawn per sample
        cases: usize = Ty::Count(1), [PERTURBATION], "`ROBUST_CASES`, else 256";
        /// robust accuracy must be ≥ this
        min_acc: f64 = Ty::Fraction, [ATTACK], "–";
        /// clean − robust accuracy must be ≤ this
        max_drop: f64 = Ty::Fraction, [ATTACK], "–";
        /// share of correctly classified samples whose prediction survives every perturbation must be ≥ this
        min_invariance: f64 = Ty::Fraction, [PERTURBATION], "required";
        /// evaluate the first `samples` samples of the data
        samples: usize = Ty::Count(1), [ANY], "all";
        /// samples per batch (perturbation tests: perturbed inputs per forward pass)
        batch_size: usize = Ty::Count(1), [ANY], "250 (perturbation tests 512)";
        /// seed of the run's RNG
        seed: u64 = Ty::Seed, [ANY], "`ROBUST_SEED`, else 0";
        /// `ROBUST_DEVICE` overrides; CUDA needs the `cuda` feature, which also adds a `_cuda` variant of each test; `"cpu"` means no variant
        device: &'static str = Ty::Name("device", DEVICES), [ANY], "`\"auto\"`";
        /// f32 products on CUDA: strict, or on TF32 tensor cores as PyTorch's `allow_tf32`; `ROBUST_PRECISION` overrides; certification is always `"f32"`; the CPU has no TF32
        precision: &'static str = Ty::Name("precision", PRECISIONS), [ANY], "`\"f32\"`";
        /// gradient-masking diagnostics: fail the test, only report, or skip them
        masking_checks: &'static str = Ty::Name("masking_checks", MASKING), [ATTACK], "`\"fail\"`";
        /// assert on one-sided Clopper–Pearson bounds at this level
        confidence: f64 = Ty::Level, [ANY], "–";
        /// compare with the committed baseline in `robust-baselines/`
        baseline: bool = Ty::Bool, [ANY], "false";
        /// largest fall below the baseline; turns `baseline` on
        tolerance: f64 = Ty::Fraction, [ANY], "0.01";
    }
}

/// The key called `name`.
pub fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// Every key's name, in table order.
pub fn key_names() -> Vec<&'static str> {
    KEYS.iter().map(|k| k.name).collect()
}
