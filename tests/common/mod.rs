//! Shared by the integration tests: the committed fixtures and the MNIST test split.
#![allow(dead_code)]

use candle_core::Tensor;
use robust_runtime::attack::{Norm, ThreatModel};
use robust_runtime::prelude::*;

pub const MLP: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/mnist_mlp.safetensors"
);
pub const CNN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/mnist_cnn.safetensors"
);

/// The MLP fixture, on the device the running robustness test selected (the CPU elsewhere).
pub fn mlp() -> robust_runtime::Result<Model> {
    let dev = robust_runtime::device::current();
    Ok(Model::new(zoo::MnistMlp::load(MLP, &dev)?).named("mnist_mlp"))
}

/// The CNN fixture, on the device the running robustness test selected (the CPU elsewhere).
pub fn cnn() -> robust_runtime::Result<Model> {
    let dev = robust_runtime::device::current();
    Ok(Model::new(zoo::MnistCnn::load(CNN, &dev)?).named("mnist_cnn"))
}

/// The first `n` digits of the MNIST sample's test split.
pub fn test_digits(n: usize) -> robust_runtime::Result<Dataset> {
    Dataset::mnist_sample()?.test_split().take(n)
}

/// Per-sample norms of the perturbation `adv − x` in `norm`.
pub fn norms(adv: &Tensor, x: &Tensor, norm: Norm) -> robust_runtime::Result<Vec<f32>> {
    let d = (adv - x)?.flatten_from(1)?;
    Ok(match norm {
        Norm::Linf => d.abs()?.max(1)?,
        _ => d.sqr()?.sum(1)?.sqrt()?,
    }
    .to_vec1::<f32>()?)
}

/// Asserts that every sample of `adv` lies within `threat` of `x` and inside `domain`; returns
/// the per-sample perturbation norms for further checks.
pub fn assert_in_ball_and_domain(
    adv: &Tensor,
    x: &Tensor,
    threat: ThreatModel,
    domain: InputDomain,
    what: &str,
) -> robust_runtime::Result<Vec<f32>> {
    let norms = norms(adv, x, threat.norm)?;
    let worst = norms.iter().cloned().fold(0.0f32, f32::max) as f64;
    assert!(
        worst <= threat.eps * (1.0 + 1e-5) + 1e-6,
        "{what}: perturbation {worst} > ε"
    );
    let (lo, hi) = (
        adv.min_all()?.to_scalar::<f32>()?,
        adv.max_all()?.to_scalar::<f32>()?,
    );
    assert!(
        lo >= domain.lo() && hi <= domain.hi(),
        "{what}: values in [{lo}, {hi}]"
    );
    Ok(norms)
}

/// The MLP fixture as a certifiable `Sequential`.
pub fn mlp_net() -> robust_runtime::Result<robust_runtime::nn::Sequential> {
    zoo::layers::mnist_mlp().load(MLP, &Device::Cpu)
}

/// The CNN fixture as a certifiable `Sequential`.
pub fn cnn_net() -> robust_runtime::Result<robust_runtime::nn::Sequential> {
    zoo::layers::mnist_cnn().load(CNN, &Device::Cpu)
}

pub const IBP: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/mnist_ibp.safetensors"
);
pub const NOISE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/mnist_noise.safetensors"
);

/// The IBP-trained small CNN (certified training, `cargo xtask fixtures ibp`).
pub fn ibp_net() -> robust_runtime::Result<robust_runtime::nn::Sequential> {
    zoo::layers::mnist_small_cnn().load(IBP, &robust_runtime::device::current())
}

/// The small CNN trained on Gaussian noise σ = 0.25 (`cargo xtask fixtures noise`).
pub fn noise_net() -> robust_runtime::Result<robust_runtime::nn::Sequential> {
    zoo::layers::mnist_small_cnn().load(NOISE, &robust_runtime::device::current())
}

/// Asserts that PGD (L∞, 40 steps, 2 restarts, seeded) at `eps` breaks none of the samples a
/// certificate says it cannot break: the soundness claim, checked against an attack.
pub fn assert_pgd_breaks_none(
    model: &Model,
    data: &Dataset,
    certified: &[usize],
    eps: f64,
) -> robust_runtime::Result<()> {
    use robust_runtime::attack::{self, AttackBatch, AttackParams};
    let subset = data.select(certified)?;
    let labels = Tensor::from_slice(subset.labels(), subset.len(), &Device::Cpu)?;
    let params = AttackParams {
        steps: Some(40),
        restarts: Some(2),
        ..AttackParams::default()
    };
    let pgd = attack::build("pgd", eps, &params)?;
    let batch = AttackBatch::untargeted(subset.inputs(), &labels, 10);
    let adv = pgd.perturb(model, &batch, &mut Rng::seed_from_u64(3))?;
    let broken = model
        .predict(&adv)?
        .iter()
        .zip(subset.labels())
        .filter(|(p, y)| p != y)
        .count();
    assert_eq!(
        broken,
        0,
        "PGD broke {broken} of {} certified samples",
        certified.len()
    );
    Ok(())
}
