//! Validators of hyper-parameters, with the runtime's typed errors: every module that checks
//! a value before tensor work (attacks, certifiers, perturbations, defences) uses these, so this
//! module sits below all of them. The key table's checks (`robust_spec`) come first for values a
//! test description sets; these guard the configs built by hand and the rules only the runtime
//! knows (a radius that is 0 or ∞ once it is an `f32`).

use crate::{Error, Result};

/// Whether `value` is finite and > 0 as the `f32` the tensors will hold, not only as `f64`:
/// `1e39` is infinite in f32 and `1e-50` is 0, so a radius checked only as f64 would run as
/// ∞ or 0.
pub(crate) fn positive_in_f32(value: f64) -> bool {
    let single = value as f32;
    value > 0.0 && single.is_finite() && single > 0.0
}

/// Whether `value` is finite and ≥ 0 as an `f32`.
pub(crate) fn non_negative_in_f32(value: f64) -> bool {
    value >= 0.0 && (value as f32).is_finite()
}

/// `expected` for a value that is out of range only once rounded to `f32`, with what it
/// becomes there; `expected` as it is otherwise.
pub(crate) fn expected_in_f32(value: f64, expected: &str) -> String {
    let single = value as f32;
    if value.is_finite() && (single.is_infinite() || (value != 0.0 && single == 0.0)) {
        format!(
            "{expected} as f32, the tensors' type ({value} becomes {single} there; f32 holds \
             magnitudes from 1.4e-45 to 3.4e38)"
        )
    } else {
        expected.to_string()
    }
}

pub(crate) fn check_positive(name: &'static str, value: f64) -> Result<()> {
    check_positive_as(name, value, "a finite number > 0")
}

/// [`check_positive`] with the parameter's own words for what is expected.
pub(crate) fn check_positive_as(name: &'static str, value: f64, expected: &str) -> Result<()> {
    if positive_in_f32(value) {
        Ok(())
    } else {
        Err(Error::param(name, value, expected_in_f32(value, expected)))
    }
}

pub(crate) fn check_non_negative(name: &'static str, value: f64) -> Result<()> {
    if non_negative_in_f32(value) {
        Ok(())
    } else {
        Err(Error::param(
            name,
            value,
            expected_in_f32(value, "a finite number ≥ 0"),
        ))
    }
}

pub(crate) fn check_at_least_one(name: &'static str, value: usize) -> Result<()> {
    if value >= 1 {
        Ok(())
    } else {
        Err(Error::param(name, value, "an integer ≥ 1"))
    }
}
