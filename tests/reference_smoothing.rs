//! Randomized smoothing's statistics against scipy and statsmodels, the libraries Cohen et al.'s
//! code calls: `tests/reference/smoothing_scipy.json`, produced by
//! `tests/reference/smoothing_scipy.py`.

use robust_runtime::certify::smoothing::{certify_from_counts, predict_from_counts};
use robust_runtime::certify::stats;
use serde_json::Value;

fn reference() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/reference/smoothing_scipy.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("reference file")).expect("JSON")
}

fn f(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("{key} in {v}"))
}

fn u(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

/// Relative agreement, absolute near 0.
fn assert_close(ours: f64, theirs: f64, what: &str) {
    let tol = 1e-9 * theirs.abs().max(1e-3);
    assert!(
        (ours - theirs).abs() <= tol,
        "{what}: ours {ours:e}, scipy {theirs:e}"
    );
}

#[test]
fn clopper_pearson_bounds_equal_statsmodels() {
    let cases = reference()["clopper_pearson"].as_array().unwrap().clone();
    assert!(cases.len() >= 50);
    for c in &cases {
        let (k, n, alpha) = (u(c, "k"), u(c, "n"), f(c, "alpha"));
        let what = format!("k = {k}, n = {n}, α = {alpha}");
        assert_close(
            stats::clopper_pearson_lower(k, n, alpha),
            f(c, "lower"),
            &what,
        );
        // Two-sided interval at level α = one-sided bounds at α/2.
        assert_close(
            stats::clopper_pearson_lower(k, n, alpha / 2.0),
            f(c, "two_sided_lo"),
            &what,
        );
        assert_close(
            stats::clopper_pearson_upper(k, n, alpha / 2.0),
            f(c, "two_sided_hi"),
            &what,
        );
    }
}

#[test]
fn normal_quantiles_and_radii_equal_scipy() {
    let r = reference();
    for c in r["norm_ppf"].as_array().unwrap() {
        let p = f(c, "p");
        assert_close(stats::normal_ppf(p), f(c, "ppf"), &format!("Φ⁻¹({p})"));
    }
    for c in r["radius"].as_array().unwrap() {
        let (sigma, p) = (f(c, "sigma"), f(c, "p"));
        assert_close(
            sigma * stats::normal_ppf(p),
            f(c, "radius"),
            &format!("σ = {sigma}, p = {p}"),
        );
    }
}

#[test]
fn predict_tests_like_scipy_binomtest() {
    for c in reference()["binom_test"].as_array().unwrap() {
        let (n_a, n_b) = (u(c, "nA"), u(c, "nB"));
        let what = format!("nA = {n_a}, nB = {n_b}");
        assert_close(
            stats::binomial_test_half(n_a, n_a + n_b),
            f(c, "pvalue"),
            &what,
        );
        for (alpha, abstain) in c["abstain"].as_object().unwrap() {
            let alpha: f64 = alpha.parse().unwrap();
            let ours = predict_from_counts(3, n_a, n_b, alpha);
            assert_eq!(
                ours.is_none(),
                abstain.as_bool().unwrap(),
                "{what}, α = {alpha}"
            );
        }
    }
}

#[test]
fn certify_decides_like_cohen_et_al() {
    let cases = reference()["certify"].as_array().unwrap().clone();
    assert!(
        cases.iter().any(|c| c["abstain"] == true) && cases.iter().any(|c| c["abstain"] == false)
    );
    for c in &cases {
        let (n, n_a, alpha, sigma) = (u(c, "n"), u(c, "nA"), f(c, "alpha"), f(c, "sigma"));
        let cert = certify_from_counts(7, n_a, n, alpha, sigma);
        let what = format!("n = {n}, nA = {n_a}, α = {alpha}, σ = {sigma}");
        assert_close(cert.p_a_lower, f(c, "pA_lower"), &what);
        assert_eq!(cert.prediction.is_none(), c["abstain"] == true, "{what}");
        assert_close(cert.radius, f(c, "radius"), &what);
    }
}
