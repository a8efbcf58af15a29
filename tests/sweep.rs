//! ε-sweeps read off one run of a minimal-perturbation attack, checked against an exact answer.

use candle_core::Tensor;
use robust_runtime::attack::{Attack, AttackBatch, Norm, ThreatModel};
use robust_runtime::eval::{evaluate, RunConfig};
use robust_runtime::prelude::*;

/// The exact minimal L∞ attack on the two-class model z = (x₀ − x₁, x₁ − x₀): a sample with
/// margin m = |x₀ − x₁| flips once both coordinates move by m/2, so (m/2 + 0.001) suffices.
struct ExactLinf {
    eps: f64,
    calls: std::cell::Cell<usize>,
}

impl Attack for ExactLinf {
    fn id(&self) -> &'static str {
        "exact"
    }
    fn describe(&self) -> String {
        format!("exact minimal L∞ (ε = {})", self.eps)
    }
    fn threat(&self) -> ThreatModel {
        ThreatModel::new(Norm::Linf, self.eps).unwrap()
    }
    fn perturb(
        &self,
        _: &Model,
        _: &AttackBatch<'_>,
        _: &mut Rng,
    ) -> robust_runtime::Result<Tensor> {
        panic!("evaluation must use the minimal perturbation, not perturb")
    }
    fn minimal_perturbation(
        &self,
        _: &Model,
        batch: &AttackBatch<'_>,
        _: &mut Rng,
    ) -> robust_runtime::Result<Option<Tensor>> {
        self.calls.set(self.calls.get() + 1);
        let x = batch.inputs.to_vec2::<f32>()?;
        let moved: Vec<Vec<f32>> = x
            .iter()
            .map(|r| {
                let step = (r[0] - r[1]).abs() / 2.0 + 0.001;
                let sign = if r[0] > r[1] { 1.0 } else { -1.0 };
                vec![r[0] - sign * step, r[1] + sign * step]
            })
            .collect();
        Ok(Some(Tensor::new(moved, batch.inputs.device())?))
    }
}

#[test]
fn the_curve_comes_from_one_run_and_matches_the_exact_minimal_norms() -> robust_runtime::Result<()>
{
    let w = Tensor::new(&[[1.0f32, -1.0], [-1.0, 1.0]], &Device::Cpu)?;
    let model = Model::new(move |x: &Tensor| x.matmul(&w));
    // Margins 0.1, 0.2, 0.3, 0.4, all of class 0; minimal L∞ norms 0.051, 0.101, 0.151, 0.201.
    let x = Tensor::new(
        &[[0.55f32, 0.45], [0.6, 0.4], [0.65, 0.35], [0.7, 0.3]],
        &Device::Cpu,
    )?;
    let case = RobustnessCase::from_model(model, Dataset::new(x, vec![0; 4])?);
    let attack = ExactLinf {
        eps: 0.12,
        calls: Default::default(),
    };
    let cfg = RunConfig {
        sweep: vec![0.05, 0.1, 0.15, 0.2, 0.25],
        ..RunConfig::default()
    };
    let report = evaluate(&case, &attack, &cfg)?;
    assert_eq!(attack.calls.get(), 1, "one run for the whole sweep");
    let curve: Vec<(f64, usize)> = report
        .curve
        .iter()
        .map(|p| (p.eps, p.robust_correct))
        .collect();
    assert_eq!(
        curve,
        vec![
            (0.05, 4),
            (0.1, 3),
            (0.12, 2),
            (0.15, 2),
            (0.2, 1),
            (0.25, 0)
        ]
    );
    // At the run's own ε (0.12) the two samples with minimal norm ≤ 0.12 are broken, inside the ball.
    assert_eq!(report.robust_correct, 2);
    assert!(report.perturbation.max_linf <= 0.12);
    let broken: Vec<f32> = report
        .per_sample
        .iter()
        .filter(|s| !s.is_robust())
        .map(|s| s.linf)
        .collect();
    assert!(
        broken
            .iter()
            .all(|&n| (n - 0.051).abs() < 1e-4 || (n - 0.101).abs() < 1e-4),
        "{broken:?}"
    );
    Ok(())
}

/// DeepFool runs once for the three ε of this attribute; each generated test reads its ε off
/// the shared run (checked below through `TestSpec`, which the macro expands to).
#[robustness_test(attack = "deepfool", norm = "l2", eps = [0.5, 1.0, 1.5], max_drop = 1.0, samples = 60)]
fn mnist_mlp() -> robust_runtime::Result<RobustnessCase> {
    Ok(RobustnessCase::from_model(
        Model::new(zoo::MnistMlp::load(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/mnist_mlp.safetensors"
            ),
            &Device::Cpu,
        )?),
        Dataset::mnist_sample()?.test_split(),
    ))
}

#[test]
fn the_tests_of_one_attribute_share_one_minimal_run() -> robust_runtime::Result<()> {
    use robust_runtime::eval::TestSpec;
    const SWEEP: &[f64] = &[0.5, 1.0, 1.5];
    let build = || {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/mnist_mlp.safetensors"
        );
        Ok(RobustnessCase::from_model(
            Model::new(zoo::MnistMlp::load(path, &Device::Cpu)?),
            Dataset::mnist_sample()?.test_split(),
        ))
    };
    let spec = |name: &'static str, eps: f64| {
        TestSpec::new(name, "deepfool", eps)
            .norm("l2")
            .max_drop(1.0)
            .samples(60)
            .sweep(SWEEP)
            .masking_checks("off")
    };
    let first = spec("shared::group::deepfool_eps_1", 1.0).run(build)?;
    let second = spec("shared::group::deepfool_eps_0_5", 0.5).run(build)?;
    let third = spec("shared::group::deepfool_eps_1_5", 1.5).run(build)?;
    assert!(first.seconds > 0.0);
    assert_eq!(
        (second.seconds, third.seconds),
        (0.0, 0.0),
        "the later tests must reuse the first run"
    );
    let points: Vec<(f64, usize)> = first
        .curve
        .iter()
        .map(|p| (p.eps, p.robust_correct))
        .collect();
    assert_eq!(points.len(), 3);
    assert_eq!(points[0], (0.5, second.robust_correct));
    assert_eq!(points[1], (1.0, first.robust_correct));
    assert_eq!(points[2], (1.5, third.robust_correct));
    // More budget, fewer robust samples; DeepFool breaks nearly everything by L2 = 1.5.
    assert!(
        second.robust_correct > first.robust_correct && first.robust_correct > third.robust_correct,
        "{points:?}"
    );
    assert!(second.perturbation.max_l2 <= 0.5 + 1e-5 && third.perturbation.max_l2 <= 1.5 + 1e-5);
    Ok(())
}
