//! Gradient-masking diagnostics: deliberately masked models trip them, the plain fixtures do not.

mod common;

use candle_core::{Module, Tensor};
use robust_runtime::attack::{Norm, ThreatModel};
use robust_runtime::eval::masking::diagnose;
use robust_runtime::eval::RunConfig;
use robust_runtime::prelude::*;

type R<T = ()> = robust_runtime::Result<T>;

fn checks(model: Model, eps: f64) -> R<Vec<String>> {
    let case = RobustnessCase::from_model(model, common::test_digits(50)?);
    let symptoms = diagnose(
        &case,
        ThreatModel::new(Norm::Linf, eps)?,
        &RunConfig::default(),
    )?;
    for s in &symptoms {
        println!("{}: {} — {}", s.check, s.found, s.advice);
    }
    Ok(symptoms.into_iter().map(|s| s.check).collect())
}

/// The MLP behind a hard 4-level quantisation of its input: zero gradients everywhere.
fn quantised_mlp() -> R<Model> {
    let mlp = zoo::MnistMlp::load(common::MLP, &Device::Cpu)?;
    Ok(
        Model::new(move |x: &Tensor| mlp.forward(&x.affine(4.0, 0.0)?.round()?.affine(0.25, 0.0)?))
            .named("quantised mlp"),
    )
}

#[test]
fn the_plain_fixtures_show_no_masking() -> R {
    assert_eq!(checks(common::mlp()?, 0.05)?, Vec::<String>::new());
    assert_eq!(checks(common::cnn()?, 0.1)?, Vec::<String>::new());
    Ok(())
}

#[test]
fn quantisation_in_front_of_the_model_kills_the_gradients() -> R {
    let found = checks(quantised_mlp()?, 0.05)?;
    assert!(found.contains(&"dead gradients".to_string()), "{found:?}");
    Ok(())
}

#[test]
fn logits_scaled_by_a_million_saturate_the_softmax() -> R {
    let mlp = zoo::MnistMlp::load(common::MLP, &Device::Cpu)?;
    let scaled = Model::new(move |x: &Tensor| mlp.forward(x)? * 1e6);
    let found = checks(scaled, 0.05)?;
    assert!(found.contains(&"dead gradients".to_string()), "{found:?}");
    Ok(())
}

#[test]
fn a_random_forward_pass_is_flagged() -> R {
    // Noise from candle's unseeded RNG: a randomised "defence" that needs EOT.
    let mlp = zoo::MnistMlp::load(common::MLP, &Device::Cpu)?;
    let noisy = Model::new(move |x: &Tensor| mlp.forward(&(x + x.randn_like(0.0, 0.3)?)?));
    let found = checks(noisy, 0.05)?;
    assert!(
        found.contains(&"non-deterministic forward pass".to_string()),
        "{found:?}"
    );
    Ok(())
}

/// Plain PGD cannot move the quantised model, so it looks robust at ε = 0.1 (the plain MLP keeps
/// about 4 %): the diagnostics turn that false pass into a failure.
#[robustness_test(attack = "pgd", eps = 0.1, min_acc = 0.5, samples = 50, steps = 10)]
#[should_panic(expected = "is not trustworthy: its gradients look masked")]
fn quantised() -> robust_runtime::Result<RobustnessCase> {
    Ok(RobustnessCase::from_model(
        quantised_mlp()?,
        Dataset::mnist_sample()?.test_split(),
    ))
}

/// With `masking_checks = "warn"` the same test passes on its threshold, symptoms in the report.
#[robustness_test(
    attack = "pgd",
    eps = 0.1,
    min_acc = 0.5,
    samples = 50,
    steps = 10,
    masking_checks = "warn"
)]
fn quantised_warned() -> robust_runtime::Result<RobustnessCase> {
    Ok(RobustnessCase::from_model(
        quantised_mlp()?,
        Dataset::mnist_sample()?.test_split(),
    ))
}

#[test]
fn a_black_box_attack_beating_the_gradient_attacks_is_flagged() -> R {
    // The quantised MLP: APGD gets zero gradients, Square only needs the outputs.
    let spec =
        robust_runtime::eval::TestSpec::new("masking::quantised::autoattack", "autoattack", 0.2)
            .min_acc(0.0)
            .samples(50)
            .steps(10)
            .target_classes(2)
            .queries(300)
            .masking_checks("warn");
    let report = spec.run(|| {
        Ok(RobustnessCase::from_model(
            quantised_mlp()?,
            Dataset::mnist_sample()?.test_split(),
        ))
    })?;
    println!("{report}");
    let found: Vec<&str> = report.masking.iter().map(|s| s.check.as_str()).collect();
    assert!(
        found.contains(&"black-box attack beats the white-box attacks"),
        "{found:?}"
    );
    // The plain MLP under the same cascade: Square finds nothing the gradient attacks missed.
    let spec =
        robust_runtime::eval::TestSpec::new("masking::plain::autoattack", "autoattack", 0.05)
            .min_acc(0.0)
            .samples(50)
            .steps(20)
            .target_classes(2)
            .queries(300)
            .masking_checks("warn");
    let report = spec.run(|| {
        Ok(RobustnessCase::from_model(
            common::mlp()?,
            Dataset::mnist_sample()?.test_split(),
        ))
    })?;
    assert!(report.masking.is_empty(), "{:?}", report.masking);
    Ok(())
}
