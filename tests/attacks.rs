//! Properties every attack must have, checked on the committed MNIST fixtures.

mod common;

use candle_core::{Module, Tensor};
use robust_runtime::attack::{
    self, Attack, AttackBatch, AttackParams, Fgsm, FgsmConfig, Loss, Norm, Pgd, PgdConfig,
    Targeting,
};
use robust_runtime::eval::{evaluate, RobustnessReport, RunConfig};
use robust_runtime::prelude::*;

type R<T = ()> = robust_runtime::Result<T>;

fn run(model: Model, attack: &dyn Attack, samples: usize, cfg: RunConfig) -> R<RobustnessReport> {
    let case = RobustnessCase::from_model(model, Dataset::mnist_sample()?.test_split());
    evaluate(
        &case,
        attack,
        &RunConfig {
            samples: Some(samples),
            ..cfg
        },
    )
}

fn pgd(eps: f64, norm: Norm) -> PgdConfig {
    PgdConfig {
        eps,
        norm,
        steps: 10,
        ..PgdConfig::default()
    }
}

#[test]
fn perturbations_stay_inside_the_ball_and_the_domain() -> R {
    let data = common::test_digits(100)?;
    let labels = Tensor::from_slice(data.labels(), data.len(), &Device::Cpu)?;
    let attacks: Vec<Box<dyn Attack>> = vec![
        Box::new(Fgsm::new(FgsmConfig {
            eps: 0.1,
            ..FgsmConfig::default()
        })?),
        Box::new(Fgsm::new(FgsmConfig {
            eps: 1.5,
            norm: Norm::L2,
            ..FgsmConfig::default()
        })?),
        Box::new(Pgd::new(pgd(0.1, Norm::Linf))?),
        Box::new(Pgd::new(PgdConfig {
            restarts: 2,
            loss: Loss::CwMargin,
            ..pgd(0.07, Norm::Linf)
        })?),
        Box::new(Pgd::new(pgd(1.5, Norm::L2))?),
        Box::new(Pgd::new(PgdConfig {
            restarts: 2,
            ..pgd(2.0, Norm::L2)
        })?),
    ];
    // The default [0, 1] box and a narrower one, which most pixels (0 or 1) start outside of.
    for domain in [InputDomain::default(), InputDomain::new(0.2, 0.8)?] {
        let model = common::mlp()?.with_domain(domain);
        let x = domain.clamp(data.inputs())?;
        for attack in &attacks {
            let eps = attack.threat().eps;
            let batch = AttackBatch::untargeted(&x, &labels, 10);
            let adv = attack.perturb(&model, &batch, &mut Rng::seed_from_u64(1))?;
            let what = format!(
                "{} in [{}, {}]",
                attack.describe(),
                domain.lo(),
                domain.hi()
            );
            let norms =
                common::assert_in_ball_and_domain(&adv, &x, attack.threat(), domain, &what)?;
            let mean = norms.iter().map(|&v| v as f64).sum::<f64>() / norms.len() as f64;
            assert!(
                mean > 0.3 * eps,
                "{what}: mean perturbation {mean} — the attack barely moved"
            );
        }
    }
    Ok(())
}

#[test]
fn pgd_is_at_least_as_strong_as_fgsm_and_robust_never_exceeds_clean() -> R {
    for (model, samples) in [(common::mlp()?, 300), (common::cnn()?, 60)] {
        let name = model.name().to_string();
        let model_again = if name == "mnist_mlp" {
            common::mlp()?
        } else {
            common::cnn()?
        };
        let fgsm = run(
            model,
            &Fgsm::new(FgsmConfig {
                eps: 0.1,
                ..FgsmConfig::default()
            })?,
            samples,
            RunConfig::default(),
        )?;
        let pgd = run(
            model_again,
            &Pgd::new(pgd(0.1, Norm::Linf))?,
            samples,
            RunConfig::default(),
        )?;
        println!(
            "{name}: clean {} FGSM {} PGD {}",
            fgsm.clean_accuracy, fgsm.robust_accuracy, pgd.robust_accuracy
        );
        assert!(
            pgd.robust_accuracy <= fgsm.robust_accuracy,
            "{name}: PGD weaker than FGSM"
        );
        assert!(
            fgsm.robust_accuracy <= fgsm.clean_accuracy
                && pgd.robust_accuracy <= pgd.clean_accuracy
        );
        assert!(
            fgsm.clean_accuracy > 0.9,
            "{name}: clean accuracy {}",
            fgsm.clean_accuracy
        );
        // Every sample PGD leaves robust is robust clean too.
        assert!(pgd
            .per_sample
            .iter()
            .all(|s| !s.is_robust() || s.is_clean_correct()));
    }
    // On the MLP the gap is large (torchattacks: FGSM 12.5 %, PGD-20 4.5 % on 1,000 digits).
    let fgsm = run(
        common::mlp()?,
        &Fgsm::new(FgsmConfig {
            eps: 0.1,
            ..FgsmConfig::default()
        })?,
        300,
        RunConfig::default(),
    )?;
    let pgd = run(
        common::mlp()?,
        &Pgd::new(pgd(0.1, Norm::Linf))?,
        300,
        RunConfig::default(),
    )?;
    assert!(
        pgd.robust_accuracy + 0.04 <= fgsm.robust_accuracy,
        "PGD {} vs FGSM {}",
        pgd.robust_accuracy,
        fgsm.robust_accuracy
    );
    Ok(())
}

