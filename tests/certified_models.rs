//! The committed certified-trained models are certifiably robust, and the plain ones are not:
//! the numbers a wrong certifier or a broken training loop would get wrong.

mod common;

use robust_runtime::certify::{self, Method, Smoothing};
use robust_runtime::prelude::*;
use robust_runtime::robustness_test;

#[test]
fn the_ibp_trained_cnn_is_certified_at_eps_0_1_and_pgd_breaks_none_of_its_certificates(
) -> robust_runtime::Result<()> {
    let data = common::test_digits(50)?;
    let case = RobustnessCase::new(common::ibp_net()?, data.clone()).named("mnist_ibp");
    let ibp = certify::bound_case(&case, Method::Ibp, 0.1, 100)?;
    let crown = certify::bound_case(&case, Method::Crown, 0.1, 100)?;
    println!("{ibp}\n{crown}");
    assert!(ibp.clean_accuracy >= 0.93, "{ibp}");
    assert!(ibp.certified_accuracy >= 0.85, "{ibp}");
    assert!(
        crown.certified_accuracy >= ibp.certified_accuracy,
        "{crown}"
    );
    for (i, c) in ibp.per_sample.iter().zip(&crown.per_sample) {
        assert!(
            !i.certified || c.certified,
            "sample {}: IBP certifies, CROWN not",
            i.index
        );
    }

    let certified: Vec<usize> = crown
        .per_sample
        .iter()
        .filter(|s| s.certified)
        .map(|s| s.index)
        .collect();
    common::assert_pgd_breaks_none(case.model(), &data, &certified, 0.1)?;
    Ok(())
}

#[test]
fn the_plain_cnn_certifies_almost_nothing_at_eps_0_1() -> robust_runtime::Result<()> {
    let case =
        RobustnessCase::new(common::cnn_net()?, common::test_digits(100)?).named("mnist_cnn");
    let report = certify::bound_case(&case, Method::Ibp, 0.1, 50)?;
    assert!(report.clean_accuracy >= 0.95, "{report}");
    assert!(report.certified_accuracy <= 0.05, "{report}");
    Ok(())
}

#[test]
fn the_noise_trained_cnn_is_certified_by_smoothing() -> robust_runtime::Result<()> {
    let case =
        RobustnessCase::new(common::noise_net()?, common::test_digits(20)?).named("mnist_noise");
    let smoothing = Smoothing {
        n: 2_000,
        ..Smoothing::new(0.25)
    };
    let report =
        certify::smoothing_case(&case, &smoothing, 0.5, &[0.25, 0.5, 0.75], 0, &Device::Cpu)?;
    println!("{report}");
    assert!(report.certified_accuracy >= 0.6, "{report}");
    // With n = 2,000 and α = 0.001 the largest certifiable radius is σ·Φ⁻¹(0.001^(1/2000)) ≈ 0.70.
    let max = report
        .per_sample
        .iter()
        .filter_map(|s| s.radius)
        .fold(0.0, f64::max);
    assert!(max <= 0.25 * certify::stats::normal_ppf(0.001f64.powf(1.0 / 2000.0)) + 1e-12);
    // Same seed, same certificates.
    let again =
        certify::smoothing_case(&case, &smoothing, 0.5, &[0.25, 0.5, 0.75], 0, &Device::Cpu)?;
    assert_eq!(report.per_sample, again.per_sample);
    Ok(())
}

// The same claims as ordinary generated tests: one per certifier × radius.

#[robustness_test(certify = ["ibp", "crown"], eps = [0.05, 0.1], min_certified_acc = 0.85, samples = 100)]
fn mnist_ibp() -> robust_runtime::Result<RobustnessCase> {
    Ok(RobustnessCase::new(common::ibp_net()?, common::test_digits(100)?).named("mnist_ibp"))
}

#[robustness_test(
    certify = "smoothing",
    sigma = 0.25,
    radius = [0.25, 0.5],
    n = 1000,
    min_certified_acc = 0.8,
    samples = 20
)]
fn mnist_noise() -> robust_runtime::Result<RobustnessCase> {
    Ok(RobustnessCase::new(common::noise_net()?, common::test_digits(20)?).named("mnist_noise"))
}

/// A certification test fails when the certificate does not hold: the plain CNN is accurate but
/// not certifiably robust at ε = 0.1.
#[robustness_test(certify = "ibp", eps = 0.1, min_certified_acc = 0.5, samples = 50)]
#[should_panic(
    expected = "failed: certified accuracy 0.00% at L∞ 0.1 is below min_certified_acc = 50.00%"
)]
fn mnist_cnn_uncertified() -> robust_runtime::Result<RobustnessCase> {
    Ok(RobustnessCase::new(common::cnn_net()?, common::test_digits(50)?).named("mnist_cnn"))
}
