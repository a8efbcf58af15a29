//! The attribute's arguments, `#[robustness_test(key = value, ...)]`: tokens → [`robust_spec`]
//! entries → a checked [`Spec`]. Every key, name list, range and rule lives in `robust_spec`,
//! which the TOML suite and the runtime share; this file turns `syn` expressions into values
//! (`values`) and the spec's mistakes back into spans, one `compile_error!` per mistake, all of
//! them at once.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, ExprUnary, Ident, Lit, Token, UnOp};

use robust_spec::{At, Entry, Number, Value};

use crate::errors::Errors;

/// A robustness test as the attribute describes it: the shared spec, plus the `crate` path.
pub(crate) struct Spec {
    pub spec: robust_spec::Spec,
    /// `crate`: where the runtime is, for users who renamed the dependency.
    pub krate: Option<syn::Path>,
}

impl std::ops::Deref for Spec {
    type Target = robust_spec::Spec;
    fn deref(&self) -> &robust_spec::Spec {
        &self.spec
    }
}

/// Parses the attribute's arguments, reporting every mistake at once.
pub(crate) fn parse(tokens: TokenStream) -> syn::Result<Spec> {
    let args = Punctuated::<Arg, Token![,]>::parse_terminated.parse2(tokens)?;
    let args: Vec<Arg> = args.into_iter().collect();
    let entries: Vec<Entry> = args
        .iter()
        .map(|Arg { key, value }| Entry::new(key.unraw().to_string(), value_of(value)))
        .collect();
    let mut errors = Errors::default();
    let spec = match robust_spec::parse(&entries) {
        Ok(spec) => Some(spec),
        Err(issues) => {
            for issue in issues {
                errors.push(at(&args, &entries, issue.at, &issue.message));
            }
            None
        }
    };
    // crate = "my_runtime"
    // crate = "::some::path::robust_runtime"
    let mut krate = None;
    if let Some(spec) = &spec {
        if let (Some(path), Some(arg)) = (&spec.krate, args.iter().find(|a| a.key == "crate")) {
            match syn::parse_str::<syn::Path>(path) {
                Ok(path) => krate = Some(path),
                Err(_) => errors.spanned(
                    &arg.value,
                    format!(
                        "`crate` must be a path to the runtime crate, such as \"::robust_runtime\", \
                         found {path:?}"
                    ),
                ),
            }
        }
    }
    errors.finish()?;
    let spec = spec.ok_or_else(|| syn::Error::new(Span::call_site(), "invalid attribute"))?;
    Ok(Spec { spec, krate })
}

/// The spec's "where" as a span: the key or value token, or the whole attribute.
fn at(args: &[Arg], entries: &[Entry], at: At, message: &str) -> syn::Error {
    let find = |key: &str| entries.iter().position(|e| e.key == key).map(|i| &args[i]);
    match at {
        At::Whole => syn::Error::new(Span::call_site(), message),
        At::Entry(i) => syn::Error::new(args[i].key.span(), message),
        At::Key(key) => match find(key) {
            Some(arg) => syn::Error::new(arg.key.span(), message),
            None => syn::Error::new(Span::call_site(), message),
        },
        At::Value(key, element) => match find(key) {
            Some(arg) => {
                let expr = match (&arg.value, element) {
                    (Expr::Array(array), Some(j)) => {
                        array.elems.iter().nth(j).unwrap_or(&arg.value)
                    }
                    (expr, _) => expr,
                };
                // Spanned over the whole expression, so that `-0.1` is underlined in full.
                syn::Error::new_spanned(expr, message)
            }
            None => syn::Error::new(Span::call_site(), message),
        },
    }
}

/// The value an expression stands for; only literals (and lists of them) are values.
fn value_of(expr: &Expr) -> Value {
    let number = |lit: &Lit, negative: bool| match lit {
        Lit::Int(lit) => Some(Number {
            digits: lit.base10_digits().to_owned(),
            negative,
            suffix: lit.suffix().to_owned(),
            integer: true,
        }),
        Lit::Float(lit) => Some(Number {
            digits: lit.base10_digits().to_owned(),
            negative,
            suffix: lit.suffix().to_owned(),
            integer: false,
        }),
        _ => None,
    };
    let text = || format!("`{}`", expr.to_token_stream().to_string().replace(' ', ""));
    match expr {
        Expr::Lit(ExprLit { lit, .. }) => match lit {
            Lit::Str(s) => Value::Str(s.value()),
            Lit::Bool(b) => Value::Bool(b.value),
            lit => number(lit, false).map_or_else(|| Value::Other(text()), Value::Number),
        },
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_),
            expr: inner,
            ..
        }) => match &**inner {
            Expr::Lit(ExprLit { lit, .. }) => {
                number(lit, true).map_or_else(|| Value::Other(text()), Value::Number)
            }
            _ => Value::Other(text()),
        },
        Expr::Unary(_) => Value::Other(text()),
        Expr::Array(array) => Value::List(array.elems.iter().map(value_of).collect()),
        Expr::Path(path) => Value::Path(path.to_token_stream().to_string().replace(' ', "")),
        _ => Value::Other("an expression (only literals are accepted)".to_owned()),
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

#[cfg(test)]
mod should;

#[cfg(test)]
mod agree;
