//! `#[robustness_test]` as a user writes it, on the committed fixtures.
//!
//! `cargo test --test robustness_tests -- --list` shows the generated tests:
//! `mnist_mlp::fgsm_eps_0_02`, `mnist_mlp::pgd_eps_0_05`, `mnist_cnn::pgd_eps_0_05`, …

mod common;

use robust_runtime::eval::TestSpec;
use robust_runtime::prelude::*;

/// The MLP keeps ≥ 30 % of the first 200 test digits at ε = 0.05 (torchattacks: FGSM 49.7 %
/// on 1,000 digits, PGD about 42 %), asserted on the 95 % lower confidence bound, and stays
/// within 1 pp of its committed baseline (`robust-baselines/robustness_tests__mnist_mlp__*.json`).
#[robustness_test(
    attack = ["fgsm", "pgd"],
    eps = [0.02, 0.05],
    min_acc = 0.3,
    samples = 200,
    steps = 10,
    confidence = 0.95,
    baseline = true
)]
fn mnist_mlp() -> robust_runtime::Result<RobustnessCase> {
    Ok(RobustnessCase::from_model(
        common::mlp()?,
        Dataset::mnist_sample()?.test_split(),
    ))
}

/// The CNN is far more robust at ε = 0.05 (torchattacks FGSM: 94.2 % on 500 digits).
#[robustness_test(
    attack = "pgd",
    eps = 0.05,
    min_acc = 0.85,
    max_drop = 0.1,
    samples = 60,
    steps = 10,
    seed = 3
)]
fn mnist_cnn() -> robust_runtime::Result<RobustnessCase> {
    let model = zoo::MnistCnn::load(common::CNN, &robust_runtime::device::current())?;
    Ok(RobustnessCase::new(model, Dataset::mnist_sample()?.test_split()).named("mnist_cnn"))
}

/// L2 and the CW loss through the macro: ε = 0.5 in L2 is a small budget for MNIST.
#[robustness_test(
    attack = "pgd",
    norm = "l2",
    eps = 0.5,
    loss = "cw",
    restarts = 2,
    min_acc = 0.5,
    samples = 100,
    steps = 10
)]
fn mnist_mlp_l2() -> robust_runtime::Result<RobustnessCase> {
    Ok(RobustnessCase::from_model(
        common::mlp()?,
        Dataset::mnist_sample()?.test_split(),
    ))
}

/// The failure path: no MNIST model without adversarial training survives ε = 0.3.
#[robustness_test(attack = "pgd", eps = 0.3, min_acc = 0.5, samples = 50, steps = 10)]
#[should_panic(expected = "robust accuracy 0.00 % ≥ min_acc 50.00 % does not hold")]
fn mnist_mlp_at_large_eps() -> robust_runtime::Result<RobustnessCase> {
    Ok(RobustnessCase::from_model(
        common::mlp()?,
        Dataset::mnist_sample()?.test_split(),
    ))
}

/// What the developer reads when a robustness test fails.
#[test]
fn a_failing_test_reports_what_was_measured_and_asserted() {
    let spec = TestSpec::new("suite::mnist_mlp::pgd_eps_0_1", "pgd", 0.1)
        .min_acc(0.6)
        .max_drop(0.95)
        .samples(100)
        .steps(10);
    let report = spec
        .run(|| {
            Ok(RobustnessCase::from_model(
                common::mlp()?,
                common::test_digits(100)?,
            ))
        })
        .expect("the test runs: missing the threshold is its outcome, not an error");
    let message = spec.failure(&report).expect("the threshold does not hold");
    println!("{message}");
    assert!(
        message
            .starts_with("robustness test `suite::mnist_mlp::pgd_eps_0_1` failed: robust accuracy"),
        "{message}"
    );
    for line in [
        "mnist_mlp under PGD-L∞ (ε = 0.1, 10 steps of α = 0.0250, random start, 1 restart, CE loss)",
        "samples            100",
        &format!("clean accuracy      {:.2} %  ({}/100)", 100.0 * report.clean_accuracy, report.clean_correct),
        &format!("robust accuracy     {:.2} %  ({}/100)", 100.0 * report.robust_accuracy, report.robust_correct),
        "correctly classified samples misclassified",
        "perturbation L∞    mean 0.1000  max 0.1000",
        &format!("✗ robust accuracy {:.2} % ≥ min_acc 60.00 %", 100.0 * report.robust_accuracy),
        "✓ clean − robust accuracy",
    ] {
        // The table pads its columns; compare with runs of spaces collapsed.
        let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(squash(&message).contains(&squash(line)), "missing {line:?} in\n{message}");
    }
    assert!(report.robust_accuracy < 0.1 && report.clean_accuracy > 0.9);
    assert_eq!(report.checks.len(), 2);
    assert!(!report.checks[0].passed && report.checks[1].passed);
}

#[test]
fn the_seed_of_the_spec_is_the_seed_of_the_report() {
    // (ROBUST_SEED is read only when a spec has no seed; it is not set here, because changing the
    // environment of a multi-threaded test binary races with the other tests.)
    let spec = TestSpec::new("t", "fgsm", 0.1)
        .min_acc(0.0)
        .samples(10)
        .seed(42);
    let report = spec
        .run(|| {
            Ok(RobustnessCase::from_model(
                common::mlp()?,
                common::test_digits(10)?,
            ))
        })
        .unwrap();
    assert_eq!(report.seed, 42);
}
