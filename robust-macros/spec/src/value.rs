//! A value as the user wrote it, before its key says what it must be: what both front ends
//! (the attribute's tokens, the suite's TOML) turn their literals into.

/// One written value. The attribute makes it from a `syn::Expr`, the suite from a TOML value;
/// everything after that is the same code.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `"pgd"`
    Str(String),
    /// `0.1`, `-3`, `8e-3`, `10usize`: a number literal as written.
    Number(Number),
    /// `true`
    Bool(bool),
    /// `[a, b, …]`
    List(Vec<Value>),
    /// A bare word or path, `linf` without its quotes.
    Path(String),
    /// Anything else, as messages describe it: "`-x`", "a table".
    Other(String),
}

/// A number literal, possibly negated, as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Number {
    /// The digits without sign or suffix, underscores removed, in base 10 (`8e-3`, `0.10`).
    pub digits: String,
    /// Written with a leading `-`.
    pub negative: bool,
    /// A type suffix (`f64`, `usize`), empty when none.
    pub suffix: String,
    /// An integer literal (no `.`, no exponent).
    pub integer: bool,
}

impl Number {
    /// A number from its text as written (`-8e-3`, `1_000`, `+0.5`, `2E+1`): TOML's form,
    /// normalised as syn normalises the attribute's literals (`2E+1` → `2e1`), so that both
    /// name their tests alike.
    pub fn parse(text: &str, integer: bool) -> Number {
        let text = text.trim();
        let (negative, rest) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        Number {
            digits: rest.replace('_', "").to_lowercase().replace("e+", "e"),
            negative,
            suffix: String::new(),
            integer,
        }
    }

    /// The literal as written, with its sign, for messages.
    pub fn text(&self) -> String {
        format!("{}{}", if self.negative { "-" } else { "" }, self.digits)
    }

    /// Its value, `None` when the digits are not a number.
    pub fn value(&self) -> Option<f64> {
        let magnitude: f64 = self.digits.parse().ok()?;
        Some(if self.negative { -magnitude } else { magnitude })
    }
}

impl Value {
    /// What messages say the value is: "expected a number for `eps`, found {this}".
    pub fn found(&self) -> String {
        match self {
            Value::Str(s) => format!("the string {s:?}"),
            Value::List(_) => {
                "a list (only `attack`, `perturbation` and `eps` take lists)".to_owned()
            }
            Value::Number(n) => format!("`{}{}`", n.text(), n.suffix),
            Value::Bool(b) => format!("`{b}`"),
            Value::Path(p) => format!("`{p}`"),
            Value::Other(what) => what.clone(),
        }
    }

    /// The string a quoted value holds.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}
