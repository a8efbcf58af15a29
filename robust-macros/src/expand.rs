//! Writes the expansion: the function, followed by a module of the same name holding one
//! `#[test]` per attack × ε or per perturbation, each a call into `robust_runtime::__private`.

use proc_macro2::{Ident, Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::ReturnType;

use robust_spec::{CaseKind, Kind, Setting};

use crate::args::{self, Spec};
use crate::item::{self, TestFn};

/// Why a `_cuda` variant is ignored by default, as libtest prints it.
const CUDA_IGNORE_REASON: &str =
    "CUDA variant: needs a GPU; run with `cargo test --features cuda -- --ignored _cuda`";

/// The whole attribute: parse → validate → render.
pub(crate) fn robustness_test(args: TokenStream, item: TokenStream) -> TokenStream {
    let spec = args::parse(args);
    let test_fn = item::parse(item.clone());
    let error = match (spec, test_fn) {
        (Ok(spec), Ok(test_fn)) => return render(&spec, &test_fn),
        (Err(mut error), Err(more)) => {
            error.combine(more);
            error
        }
        (Err(error), _) | (_, Err(error)) => error,
    };
    // The function goes out untouched next to the errors, so that code calling it still
    // resolves and the user sees our errors alone, not a cascade of "cannot find function".
    let mut tokens = error.to_compile_error();
    tokens.extend(item);
    tokens
}

/// A setting as the literal its builder method takes: `"l2"`, `10usize`, `0.6f64`, `true`.
fn literal(setting: Setting) -> TokenStream {
    match setting {
        Setting::Name(name) => name.into_token_stream(),
        Setting::Usize(v) => v.into_token_stream(),
        Setting::U64(v) => v.into_token_stream(),
        Setting::F64(v) => v.into_token_stream(),
        Setting::Bool(v) => v.into_token_stream(),
        Setting::Names(names) => quote!(&[#(#names),*]),
    }
}

fn render(spec: &Spec, test_fn: &TestFn) -> TokenStream {
    let TestFn {
        item,
        forwarded,
        cfgs,
    } = test_fn;
    let vis = &item.vis;
    let name = &item.sig.ident;
    let private = match &spec.krate {
        Some(path) => quote!(#path::__private),
        None => quote!(::robust_runtime::__private),
    };
    // Spanned at the declared return type, so that a function returning the wrong type is
    // reported on that type instead of on the attribute.
    let output_span = match &item.sig.output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => name.span(),
    };
    let build = {
        let mut name = name.clone();
        name.set_span(output_span);
        quote_spanned!(output_span=> super::#name)
    };
    // One builder call per option the test reads (a perturbation test of a list leaves out
    // the parameters of the list's other families).
    let options = |case: &robust_spec::Case<'_>| -> Vec<TokenStream> {
        spec.options_for(case)
            .written()
            .into_iter()
            .map(|(method, value)| {
                let method = Ident::new(method, Span::call_site());
                let value = literal(value);
                quote!(.#method(#value))
            })
            .collect()
    };

    // With several ε, every test gets the whole list, so minimal-perturbation attacks can run
    // once for the sweep and each test reads its ε off that run.
    let sweep = match spec.kind {
        Kind::Attack if spec.eps.len() > 1 => {
            let all = spec.eps.iter().map(|e| e.value.into_token_stream());
            Some(quote!(.sweep(&[#(#all),*])))
        }
        _ => None,
    };
    // `device = "cpu"` asks for the CPU alone: no CUDA variant.
    let cpu_only = spec.options.device == Some("cpu");
    let ignored = forwarded.iter().any(|a| a.path().is_ident("ignore"));
    let tests = spec.cases().into_iter().map(|case| {
        let test = format_ident!("{}", case.name);
        let options = options(&case);
        // The runtime reports and files results under the test's full path, as libtest shows it.
        let test_spec = |test: &str| {
            let suffix = format!("::{test}");
            let name = quote!(::core::concat!(::core::module_path!(), #suffix));
            match &case.test {
                CaseKind::Attack { attack, eps } => {
                    let eps = eps.value.into_token_stream();
                    quote! {
                        #private::TestSpec::new(#name, #attack, #eps,)
                        .manifest_dir(::core::env!("CARGO_MANIFEST_DIR"))
                        #(#options)*
                        #sweep
                    }
                }
                CaseKind::Certify {
                    certifier,
                    radius,
                    all,
                } => {
                    let value = radius.value.into_token_stream();
                    let curve = (*certifier == "smoothing" && all.len() > 1).then(|| {
                        let all = all.iter().map(|e| e.value.into_token_stream());
                        quote!(.curve(&[#(#all),*]))
                    });
                    quote! {
                        #private::CertifySpec::new(#name, #certifier, #value,)
                        .manifest_dir(::core::env!("CARGO_MANIFEST_DIR"))
                        #(#options)*
                        #curve
                    }
                }
                CaseKind::Perturbation { perturbation } => {
                    let perturbation = &perturbation.name;
                    let eps = spec.eps_for(&case).map(|eps| {
                        let eps = eps.value.into_token_stream();
                        quote!(.eps(#eps))
                    });
                    quote! {
                        #private::InvarianceSpec::new(#name, #perturbation)
                        .manifest_dir(::core::env!("CARGO_MANIFEST_DIR"))
                        #eps
                        #(#options)*
                    }
                }
            }
        };
        // The CUDA variant exists only where robust-runtime has its `cuda` feature (the
        // runtime's macro drops it otherwise), runs on the GPU whatever `device` says, and is
        // ignored unless asked for: whether a GPU is there is only known at run time, and a
        // test that cannot run must not pass.
        let cuda = (!cpu_only).then(|| {
            let variant = format_ident!("{}_cuda", case.name);
            let test_spec = test_spec(&variant.to_string());
            let ignore = (!ignored).then(|| quote!(#[ignore = #CUDA_IGNORE_REASON]));
            quote! {
                #private::cuda_variant! {
                    #[::core::prelude::v1::test]
                    #(#forwarded)*
                    #ignore
                    fn #variant() {
                        #private::run_test(#build, #test_spec.cuda_variant(),);
                    }
                }
            }
        });
        let test_spec = test_spec(&case.name);
        quote! {
            #[::core::prelude::v1::test]
            #(#forwarded)*
            fn #test() {
                #private::run_test(#build, #test_spec,);
            }
            #cuda
        }
    });

    quote! {
        #item

        #(#cfgs)*
        #vis mod #name {
            #(#tests)*
        }
    }
}

#[cfg(test)]
mod should {
    use super::*;

    /// The expansion without its `…::cuda_variant! { … }` blocks, which
    /// [`emit_cuda_variants_ignored_unless_the_test_is_cpu_only`] checks on their own.
    fn without_cuda_variants(tokens: TokenStream) -> TokenStream {
        use proc_macro2::{Group, TokenTree};
        let mut out: Vec<TokenTree> = Vec::new();
        let mut tokens = tokens.into_iter().peekable();
        while let Some(tt) = tokens.next() {
            match tt {
                TokenTree::Ident(ref i) if i == "cuda_variant" => {
                    // Drop the path before it (`::robust_runtime::__private::`), `!` and `{…}`.
                    while matches!(out.last(), Some(TokenTree::Ident(_)))
                        || matches!(out.last(), Some(TokenTree::Punct(p)) if p.as_char() == ':')
                    {
                        out.pop();
                    }
                    tokens.next();
                    tokens.next();
                }
                TokenTree::Group(g) => {
                    let mut inner = Group::new(g.delimiter(), without_cuda_variants(g.stream()));
                    inner.set_span(g.span());
                    out.push(TokenTree::Group(inner));
                }
                other => out.push(other),
            }
        }
        out.into_iter().collect()
    }

    /// Compares token streams through their canonical string form, which ignores spans and
    /// formatting: the expected side is written with `quote!` and reads like the expansion.
    /// The CUDA variants are left out (see [`expand_one_attack_and_one_eps`] for one in full).
    fn assert_expands(args: TokenStream, item: TokenStream, expected: TokenStream) {
        let actual = without_cuda_variants(robustness_test(args, item)).to_string();
        let expected = expected.to_string();
        assert!(
            actual == expected,
            "expansion differs\n  actual: {actual}\nexpected: {expected}"
        );
    }

    #[test]
    fn expand_one_attack_and_one_eps() {
        let spec = |name: &str| {
            let path = format!("::{name}");
            quote! {
                ::robust_runtime::__private::TestSpec::new(
                    ::core::concat!(::core::module_path!(), #path),
                    "pgd",
                    0.1f64,
                )
                .manifest_dir(::core::env!("CARGO_MANIFEST_DIR"))
                .min_acc(0.6f64)
            }
        };
        let (base, variant) = (spec("pgd_eps_0_1"), spec("pgd_eps_0_1_cuda"));
        let actual = robustness_test(
            quote!(attack = "pgd", eps = 0.1, min_acc = 0.6),
            quote!(
                pub fn mnist_mlp() -> robust_runtime::Result<RobustnessCase> {
                    unreachable!()
                }
            ),
        );
        let expected = quote! {
            pub fn mnist_mlp() -> robust_runtime::Result<RobustnessCase> { unreachable!() }

            pub mod mnist_mlp {
                #[::core::prelude::v1::test]
                fn pgd_eps_0_1() {
                    ::robust_runtime::__private::run_test(super::mnist_mlp, #base,);
                }
                ::robust_runtime::__private::cuda_variant! {
                    #[::core::prelude::v1::test]
                    #[ignore = "CUDA variant: needs a GPU; run with `cargo test --features cuda -- --ignored _cuda`"]
                    fn pgd_eps_0_1_cuda() {
                        ::robust_runtime::__private::run_test(super::mnist_mlp, #variant.cuda_variant(),);
                    }
                }
            }
        };
        assert_eq!(actual.to_string(), expected.to_string());
    }

    #[test]
    fn emit_cuda_variants_ignored_unless_the_test_is_cpu_only() {
        let item = quote!(
            fn case() -> Result<RobustnessCase> {
                unreachable!()
            }
        );
        let text = robustness_test(
            quote!(attack = "pgd", eps = 0.1, min_acc = 0.6, device = "cpu"),
            item.clone(),
        )
        .to_string();
        assert!(!text.contains("_cuda"), "{text}");
        // The user's own `#[ignore]` is the only one on both tests.
        let text = robustness_test(
            quote!(attack = "pgd", eps = 0.1, min_acc = 0.6),
            quote!(
                #[ignore]
                #[should_panic]
                fn case() -> Result<RobustnessCase> {
                    unreachable!()
                }
            ),
        )
        .to_string();
        assert!(text.contains("fn pgd_eps_0_1_cuda"), "{text}");
        assert_eq!(text.matches("ignore").count(), 2, "{text}");
        assert_eq!(text.matches("should_panic").count(), 2, "{text}");
        assert!(!text.contains("CUDA variant"), "{text}");
    }

    #[test]
    fn expand_one_attack_and_one_eps_without_the_variant() {
        assert_expands(
            quote!(attack = "pgd", eps = 0.1, min_acc = 0.6),
            quote! {
                /// Builds the case.
                pub fn mnist_mlp() -> robust_runtime::Result<RobustnessCase> { unreachable!() }
            },
            quote! {
                            /// Builds the case.
                            pub fn mnist_mlp() -> robust_runtime::Result<RobustnessCase> { unreachable!() }

                            pub mod mnist_mlp {
                                #[::core::prelude::v1::test]
                                fn pgd_eps_0_1() {
                                    ::robust_runtime::__private::run_test(
                                        super::mnist_mlp,
                                        ::robust_runtime::__private::TestSpec::new(
                                            ::core::concat!(::core::module_path!(), "::pgd_eps_0_1"),
                                            "pgd",
                                            0.1f64,
                                        )
            .manifest_dir(::core::env!("CARGO_MANIFEST_DIR"))
                                        .min_acc(0.6f64),
                                    );
                                }
                            }
                        },
        );
    }

    #[test]
    fn expand_a_matrix_of_attacks_and_eps_with_the_options_written() {
        let test = |name: &str, attack: &str, eps: f64| {
            let test = format_ident!("{}", name);
            let path = format!("::{name}");
            quote! {
                            #[::core::prelude::v1::test]
                            fn #test() {
                                ::robust_runtime::__private::run_test(
                                    super::mnist_cnn,
                                    ::robust_runtime::__private::TestSpec::new(
                                        ::core::concat!(::core::module_path!(), #path),
                                        #attack,
                                        #eps,
                                    )
            .manifest_dir(::core::env!("CARGO_MANIFEST_DIR"))
                                    .norm("l2")
                                    .steps(20usize)
                                    .random_start(true)
                                    .min_acc(0.6f64)
                                    .samples(500usize)
                                    .seed(7u64)
                                    .sweep(&[0.05f64, 1f64]),
                                );
                            }
                        }
        };
        let tests = [
            test("fgsm_eps_0_05", "fgsm", 0.05),
            test("fgsm_eps_1", "fgsm", 1.0),
            test("pgd_eps_0_05", "pgd", 0.05),
            test("pgd_eps_1", "pgd", 1.0),
        ];
        assert_expands(
            // Written out of declaration order: the calls come out in declaration order.
            quote!(
                seed = 7,
                attack = ["fgsm", "pgd"],
                eps = [0.05, 1],
                min_acc = 0.6,
                samples = 500,
                norm = "l2",
                random_start = true,
                steps = 20
            ),
            quote!(
                fn mnist_cnn() -> Result<RobustnessCase> {
                    unreachable!()
                }
            ),
            quote! {
                fn mnist_cnn() -> Result<RobustnessCase> { unreachable!() }
                mod mnist_cnn { #(#tests)* }
            },
        );
    }

    #[test]
    fn expand_one_test_per_perturbation_with_the_manifest_dir() {
        let test = |name: &str, perturbation: &str, eps: bool| {
            let eps = eps.then(|| quote!(.eps(0.05f64)));
            let test = format_ident!("{}", name);
            let path = format!("::{name}");
            quote! {
                #[::core::prelude::v1::test]
                fn #test() {
                    ::robust_runtime::__private::run_test(
                        super::mnist_cnn,
                        ::robust_runtime::__private::InvarianceSpec::new(
                            ::core::concat!(::core::module_path!(), #path),
                            #perturbation
                        )
                        .manifest_dir(::core::env!("CARGO_MANIFEST_DIR"))
                        #eps
                        .max_degrees(15f64)
                        .cases(64usize)
                        .min_invariance(0.99f64),
                    );
                }
            }
        };
        let (first, second) = (
            // `eps` is the radius of `linf`: the rotation-only test does not read it.
            test("rotation", "rotation", false),
            test("linf_rotation", "linf+rotation", true),
        );
        assert_expands(
            quote!(
                perturbation = ["rotation", "linf + rotation"],
                eps = 0.05,
                max_degrees = 15,
                cases = 64,
                min_invariance = 0.99
            ),
            quote!(
                fn mnist_cnn() -> Result<RobustnessCase> {
                    unreachable!()
                }
            ),
            quote! {
                fn mnist_cnn() -> Result<RobustnessCase> { unreachable!() }
                mod mnist_cnn { #first #second }
            },
        );
    }

    #[test]
    fn call_the_runtime_through_the_crate_path() {
        assert_expands(
            quote!(
                attack = "fgsm",
                eps = 0.1,
                max_drop = 0.1,
                crate = "::renamed::rt"
            ),
            quote!(
                fn case() -> rt::Result<RobustnessCase> {
                    unreachable!()
                }
            ),
            quote! {
                            fn case() -> rt::Result<RobustnessCase> { unreachable!() }
                            mod case {
                                #[::core::prelude::v1::test]
                                fn fgsm_eps_0_1() {
                                    ::renamed::rt::__private::run_test(
                                        super::case,
                                        ::renamed::rt::__private::TestSpec::new(
                                            ::core::concat!(::core::module_path!(), "::fgsm_eps_0_1"),
                                            "fgsm",
                                            0.1f64,
                                        )
            .manifest_dir(::core::env!("CARGO_MANIFEST_DIR"))
                                        .max_drop(0.1f64),
                                    );
                                }
                            }
                        },
        );
    }

    #[test]
    fn move_should_panic_and_ignore_onto_every_test_and_cfg_onto_the_module() {
        let test = |name: &str, eps: f64| {
            let test = format_ident!("{}", name);
            let path = format!("::{name}");
            quote! {
                            #[::core::prelude::v1::test]
                            #[should_panic(expected = "robust accuracy")]
                            #[ignore]
                            fn #test() {
                                ::robust_runtime::__private::run_test(
                                    super::fragile,
                                    ::robust_runtime::__private::TestSpec::new(
                                        ::core::concat!(::core::module_path!(), #path),
                                        "pgd",
                                        #eps,
                                    )
            .manifest_dir(::core::env!("CARGO_MANIFEST_DIR"))
                                    .min_acc(0.99f64)
                                    .sweep(&[0.3f64, 0.5f64]),
                                );
                            }
                        }
        };
        let (first, second) = (test("pgd_eps_0_3", 0.3), test("pgd_eps_0_5", 0.5));
        assert_expands(
            quote!(attack = "pgd", eps = [0.3, 0.5], min_acc = 0.99),
            quote! {
                #[should_panic(expected = "robust accuracy")]
                #[allow(dead_code)]
                #[ignore]
                #[cfg(not(miri))]
                pub(crate) fn fragile() -> Result<RobustnessCase> { unreachable!() }
            },
            quote! {
                #[allow(dead_code)]
                #[cfg(not(miri))]
                pub(crate) fn fragile() -> Result<RobustnessCase> { unreachable!() }
                #[cfg(not(miri))]
                pub(crate) mod fragile { #first #second }
            },
        );
    }

    #[test]
    fn keep_raw_identifiers_raw() {
        let text = robustness_test(
            quote!(attack = "pgd", eps = 0.1, min_acc = 0.5),
            quote!(
                fn r#type() -> Result<RobustnessCase> {
                    unreachable!()
                }
            ),
        )
        .to_string();
        assert!(text.contains("mod r#type"), "{text}");
        assert!(text.contains("super :: r#type"), "{text}");
    }

    #[test]
    fn emit_every_error_and_the_function_unchanged() {
        let item = quote!(
            #[should_panic]
            fn case(x: u8) -> Result<RobustnessCase> {
                unreachable!()
            }
        );
        let tokens = robustness_test(quote!(attack = "pgdd", eps = 0.1), item.clone());
        let text = tokens.to_string();
        assert_eq!(text.matches("compile_error").count(), 3, "{text}");
        assert!(text.contains("did you mean `pgd`?"), "{text}");
        assert!(text.contains("missing `min_acc` or `max_drop`"), "{text}");
        assert!(text.contains("takes no arguments"), "{text}");
        assert!(text.ends_with(&item.to_string()), "{text}");
    }
}
