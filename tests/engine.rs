//! The compiled engine against candle's own operations and autograd (`Model::without_engine`,
//! the slow, obvious path): attacks on the shipped models give the same adversarial
//! predictions sample for sample, up to the few samples that float rounding moves across a
//! decision boundary. Layer-by-layer logits and gradients are checked in `nn::engine`.

mod common;

use candle_core::Tensor;
use robust_runtime::attack::{
    Attack, AttackBatch, DeepFool, DeepFoolConfig, Fgsm, FgsmConfig, Norm, Pgd, PgdConfig,
};
use robust_runtime::prelude::*;

type R<T = ()> = robust_runtime::Result<T>;

/// Adversarial predictions of `attack` on the first `n` digits, on the engine and off it.
fn both_ways(model: fn() -> R<Model>, attack: &dyn Attack, n: usize) -> R<(Vec<u32>, Vec<u32>)> {
    let data = common::test_digits(n)?;
    let labels = Tensor::from_slice(data.labels(), n, &Device::Cpu)?;
    let batch = AttackBatch::untargeted(data.inputs(), &labels, 10);
    let mut out = Vec::new();
    for model in [model()?, model()?.without_engine()] {
        let adv = attack.perturb(&model, &batch, &mut Rng::seed_from_u64(7))?;
        out.push(model.predict(&adv)?);
    }
    let theirs = out.pop().unwrap_or_default();
    Ok((out.pop().unwrap_or_default(), theirs))
}

/// Asserts that at least 99.5 % of the predictions agree and that the attack changed some.
fn assert_agree(what: &str, (ours, theirs): (Vec<u32>, Vec<u32>), labels: &[u32]) {
    let same = ours.iter().zip(&theirs).filter(|(a, b)| a == b).count();
    assert!(
        same as f64 >= 0.995 * ours.len() as f64,
        "{what}: {same} of {} adversarial predictions agree",
        ours.len()
    );
    let fooled = theirs.iter().zip(labels).filter(|(p, y)| p != y).count();
    assert!(
        fooled > ours.len() / 10,
        "{what}: only {fooled} misclassified"
    );
}

fn pgd(steps: usize) -> R<Pgd> {
    Pgd::new(PgdConfig {
        eps: 0.1,
        steps,
        step_size: Some(0.01),
        ..PgdConfig::default()
    })
}

#[test]
fn pgd_fgsm_and_deepfool_on_the_mlp_agree_with_candles_autograd() -> R {
    let labels = common::test_digits(1000)?.labels().to_vec();
    let fgsm = Fgsm::new(FgsmConfig {
        eps: 0.1,
        ..FgsmConfig::default()
    })?;
    assert_agree("FGSM", both_ways(common::mlp, &fgsm, 1000)?, &labels);
    assert_agree("PGD-20", both_ways(common::mlp, &pgd(20)?, 1000)?, &labels);
    let deepfool = DeepFool::new(DeepFoolConfig {
        eps: 2.0,
        norm: Norm::L2,
        ..DeepFoolConfig::default()
    })?;
    assert_agree(
        "DeepFool",
        both_ways(common::mlp, &deepfool, 200)?,
        &labels[..200],
    );
    Ok(())
}

#[test]
fn pgd_on_the_cnn_agrees_with_candles_autograd() -> R {
    let labels = common::test_digits(250)?.labels().to_vec();
    assert_agree("PGD-10", both_ways(common::cnn, &pgd(10)?, 250)?, &labels);
    Ok(())
}
