//! The statistics randomized smoothing and confidence-bound assertions rest on, in `f64`
//! (a bottom module: `eval` asserts on these bounds and `certify` certifies with them):
//! Clopper–Pearson bounds (exact binomial confidence intervals), the two-sided binomial test,
//! and the standard normal distribution and its inverse.
//!
//! Everything is built on two special functions, the regularised incomplete beta and gamma
//! functions (continued fractions and series as in Numerical Recipes §6.2/§6.4), and inverted by
//! bisection, which needs no tabulated approximation and is exact to a few ulps. The values are
//! checked against scipy and statsmodels in `tests/reference/smoothing_scipy.json`.

/// `ln Γ(x)` for `x > 0` (Lanczos approximation, g = 7, 9 terms; relative error ≈ 1e-15).
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const COEF: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1 − x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).abs().ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = COEF[0];
    for (i, c) in COEF.iter().enumerate().skip(1) {
        sum += c / (x + i as f64);
    }
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

const EPS: f64 = 1e-16;
const TINY: f64 = 1e-300;
const MAX_ITER: usize = 100_000;

/// The regularised incomplete beta function `I_x(a, b)`, `a, b > 0`, `x ∈ [0, 1]`.
pub fn beta_inc(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = a * x.ln() + b * (-x).ln_1p() - ln_beta(a, b);
    // The continued fraction converges fast for x < (a + 1)/(a + b + 2); use the symmetry
    // I_x(a, b) = 1 − I_{1−x}(b, a) on the other side.
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_cf(a, b, x) / a
    } else {
        1.0 - ln_front.exp() * beta_cf(b, a, 1.0 - x) / b
    }
}

fn ln_beta(a: f64, b: f64) -> f64 {
    ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
}

/// The continued fraction of `I_x(a, b)` by the modified Lentz method.
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    let clamp = |v: f64| if v.abs() < TINY { TINY } else { v };
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 / clamp(1.0 - qab * x / qap);
    let mut h = d;
    for m in 1..MAX_ITER {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 / clamp(1.0 + aa * d);
        c = clamp(1.0 + aa / c);
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 / clamp(1.0 + aa * d);
        c = clamp(1.0 + aa / c);
        let step = d * c;
        h *= step;
        if (step - 1.0).abs() < EPS {
            break;
        }
    }
    h
}

/// The `p`-quantile of the Beta(a, b) distribution, by bisection on [`beta_inc`].
pub fn beta_ppf(p: f64, a: f64, b: f64) -> f64 {
    bisect(|x| beta_inc(a, b, x), p, 0.0, 1.0)
}