#[test]
fn the_same_seed_gives_the_same_report_bit_for_bit() -> R {
    let attack = Pgd::new(PgdConfig {
        restarts: 2,
        ..pgd(0.08, Norm::Linf)
    })?;
    let report = |seed| -> R<String> {
        let mut r = run(
            common::mlp()?,
            &attack,
            150,
            RunConfig {
                seed,
                batch_size: 64,
                ..RunConfig::default()
            },
        )?;
        r.seconds = 0.0;
        Ok(serde_json::to_string(&r).expect("report serialises"))
    };
    let (a, b, c) = (report(7)?, report(7)?, report(8)?);
    assert_eq!(a, b, "two runs with seed 7 differ");
    assert_ne!(
        a, c,
        "seed 8 gave the same perturbations as seed 7: the random start ignores the seed"
    );
    Ok(())
}

#[test]
fn targeted_pgd_reaches_its_target_far_above_chance() -> R {
    let cfg = RunConfig {
        targeting: Targeting::Random,
        ..RunConfig::default()
    };
    let report = run(common::mlp()?, &Pgd::new(pgd(0.2, Norm::Linf))?, 200, cfg)?;
    assert!(report.targeted);
    assert!(report
        .per_sample
        .iter()
        .all(|s| s.target.is_some_and(|t| t != s.label && t < 10)));
    // Chance is 1 in 10; the untrained direction would rarely land on a given class.
    assert!(
        report.success_rate > 0.8,
        "targeted success {}",
        report.success_rate
    );
    let hits = report
        .per_sample
        .iter()
        .filter(|s| s.is_clean_correct() && Some(s.adv_pred) == s.target)
        .count();
    assert_eq!(hits, report.successes);
    Ok(())
}

#[test]
fn restarts_keep_the_worst_case_per_sample() -> R {
    // A weak attack (2 steps from a random start), where the start matters.
    let weak = PgdConfig {
        steps: 2,
        ..pgd(0.08, Norm::Linf)
    };
    let one = run(common::mlp()?, &Pgd::new(weak)?, 200, RunConfig::default())?;
    let three = run(
        common::mlp()?,
        &Pgd::new(PgdConfig {
            restarts: 5,
            ..weak
        })?,
        200,
        RunConfig::default(),
    )?;
    // The first restart draws the same start as the single run, so every sample broken once is
    // broken again, and the others get four more chances.
    for (a, b) in one.per_sample.iter().zip(&three.per_sample) {
        assert!(
            a.is_robust() || !b.is_robust(),
            "a sample broken by 1 restart survived 3: {a:?} {b:?}"
        );
    }
    println!(
        "robust after 1 restart {}, after 5 {}",
        one.robust_correct, three.robust_correct
    );
    assert!(
        three.robust_correct < one.robust_correct,
        "5 restarts {} vs 1 restart {}",
        three.robust_correct,
        one.robust_correct
    );
    Ok(())
}

#[test]
fn the_cw_margin_loss_breaks_the_mlp_like_cross_entropy() -> R {
    let ce = run(
        common::mlp()?,
        &Pgd::new(pgd(0.1, Norm::Linf))?,
        200,
        RunConfig::default(),
    )?;
    let cw = run(
        common::mlp()?,
        &Pgd::new(PgdConfig {
            loss: Loss::CwMargin,
            ..pgd(0.1, Norm::Linf)
        })?,
        200,
        RunConfig::default(),
    )?;
    assert!(
        cw.robust_accuracy < 0.1 && (cw.robust_accuracy - ce.robust_accuracy).abs() < 0.05,
        "CW {} CE {}",
        cw.robust_accuracy,
        ce.robust_accuracy
    );
    Ok(())
}

#[test]
fn normalisation_inside_the_model_keeps_eps_in_input_units() -> R {
    // The MLP behind a de-normalising layer, with the matching normalisation in the model: the same
    // function of the input. Robustness at ε (input units) must not change; an attack that took ε
    // in normalised units would be 1/0.3081 ≈ 3.2 times stronger here.
    let (mean, std) = (0.1307f32, 0.3081f32);
    let mlp = zoo::MnistMlp::load(common::MLP, &Device::Cpu)?;
    let wrapped = Model::new(move |x: &Tensor| mlp.forward(&x.affine(std as f64, mean as f64)?))
        .with_normalize(Normalize::new(vec![mean], vec![std])?)
        .named("normalised mnist_mlp");
    let attack = Pgd::new(PgdConfig {
        random_start: false,
        ..pgd(0.05, Norm::Linf)
    })?;
    let plain = run(common::mlp()?, &attack, 300, RunConfig::default())?;
    let normalised = run(wrapped, &attack, 300, RunConfig::default())?;
    assert!(
        (plain.robust_accuracy - normalised.robust_accuracy).abs() <= 0.01,
        "{plain}\n{normalised}"
    );
    assert!(normalised.perturbation.max_linf <= 0.05 + 1e-6);
    Ok(())
}

#[test]
fn l2_pgd_uses_its_budget_and_breaks_the_mlp() -> R {
    let attack = attack::build(
        "pgd",
        1.5,
        &AttackParams {
            norm: Norm::L2,
            steps: Some(20),
            ..AttackParams::default()
        },
    )?;
    let report = run(common::mlp()?, attack.as_ref(), 200, RunConfig::default())?;
    assert!(report.robust_accuracy < 0.15, "{report}");
    assert!(
        report.perturbation.max_l2 <= 1.5 + 1e-5 && report.perturbation.mean_l2 > 1.0,
        "{report}"
    );
    Ok(())
}
