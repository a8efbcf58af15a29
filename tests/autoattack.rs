//! APGD, APGD-T and the AutoAttack-style cascade on the committed MNIST fixtures.

mod common;

use candle_core::Tensor;
use robust_runtime::attack::{
    Apgd, ApgdConfig, Attack, AttackParams, Ensemble, Fgsm, FgsmConfig, Loss, Norm, Version,
};
use robust_runtime::defense::{Preprocessed, Preprocessor};
use robust_runtime::eval::{evaluate, RobustnessReport, RunConfig};
use robust_runtime::prelude::*;
use robust_runtime::Error;

type R<T = ()> = robust_runtime::Result<T>;

fn run(attack: &dyn Attack, samples: usize) -> R<RobustnessReport> {
    let case = RobustnessCase::from_model(common::mlp()?, Dataset::mnist_sample()?.test_split());
    evaluate(
        &case,
        attack,
        &RunConfig {
            samples: Some(samples),
            ..RunConfig::default()
        },
    )
}

fn apgd(loss: Loss) -> ApgdConfig {
    ApgdConfig {
        eps: 0.05,
        loss,
        steps: 30,
        ..ApgdConfig::default()
    }
}

#[test]
fn apgd_is_at_least_as_strong_as_fgsm_and_stays_in_the_ball() -> R {
    let fgsm = run(
        &Fgsm::new(FgsmConfig {
            eps: 0.05,
            ..FgsmConfig::default()
        })?,
        200,
    )?;
    for attack in [
        Apgd::new(apgd(Loss::CrossEntropy))?,
        Apgd::new(apgd(Loss::Dlr))?,
        Apgd::targeted(apgd(Loss::Dlr), 3)?,
        Apgd::new(ApgdConfig {
            eps: 1.0,
            norm: Norm::L2,
            ..apgd(Loss::CrossEntropy)
        })?,
    ] {
        let report = run(&attack, 200)?;
        println!(
            "{}: robust {:.1} % (FGSM {:.1} %)",
            attack.describe(),
            100.0 * report.robust_accuracy,
            100.0 * fgsm.robust_accuracy
        );
        let eps = attack.threat().eps;
        let worst = match attack.threat().norm {
            Norm::Linf => report.perturbation.max_linf,
            _ => report.perturbation.max_l2,
        };
        assert!(
            worst <= eps * (1.0 + 1e-5) + 1e-6,
            "{}: perturbation {worst} > ε",
            attack.describe()
        );
        if attack.threat().norm == Norm::Linf {
            assert!(
                report.robust_accuracy <= fgsm.robust_accuracy,
                "{} weaker than FGSM",
                attack.describe()
            );
        }
        // Samples the attack did not break come back unchanged (the clean input), as in AutoAttack.
        for s in report.per_sample.iter().filter(|s| s.adv_pred == s.label) {
            assert_eq!(
                s.linf,
                0.0,
                "{}: an unbroken sample was perturbed",
                attack.describe()
            );
        }
    }
    Ok(())
}

#[test]
fn the_cascade_reports_each_stage_and_beats_each_member() -> R {
    let params = AttackParams {
        steps: Some(30),
        target_classes: Some(3),
        queries: Some(300),
        ..AttackParams::default()
    };
    let ensemble = Ensemble::autoattack(0.05, &params)?;
    let report = run(&ensemble, 200)?;
    println!("{report}");
    assert_eq!(report.stages.len(), 4, "APGD-CE, APGD-T, FAB-T, Square");
    assert!(report
        .stages
        .windows(2)
        .all(|w| w[0].robust_correct >= w[1].robust_correct));
    assert_eq!(report.stages[3].robust_correct, report.robust_correct);
    assert!(report.stages[0].robust_correct <= report.clean_correct);
    for member in ensemble.members() {
        let alone = run(member.as_ref(), 200)?;
        assert!(
            report.robust_correct <= alone.robust_correct,
            "cascade {} > {} alone ({})",
            report.robust_correct,
            member.describe(),
            alone.robust_correct
        );
    }
    Ok(())
}

