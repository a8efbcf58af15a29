//! The one vocabulary of a robustness test: the name lists, the key table (type, range, the
//! tests each key belongs to, default, doc), reading a value for a key (`Options::set`), the
//! rules relating keys ([`parse`], [`check_spec`]) and the names of the generated tests
//! ([`Spec::cases`]).
//!
//! `#[robustness_test]` (in `robust-macros`), the TOML suite and the runtime's builders (in
//! `robust-runtime`) all go through this crate, so the three accept the same keys, say the same
//! thing about the same mistake and name the same test the same way. It depends on nothing but,
//! for the suite's front end ([`toml`]), the `toml` crate; the attribute's front end (tokens →
//! [`Value`]) lives in the macro crate.
//!
//! ```
//! use robust_spec::{parse, Entry, Value, Number};
//!
//! let eps = Value::Number(Number::parse("8e-3", false));
//! let spec = parse(&[
//!     Entry::new("attack", Value::Str("pgd".into())),
//!     Entry::new("eps", eps),
//!     Entry::new("min_acc", Value::Number(Number::parse("0.5", false))),
//! ])
//! .unwrap();
//! assert_eq!(spec.cases()[0].name, "pgd_eps_8e_3");
//! ```

mod check;
mod keys;
pub mod names;
mod spec;
pub mod suggest;
mod ty;
mod value;

#[cfg(feature = "toml")]
pub mod toml;

pub use check::{check_spec, composition, parse, At, Entry, Issue};
pub use keys::{key, key_names, Field, Key, Options, Scope, Setting, KEYS};
pub use spec::{identifier_chars, Case, CaseKind, Composition, Kind, Radius, Spec};
pub use ty::{Given, Ty};
pub use value::{Number, Value};

/// The README's key table, as the key table says it: `| key | tests | type | default | meaning |`.
pub fn readme_table() -> String {
    let mut out =
        String::from("| key | tests | type | default | meaning |\n|---|---|---|---|---|\n");
    for k in KEYS {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            k.name,
            k.tests(),
            k.ty.describe(),
            k.default,
            k.doc.trim()
        ));
    }
    out
}
