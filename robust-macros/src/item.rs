//! The function under the attribute: checked to be callable as `fn() -> Result<RobustnessCase>`,
//! and split into the attributes that stay on it and those that belong to the generated tests.

use proc_macro2::{Span, TokenStream};
use syn::{Attribute, Item, ItemFn, ReturnType};

use crate::errors::Errors;

/// The function that builds the case, ready to be kept beside its module of tests.
pub(crate) struct TestFn {
    /// The function as written, minus the attributes moved to the tests.
    pub item: ItemFn,
    /// `#[ignore]` and `#[should_panic]`: they describe the tests, and on a plain function they
    /// would do nothing but draw an "unused attribute" warning.
    pub forwarded: Vec<Attribute>,
    /// `#[cfg(...)]`, repeated on the module so that a function configured away takes its tests
    /// with it instead of leaving them calling nothing.
    pub cfgs: Vec<Attribute>,
}

/// Checks the function's signature, reporting every problem at once.
pub(crate) fn parse(item: TokenStream) -> syn::Result<TestFn> {
    let Ok(Item::Fn(mut item)) = syn::parse2::<Item>(item) else {
        return Err(syn::Error::new(
            Span::call_site(),
            "`#[robustness_test]` goes on a function: \
             `fn name() -> robust_runtime::Result<RobustnessCase> { ... }`",
        ));
    };
    let mut errors = Errors::default();
    let sig = &item.sig;
    // The generated tests call the function as `name()` from a plain `#[test] fn`: anything that
    // call could not satisfy is reported here rather than as a type error inside the expansion.
    if let Some(token) = &sig.asyncness {
        errors.spanned(
            token,
            "a robustness test function cannot be `async`: the generated tests call it directly",
        );
    }
    if let Some(token) = &sig.unsafety {
        errors.spanned(
            token,
            "a robustness test function cannot be `unsafe`: the generated tests call it directly",
        );
    }
    if !sig.generics.params.is_empty() {
        errors.spanned(
            &sig.generics,
            "a robustness test function cannot be generic: the generated tests call it with no \
             type arguments",
        );
    } else if let Some(clause) = &sig.generics.where_clause {
        errors.spanned(
            clause,
            "a robustness test function cannot have a `where` clause",
        );
    }
    if !sig.inputs.is_empty() {
        errors.spanned(
            &sig.inputs,
            "a robustness test function takes no arguments: build the model and data inside it",
        );
    }
    if let Some(variadic) = &sig.variadic {
        errors.spanned(variadic, "a robustness test function takes no arguments");
    }
    if let ReturnType::Default = sig.output {
        errors.spanned(
            &sig.ident,
            "a robustness test function must return `robust_runtime::Result<RobustnessCase>`",
        );
    }

    let (forwarded, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut item.attrs)
        .into_iter()
        .partition(|attr| attr.path().is_ident("ignore") || attr.path().is_ident("should_panic"));
    for attr in &kept {
        if attr.path().is_ident("test") {
            errors.spanned(
                attr,
                "remove `#[test]`: `#[robustness_test]` generates the tests itself",
            );
        }
    }
    errors.finish()?;

    let cfgs = kept
        .iter()
        .filter(|attr| attr.path().is_ident("cfg"))
        .cloned()
        .collect();
    item.attrs = kept;
    Ok(TestFn {
        item,
        forwarded,
        cfgs,
    })
}

#[cfg(test)]
mod should {
    use quote::{quote, ToTokens};

    use super::*;

    fn errors(tokens: TokenStream) -> Vec<String> {
        match parse(tokens) {
            Ok(_) => panic!("expected errors"),
            Err(error) => error.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    fn strings(attrs: &[Attribute]) -> Vec<String> {
        attrs
            .iter()
            .map(|attr| attr.to_token_stream().to_string())
            .collect()
    }

    #[test]
    fn accept_a_plain_function() {
        let test_fn = parse(quote!(
            pub fn case() -> robust_runtime::Result<RobustnessCase> {
                unreachable!()
            }
        ))
        .unwrap();
        assert_eq!(test_fn.item.sig.ident, "case");
        assert!(test_fn.forwarded.is_empty() && test_fn.cfgs.is_empty());
    }

    #[test]
    fn move_ignore_and_should_panic_to_the_tests_and_keep_the_rest() {
        let test_fn = parse(quote!(
            /// Docs.
            #[ignore = "slow"]
            #[allow(unused)]
            #[should_panic(expected = "robust accuracy")]
            #[cfg(feature = "cuda")]
            fn case() -> Result<RobustnessCase> {
                unreachable!()
            }
        ))
        .unwrap();
        assert_eq!(
            strings(&test_fn.forwarded),
            [
                "# [ignore = \"slow\"]",
                "# [should_panic (expected = \"robust accuracy\")]"
            ]
        );
        assert_eq!(
            strings(&test_fn.item.attrs),
            [
                "# [doc = r\" Docs.\"]",
                "# [allow (unused)]",
                "# [cfg (feature = \"cuda\")]"
            ]
        );
        assert_eq!(strings(&test_fn.cfgs), ["# [cfg (feature = \"cuda\")]"]);
    }

    #[test]
    fn reject_arguments() {
        assert_eq!(
            errors(quote!(
                fn case(seed: u64) -> Result<RobustnessCase> {
                    unreachable!()
                }
            )),
            ["a robustness test function takes no arguments: build the model and data inside it"]
        );
    }

    #[test]
    fn reject_async_unsafe_and_generic_functions_all_at_once() {
        let all = errors(quote!(
            async unsafe fn case<B: Backend>() -> Result<RobustnessCase> {
                unreachable!()
            }
        ));
        assert_eq!(all.len(), 3, "{all:#?}");
        assert!(all[0].contains("cannot be `async`"));
        assert!(all[1].contains("cannot be `unsafe`"));
        assert!(all[2].contains("cannot be generic"));
    }

    #[test]
    fn reject_a_function_returning_nothing() {
        assert_eq!(
            errors(quote!(
                fn case() {
                    unreachable!()
                }
            )),
            ["a robustness test function must return `robust_runtime::Result<RobustnessCase>`"]
        );
    }

    #[test]
    fn reject_a_redundant_test_attribute() {
        assert_eq!(
            errors(quote!(
                #[test]
                fn case() -> Result<RobustnessCase> {
                    unreachable!()
                }
            )),
            ["remove `#[test]`: `#[robustness_test]` generates the tests itself"]
        );
    }

    #[test]
    fn reject_anything_but_a_function() {
        let all = errors(quote!(
            struct Case;
        ));
        assert!(all[0].starts_with("`#[robustness_test]` goes on a function"));
    }
}
