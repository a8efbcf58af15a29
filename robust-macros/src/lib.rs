//! The `#[robustness_test]` attribute of [`robust-runtime`](https://docs.rs/robust-runtime).
//!
//! Depend on `robust-runtime`, which re-exports the attribute and documents it; this crate is
//! its implementation. The attribute turns a function building a `RobustnessCase` into a module
//! of tests, one per attack × ε:
//!
//! ```ignore
//! use robust_runtime::prelude::*;
//!
//! #[robustness_test(attack = ["fgsm", "pgd"], eps = [0.05, 0.1], min_acc = 0.6)]
//! fn mnist_cnn() -> robust_runtime::Result<RobustnessCase> { /* ... */ }
//! // cargo test mnist_cnn::pgd_eps_0_1
//! ```
//!
//! The work is split as in serde_derive: `args` parses and checks the attribute, `item` the
//! function, `expand` writes the tests; every mistake is reported at once, at its own token.

mod args;
mod errors;
mod expand;
mod item;

use proc_macro::TokenStream;

/// Generates one `#[test]` per attack × ε from a function returning a `RobustnessCase`.
///
/// See `robust_runtime::robustness_test` for the keys and their meaning.
#[proc_macro_attribute]
pub fn robustness_test(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::robustness_test(args.into(), item.into()).into()
}