/// The `x` in `[lo, hi]` where the increasing function `f` reaches `target`, to the last bit.
fn bisect(f: impl Fn(f64) -> f64, target: f64, mut lo: f64, mut hi: f64) -> f64 {
    for _ in 0..2_000 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if f(mid) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// One-sided `1 − alpha` lower confidence bound of a binomial proportion after `k` successes in
/// `n` trials (Clopper–Pearson): `Beta(k, n − k + 1)`'s `alpha`-quantile, 0 when `k = 0`. This is
/// `proportion_confint(k, n, alpha=2*alpha, method="beta")[0]`, as Cohen et al.'s `certify` uses it.
pub fn clopper_pearson_lower(k: u64, n: u64, alpha: f64) -> f64 {
    assert!(k <= n && n > 0, "k = {k} successes in n = {n} trials");
    if k == 0 {
        return 0.0;
    }
    beta_ppf(alpha, k as f64, (n - k + 1) as f64)
}

/// One-sided `1 − alpha` upper confidence bound (Clopper–Pearson), 1 when `k = n`.
pub fn clopper_pearson_upper(k: u64, n: u64, alpha: f64) -> f64 {
    assert!(k <= n && n > 0, "k = {k} successes in n = {n} trials");
    if k == n {
        return 1.0;
    }
    beta_ppf(1.0 - alpha, (k + 1) as f64, (n - k) as f64)
}

/// `P(X ≤ k)` for `X ~ Binomial(n, p)`.
pub fn binomial_cdf(k: u64, n: u64, p: f64) -> f64 {
    if k >= n {
        return 1.0;
    }
    beta_inc((n - k) as f64, (k + 1) as f64, 1.0 - p)
}

/// The two-sided p-value of the exact binomial test of `k` successes in `n` trials against
/// `p = 1/2` (`scipy.stats.binomtest(k, n, 0.5).pvalue`): for the symmetric null it is
/// `min(1, 2·P(X ≤ min(k, n − k)))`.
pub fn binomial_test_half(k: u64, n: u64) -> f64 {
    assert!(k <= n, "k = {k} successes in n = {n} trials");
    if n == 0 || 2 * k == n {
        return 1.0;
    }
    (2.0 * binomial_cdf(k.min(n - k), n, 0.5)).min(1.0)
}

/// The regularised upper incomplete gamma function `Q(a, x)`, `a > 0`, `x ≥ 0`.
fn gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let ln_front = a * x.ln() - x - ln_gamma(a);
    if x < a + 1.0 {
        // Series for P(a, x).
        let (mut term, mut sum, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..MAX_ITER {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() < sum.abs() * EPS {
                break;
            }
        }
        1.0 - sum * ln_front.exp()
    } else {
        // Continued fraction for Q(a, x) (modified Lentz).
        let clamp = |v: f64| if v.abs() < TINY { TINY } else { v };
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / TINY;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..MAX_ITER {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = 1.0 / clamp(an * d + b);
            c = clamp(b + an / c);
            let step = d * c;
            h *= step;
            if (step - 1.0).abs() < EPS {
                break;
            }
        }
        ln_front.exp() * h
    }
}

/// The standard normal CDF Φ(x), accurate in both tails.
pub fn normal_cdf(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    // Φ(x) = Q(1/2, x²/2)/2 for x ≤ 0 (erfc in terms of the incomplete gamma function).
    let tail = 0.5 * gamma_q(0.5, 0.5 * x * x);
    if x <= 0.0 {
        tail
    } else {
        1.0 - tail
    }
}

/// The standard normal quantile Φ⁻¹(p), `p ∈ (0, 1)` (`±∞` at 0 and 1).
pub fn normal_ppf(p: f64) -> f64 {
    if p.is_nan() || !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    if p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p == 1.0 {
        return f64::INFINITY;
    }
    if p == 0.5 {
        return 0.0;
    }
    if p > 0.5 {
        // 1 − p is exact for p ≥ 1/2 (Sterbenz), and Φ has full relative precision in the
        // lower tail.
        return -normal_ppf(1.0 - p);
    }
    bisect(normal_cdf, p, -40.0, 0.0)
}

// ---- bounds on a measured share, as the assertions use them ----------------------------------

/// One-sided lower confidence bound of the proportion `k / n` at level `confidence`
/// (Clopper–Pearson; 0 when `n = 0`).
pub fn lower_bound(k: usize, n: usize, confidence: f64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    clopper_pearson_lower(k as u64, n as u64, 1.0 - confidence)
}

/// One-sided upper confidence bound of the proportion `k / n` at level `confidence`
/// (Clopper–Pearson; 1 when `n = 0`).
pub fn upper_bound(k: usize, n: usize, confidence: f64) -> f64 {
    if n == 0 {
        return 1.0;
    }
    clopper_pearson_upper(k as u64, n as u64, 1.0 - confidence)
}

/// The two-sided `confidence` interval of `k / n` (Clopper–Pearson), as reports show it.
pub fn interval(k: usize, n: usize, confidence: f64) -> (f64, f64) {
    let tail = 0.5 + 0.5 * confidence;
    (lower_bound(k, n, tail), upper_bound(k, n, tail))
}

/// `0.95` → `95 %`.
pub(crate) fn level(confidence: f64) -> String {
    format!("{} %", (1e6 * 100.0 * confidence).round() / 1e6)
}

/// `  [93.10 %, 96.20 %] at 95 %`, or nothing without a confidence level.
pub(crate) fn interval_note(k: usize, n: usize, confidence: Option<f64>) -> String {
    match confidence {
        Some(c) => {
            let (lo, hi) = interval(k, n, c);
            format!("  [{}, {}] at {}", percent(lo), percent(hi), level(c))
        }
        None => String::new(),
    }
}

/// `0.9310` → `93.10 %`.
fn percent(v: f64) -> String {
    format!("{:.2} %", 100.0 * v)
}

#[cfg(test)]
mod should {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-300)
    }

    #[test]
    fn know_textbook_values() {
        assert!(close(ln_gamma(0.5), 0.572_364_942_924_700_1, 1e-14));
        assert!(close(ln_gamma(10.0), 362_880f64.ln(), 1e-14));
        assert!(close(normal_cdf(1.959_963_984_540_054), 0.975, 1e-14));
        assert!(close(normal_ppf(0.975), 1.959_963_984_540_054, 1e-13));
        assert!(close(normal_ppf(0.025), -1.959_963_984_540_054, 1e-13));
        assert_eq!(normal_ppf(0.5), 0.0);
        // I_x(1, 1) = x; I_x(2, 1) = x².
        assert!(close(beta_inc(1.0, 1.0, 0.3), 0.3, 1e-14));
        assert!(close(beta_inc(2.0, 1.0, 0.3), 0.09, 1e-14));
    }

    #[test]
    fn bound_the_proportion_like_clopper_and_pearson() {
        // k = n: the lower bound solves p^n = alpha.
        let lb = clopper_pearson_lower(100, 100, 0.001);
        assert!(close(lb, 0.001f64.powf(1.0 / 100.0), 1e-12), "{lb}");
        assert_eq!(clopper_pearson_lower(0, 10, 0.05), 0.0);
        assert_eq!(clopper_pearson_upper(10, 10, 0.05), 1.0);
        // k = 0: the upper bound solves (1 − p)^n = alpha.
        let ub = clopper_pearson_upper(0, 50, 0.05);
        assert!(close(ub, 1.0 - 0.05f64.powf(1.0 / 50.0), 1e-12), "{ub}");
    }

    #[test]
    fn test_binomials_two_sided() {
        assert_eq!(binomial_test_half(5, 10), 1.0);
        // P(X ≤ 0) = 2^-10, two-sided doubles it.
        assert!(close(binomial_test_half(0, 10), 2.0 / 1024.0, 1e-12));
        assert!(close(binomial_test_half(10, 10), 2.0 / 1024.0, 1e-12));
    }
}