#[test]
fn apgd_t_on_fewer_than_four_classes_is_a_clear_error() {
    // A 3-class linear model: targeted DLR needs the 4th-largest logit.
    let w = Tensor::new(&[[1.0f32, -1.0, 0.5], [-1.0, 1.0, 0.0]], &Device::Cpu).unwrap();
    let model = Model::new(move |x: &Tensor| x.matmul(&w));
    let data = Dataset::new(
        Tensor::new(&[[0.6f32, 0.4], [0.2, 0.9]], &Device::Cpu).unwrap(),
        vec![0, 1],
    )
    .unwrap();
    let case = RobustnessCase::from_model(model, data);
    let autoattack = Ensemble::autoattack(
        0.1,
        &AttackParams {
            target_classes: Some(2),
            ..AttackParams::default()
        },
    )
    .unwrap();
    let err = evaluate(&case, &autoattack, &RunConfig::default()).unwrap_err();
    assert!(
        matches!(err, Error::InvalidParameter { name: "loss", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("at least 4 classes"), "{err}");
}

#[test]
fn too_many_target_classes_is_a_clear_error() {
    let attack = Apgd::targeted(apgd(Loss::Dlr), 10).unwrap();
    let err = run(&attack, 10).unwrap_err();
    assert!(
        err.to_string()
            .contains("at most 9 (the model's classes minus one)"),
        "{err}"
    );
}

#[test]
fn autoattack_rejects_more_target_classes_than_the_model_has_like_apgd_t() -> R {
    // At ε = 0.5 APGD-CE alone breaks every digit, so APGD-T never ran and
    // `target_classes = 20` on 10 classes used to pass unnoticed.
    let ce = Apgd::new(ApgdConfig {
        eps: 0.5,
        steps: 5,
        ..apgd(Loss::CrossEntropy)
    })?;
    assert_eq!(run(&ce, 20)?.robust_correct, 0);
    let autoattack = Ensemble::autoattack(
        0.5,
        &AttackParams {
            target_classes: Some(20),
            steps: Some(5),
            queries: Some(10),
            ..AttackParams::default()
        },
    )?;
    let err = run(&autoattack, 20).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidParameter {
                name: "target_classes",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("invalid value for `target_classes`: 20; expected at most 9"),
        "{err}"
    );
    Ok(())
}

#[test]
fn apgd_rejects_bad_hyper_parameters() {
    for (cfg, key) in [
        (
            ApgdConfig {
                steps: 0,
                ..ApgdConfig::default()
            },
            "steps",
        ),
        (
            ApgdConfig {
                rho: 0.0,
                ..ApgdConfig::default()
            },
            "rho",
        ),
        (
            ApgdConfig {
                eps: f64::NAN,
                ..ApgdConfig::default()
            },
            "eps",
        ),
        (
            ApgdConfig {
                loss: Loss::CwMargin,
                ..ApgdConfig::default()
            },
            "loss",
        ),
    ] {
        let err = Apgd::new(cfg).unwrap_err();
        assert!(
            matches!(err, Error::InvalidParameter { name, .. } if name == key),
            "{key}: {err}"
        );
    }
}

/// The macro runs the cascade like any other attack.
#[robustness_test(attack = ["apgd", "autoattack"], eps = 0.02, min_acc = 0.6, samples = 100, steps = 20, target_classes = 3, queries = 100)]
fn mnist_mlp() -> robust_runtime::Result<RobustnessCase> {
    Ok(RobustnessCase::from_model(
        common::mlp()?,
        Dataset::mnist_sample()?.test_split(),
    ))
}

/// `version = "custom"`: the listed members, in the order written, each with the standard
/// version's settings; no member, or one AutoAttack does not have, is a typed error.
#[test]
fn a_custom_autoattack_runs_the_listed_members_in_order() -> R {
    let custom = |members: &[&str]| {
        Ensemble::autoattack(
            0.05,
            &AttackParams {
                version: Version::Custom,
                members: members.iter().map(|m| m.to_string()).collect(),
                steps: Some(20),
                ..AttackParams::default()
            },
        )
    };
    let ensemble = custom(&["fab", "apgd-dlr"])?;
    let ids: Vec<&str> = ensemble.members().iter().map(|m| m.id()).collect();
    assert_eq!(ids, ["fab", "apgd"]);
    let report = run(&ensemble, 100)?;
    println!("{report}");
    assert_eq!(report.stages.len(), 2);
    assert!(report.stages[0].attack.starts_with("FAB-L∞"), "{report}");
    assert!(report.stages[1].attack.contains("DLR loss"), "{report}");
    assert!(report.stages[1].robust_correct <= report.stages[0].robust_correct);
    for (members, says) in [
        (&[][..], "invalid value for `attacks`"),
        (
            &["apgd-ce", "deepfool"][..],
            "unknown AutoAttack member `deepfool`",
        ),
    ] {
        let err = custom(members).unwrap_err();
        assert!(err.to_string().contains(says), "{err}");
    }
    Ok(())
}

/// The attribute's custom version: `attacks` lists the members.
#[robustness_test(attack = "autoattack", version = "custom", attacks = ["apgd-ce", "fab-t"], eps = 0.02, min_acc = 0.6, samples = 50, steps = 10, target_classes = 2)]
fn mnist_mlp_custom() -> robust_runtime::Result<RobustnessCase> {
    Ok(RobustnessCase::from_model(
        common::mlp()?,
        Dataset::mnist_sample()?.test_split(),
    ))
}

/// The Gaussian-noise CNN behind fresh noise σ = 0.25 on every forward pass: a randomized
/// defence, which AutoAttack evaluates with its rand version.
fn noisy_cnn() -> robust_runtime::Result<Model> {
    Ok(Model::from(
        Preprocessed::new(
            vec![Preprocessor::GaussianNoise { sigma: 0.25 }],
            Model::new(common::noise_net()?),
        )?
        .with_seed(1),
    )
    .named("mnist_noise"))
}

/// On a randomized model the standard version's adaptive run is the rand version over 20 draws
/// (APGD-CE → APGD-DLR), as AutoAttack's authors ask; on a deterministic one there is no such run.
#[test]
fn a_randomized_model_gets_the_rand_version_over_20_draws() -> R {
    let params = AttackParams {
        steps: Some(5),
        target_classes: Some(2),
        queries: Some(50),
        ..AttackParams::default()
    };
    let standard = Ensemble::autoattack(0.1, &params)?;
    let case = RobustnessCase::from_model(noisy_cnn()?, common::test_digits(20)?);
    let report = evaluate(&case, &standard, &RunConfig::default())?;
    println!("{report}");
    let adaptive = report.adaptive.as_ref().expect("the EOT twin was attacked");
    assert!(
        adaptive
            .method
            .starts_with("EOT over 20 draws, autoattack cascade [APGD-L∞ (CE loss")
            && adaptive.method.contains("DLR loss")
            && !adaptive.method.contains("FAB"),
        "{}",
        adaptive.method
    );
    // The stages shown are the rand version's; the plain run was the standard version.
    assert_eq!(report.stages.len(), 2, "{report}");
    assert!(
        report.attack_description.contains("FAB-T"),
        "{}",
        report.attack_description
    );
    let plain = run(&standard, 20)?;
    assert!(plain.adaptive.is_none());
    Ok(())
}

/// The attribute's rand version on the randomized CNN.
#[robustness_test(
    attack = "autoattack",
    version = "rand",
    eps = 0.1,
    min_acc = 0.2,
    samples = 20,
    steps = 10
)]
fn mnist_noise() -> robust_runtime::Result<RobustnessCase> {
    Ok(RobustnessCase::from_model(
        noisy_cnn()?,
        common::test_digits(20)?,
    ))
}
