//! The types of values a key takes, each with its range and its messages. One function per
//! rule, used for values as written (attribute, suite) and for values set from Rust, so the
//! three say the same thing about the same mistake.

use crate::suggest::unknown;
use crate::value::{Number, Value};

/// What a key takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Ty {
    /// One of these names (`what` is the word messages use: "unknown norm `l3`").
    Name(&'static str, &'static [&'static str]),
    /// An integer ≥ this.
    Count(u64),
    /// Any u64.
    Seed,
    /// A finite number > 0.
    Positive,
    /// A finite number ≥ 0.
    NonNegative,
    /// A number in (0, hi].
    AtMost(f64),
    /// A number in (0, hi).
    Below(f64),
    /// A number in [0, 1].
    Fraction,
    /// A confidence level, in (0, 1).
    Level,
    /// `true` or `false`.
    Bool,
    /// A path to the runtime crate, as a string.
    Path,
    /// One or more names of this list (`attack = ["fgsm", "pgd"]`).
    Names(&'static str, &'static [&'static str]),
    /// One or more perturbations, families joined by `+`.
    Compositions,
    /// One or more finite numbers > 0.
    Radii,
}

impl Ty {
    /// The README's "type" column.
    pub fn describe(&self) -> String {
        let quoted = |names: &[&str]| {
            names
                .iter()
                .map(|n| format!("`\"{n}\"`"))
                .collect::<Vec<_>>()
        };
        match self {
            Ty::Name(_, names) => quoted(names).join(" \\| "),
            Ty::Count(min) => format!("integer ≥ {min}"),
            Ty::Seed => "integer ≥ 0".into(),
            Ty::Positive => "number > 0".into(),
            Ty::NonNegative => "number ≥ 0".into(),
            Ty::AtMost(hi) => format!("number in (0, {hi}]"),
            Ty::Below(hi) => format!("number in (0, {hi})"),
            Ty::Fraction => "number in [0, 1]".into(),
            Ty::Level => "number in (0, 1)".into(),
            Ty::Bool => "bool".into(),
            Ty::Path => "path string".into(),
            Ty::Names(_, names) => format!("{}, or a list", quoted(names).join(", ")),
            Ty::Compositions => "family names joined by `+`, or a list".into(),
            Ty::Radii => "number > 0, or a list".into(),
        }
    }

    /// Whether the key takes a list.
    pub fn is_list(&self) -> bool {
        matches!(self, Ty::Names(..) | Ty::Compositions | Ty::Radii)
    }
}

/// A value and the key it was given for, which every message names.
#[derive(Debug, Clone, Copy)]
pub struct Given<'a> {
    /// The key.
    pub key: &'a str,
    /// Its value as written.
    pub value: &'a Value,
}

impl Given<'_> {
    /// "expected {wanted} for `key`, found {what the value is}{hint}"
    pub(crate) fn expected(&self, wanted: &str, hint: &str) -> String {
        format!(
            "expected {wanted} for `{}`, found {}{hint}",
            self.key,
            self.value.found()
        )
    }

    pub(crate) fn number(&self) -> Result<Number, String> {
        let Value::Number(number) = self.value else {
            let hint = match self.value.as_str() {
                Some(s) if s.trim().parse::<f64>().is_ok() => {
                    format!("; remove the quotes: `{} = {}`", self.key, s.trim())
                }
                _ => String::new(),
            };
            return Err(self.expected("a number", &hint));
        };
        if !matches!(number.suffix.as_str(), "" | "f32" | "f64") {
            return Err(format!(
                "unexpected suffix `{}` on `{}`: write a plain number",
                number.suffix, self.key
            ));
        }
        if number.value().is_none() {
            return Err(self.expected("a number", ""));
        }
        Ok(number.clone())
    }

    /// A number checked against `ty`'s range.
    pub(crate) fn float(&self, ty: Ty) -> Result<f64, String> {
        let number = self.number()?;
        let value = number.value().unwrap_or(f64::NAN);
        check_float(ty, self.key, value, &number.text())?;
        Ok(value)
    }

    pub(crate) fn integer(&self, min: u64) -> Result<u64, String> {
        let wanted = integer_wanted(min);
        let number = match self.value {
            Value::Number(n) if n.integer => n,
            Value::Number(n) if n.negative => return Err(self.expected(&wanted, "")),
            _ => {
                let hint = match self.value.as_str() {
                    Some(s) if s.trim().parse::<u64>().is_ok() => {
                        format!("; remove the quotes: `{} = {}`", self.key, s.trim())
                    }
                    _ => String::new(),
                };
                return Err(self.expected(&wanted, &hint));
            }
        };
        if number.negative {
            return Err(self.expected(&wanted, ""));
        }
        const INTEGER_SUFFIXES: &[&str] = &[
            "", "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128",
            "isize",
        ];
        if !INTEGER_SUFFIXES.contains(&number.suffix.as_str()) {
            return Err(format!(
                "unexpected suffix `{}` on `{}`: write a plain integer",
                number.suffix, self.key
            ));
        }
        let value: u64 = number
            .digits
            .parse()
            .map_err(|_| too_large(self.key, &number.digits))?;
        check_count(self.key, min, value)?;
        Ok(value)
    }

    pub(crate) fn boolean(&self) -> Result<bool, String> {
        if let Value::Bool(b) = self.value {
            return Ok(*b);
        }
        let hint = match self.value.as_str().map(str::trim) {
            Some(s @ ("true" | "false")) => format!("; remove the quotes: `{} = {s}`", self.key),
            _ => String::new(),
        };
        Err(self.expected("`true` or `false`", &hint))
    }

    pub(crate) fn string(&self, example: &str) -> Result<&str, String> {
        if let Value::Str(s) = self.value {
            return Ok(s);
        }
        let hint = match self.value {
            Value::Path(path) => format!("; add quotes: `{} = \"{path}\"`", self.key),
            _ => format!(", e.g. `{} = \"{example}\"`", self.key),
        };
        Err(self.expected("a string", &hint))
    }

    pub(crate) fn name(
        &self,
        what: &str,
        choices: &[&'static str],
    ) -> Result<&'static str, String> {
        let value = self.string(choices[0])?;
        check_name(what, value, choices)
    }
}

pub(crate) fn integer_wanted(min: u64) -> String {
    if min == 0 {
        "a non-negative integer".to_owned()
    } else {
        format!("an integer ≥ {min}")
    }
}

fn too_large(key: &str, digits: &str) -> String {
    format!("`{key}` is too large, found `{digits}`")
}

/// The name in `choices` equal to `value`.
pub fn check_name(
    what: &str,
    value: &str,
    choices: &[&'static str],
) -> Result<&'static str, String> {
    match choices.iter().find(|choice| **choice == value) {
        Some(choice) => Ok(*choice),
        None => Err(unknown(what, value, choices)),
    }
}

/// An integer key's lower bound.
pub fn check_count(key: &str, min: u64, value: u64) -> Result<(), String> {
    if value < min {
        return Err(format!(
            "expected {} for `{key}`, found `{value}`",
            integer_wanted(min)
        ));
    }
    Ok(())
}

/// A number key's range; `text` is the number as written (or printed), for the message.
pub fn check_float(ty: Ty, key: &str, value: f64, text: &str) -> Result<(), String> {
    let positive = || {
        if !value.is_finite() {
            return Err(format!("`{key}` must be finite, found `{text}`"));
        }
        if value <= 0.0 {
            return Err(format!("`{key}` must be greater than 0, found `{text}`"));
        }
        Ok(())
    };
    match ty {
        Ty::Positive | Ty::Radii => positive(),
        Ty::NonNegative => {
            if !value.is_finite() || value < 0.0 {
                return Err(format!(
                    "`{key}` must be a finite number ≥ 0, found `{text}`"
                ));
            }
            Ok(())
        }
        Ty::AtMost(hi) => {
            positive()?;
            if value > hi {
                return Err(format!("`{key}` must be in (0, {hi}], found `{value}`"));
            }
            Ok(())
        }
        Ty::Below(hi) => {
            positive()?;
            if value >= hi {
                return Err(format!("`{key}` must be in (0, {hi}), found `{value}`"));
            }
            Ok(())
        }
        Ty::Level => {
            if !(value > 0.0 && value < 1.0) {
                return Err(format!(
                    "`{key}` is the confidence level of the assertions, in (0, 1) (e.g. 0.95), \
                     found `{text}`; C&W's logit margin κ is `kappa`"
                ));
            }
            Ok(())
        }
        Ty::Fraction => {
            if !(0.0..=1.0).contains(&value) {
                // `min_acc = 60` is almost surely a percentage; `1.5` is more likely a slip.
                let hint = if (1.0..=100.0).contains(&value) && value.fract() == 0.0 {
                    format!(
                        "; it is a fraction, so {text}% is `{key} = {}`",
                        value / 100.0
                    )
                } else {
                    String::new()
                };
                return Err(format!(
                    "`{key}` must be between 0 and 1, found `{text}`{hint}"
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}
