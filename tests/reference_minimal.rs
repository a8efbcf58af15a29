//! Agreement with Foolbox 3 on the minimal-perturbation attacks: C&W-L2, DeepFool-L2 and
//! DeepFool-L∞ on the committed MNIST MLP and CNN (`tests/reference/minimal_foolbox.py`
//! produced the JSON; `tests/reference/MINIMAL.md` says how, with which versions, and where
//! Foolbox's semantics and ours differ).
//!
//! Both sides find one adversarial example per sample with no budget; a sample is broken at
//! budget ε iff its example is misclassified and at most ε away (`minimal_within_budget`).
//! Demanded, on the same digits in the same batches: identical clean predictions, robust
//! accuracy within 2 percentage points at every budget of the JSON, the mean perturbation norm
//! over the samples both sides break within 10 %, and per-sample agreement of the norms. None
//! of the three attacks draws random numbers, so each sample's norm is a deterministic function
//! of the model, the hyper-parameters and (C&W's early abort) the batch; float rounding is the
//! only source of difference. Measured on every digit of the reference: DeepFool's norms agree
//! to at most 8e-4 relative, C&W's to a median of 1e-5 (MLP) and 2e-3 (CNN), at most 2.3e-2.
//! One binary-search round instead of nine, or no overshoot, fails these tests.

// The helpers return the crate's `Result`, whose error (candle's inside) is large; as in the
// other test files, that is fine for tests.
#![allow(clippy::result_large_err)]

mod common;

use std::time::Instant;

use candle_core::Tensor;
use robust_runtime::attack::{
    Attack, AttackBatch, CarliniWagner, CwConfig, DeepFool, DeepFoolConfig, Norm,
};
use robust_runtime::prelude::*;
use serde_json::Value;

type R<T = ()> = robust_runtime::Result<T>;

const REFERENCE: &str = include_str!("reference/minimal_foolbox.json");

/// One attack's outcome per sample: the clean prediction, whether the (unbounded) adversarial
/// example is misclassified, and its norm in the attack's norm.
struct Outcome {
    clean_pred: Vec<u32>,
    success: Vec<bool>,
    norm: Vec<f64>,
}

impl Outcome {
    /// Fraction of samples correct on clean inputs and not broken within `budget`.
    fn robust_at(&self, labels: &[u32], budget: f64) -> f64 {
        let robust = (0..labels.len())
            .filter(|&i| {
                self.clean_pred[i] == labels[i] && !(self.success[i] && self.norm[i] <= budget)
            })
            .count();
        robust as f64 / labels.len() as f64
    }
}

/// How closely the per-sample norms must agree: the relative difference that counts as
/// agreement, and the fraction of the samples both sides break that must agree.
fn per_sample_tolerance(attack: &str) -> (f64, f64) {
    match attack {
        "cw-l2" => (1e-2, 0.95),
        _ => (1e-3, 0.99),
    }
}

fn reference(model: &str, attack: &str) -> Value {
    let json: Value = serde_json::from_str(REFERENCE).expect("reference JSON parses");
    json["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["model"] == model && c["attack"] == attack)
        .unwrap_or_else(|| panic!("no case {model} / {attack} in the reference"))
        .clone()
}

/// Our attack with the peer's hyper-parameters (`args` are Foolbox's constructor arguments).
fn attack_for(case: &Value) -> R<Box<dyn Attack>> {
    let args = &case["args"];
    let int = |key: &str| args[key].as_u64().expect(key) as usize;
    let float = |key: &str| args[key].as_f64().expect(key);
    Ok(match case["attack"].as_str().expect("attack") {
        "cw-l2" => {
            // Ours always aborts a round early when the loss stalls.
            assert_eq!(args["abort_early"], true);
            Box::new(CarliniWagner::new(CwConfig {
                steps: int("steps"),
                confidence: float("confidence"),
                binary_search_steps: int("binary_search_steps"),
                initial_const: float("initial_const"),
                learning_rate: float("stepsize"),
                ..CwConfig::default()
            })?)
        }
        name @ ("deepfool-l2" | "deepfool-linf") => {
            // Ours considers every class and linearises the logits.
            assert_eq!(int("candidates"), 10);
            assert_eq!(args["loss"], "logits");
            Box::new(DeepFool::new(DeepFoolConfig {
                norm: if name == "deepfool-l2" {
                    Norm::L2
                } else {
                    Norm::Linf
                },
                steps: int("steps"),
                overshoot: float("overshoot"),
                ..DeepFoolConfig::default()
            })?)
        }
        other => panic!("unknown attack {other}"),
    })
}

/// The peer's outcome on its first `n` samples.
fn peer(case: &Value, n: usize) -> Outcome {
    let column = |key: &str| -> Vec<f64> {
        case[key].as_array().expect(key)[..n]
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let norm = column(case["norm"].as_str().unwrap());
    Outcome {
        clean_pred: column("clean_pred").iter().map(|&p| p as u32).collect(),
        success: column("success").iter().map(|&s| s == 1.0).collect(),
        norm,
    }
}

/// Our outcome on the first `n` digits, attacked in batches of `batch` as the peer did.
fn ours(attack: &dyn Attack, model: &Model, n: usize, batch: usize) -> R<(Outcome, f64)> {
    let data = common::test_digits(n)?;
    let labels = data.labels();
    let started = Instant::now();
    let mut advs = Vec::new();
    for start in (0..n).step_by(batch) {
        let len = batch.min(n - start);
        let x = data.inputs().narrow(0, start, len)?;
        let y = Tensor::from_slice(&labels[start..start + len], len, &Device::Cpu)?;
        advs.push(
            attack
                .minimal_perturbation(
                    model,
                    &AttackBatch::untargeted(&x, &y, 10),
                    &mut Rng::seed_from_u64(0),
                )?
                .expect("a minimal-perturbation attack"),
        );
    }
    let secs = started.elapsed().as_secs_f64();
    let adv = Tensor::cat(&advs, 0)?;
    let pred = model.predict(&adv)?;
    let norm = common::norms(&adv, data.inputs(), attack.threat().norm)?;
    Ok((
        Outcome {
            clean_pred: model.predict(data.inputs())?,
            success: pred.iter().zip(labels).map(|(p, y)| p != y).collect(),
            norm: norm.into_iter().map(f64::from).collect(),
        },
        secs,
    ))
}

/// Runs our version of the reference's `attack_name` on `model` and its first `n` digits.
fn agrees_with_foolbox(model: Model, attack_name: &str, n: usize) -> R {
    let case = reference(model.name(), attack_name);
    let attack = attack_for(&case)?;
    let (tolerance, agree) = per_sample_tolerance(attack_name);
    let batch = case["batch_size"].as_u64().unwrap() as usize;
    assert!(
        n.is_multiple_of(batch) && n <= case["samples"].as_u64().unwrap() as usize,
        "{n} samples: not whole batches of the reference"
    );
    let labels = common::test_digits(n)?.labels().to_vec();
    let theirs = peer(&case, n);
    let (ours, secs) = ours(attack.as_ref(), &model, n, batch)?;
    let what = format!("{} on {} ({n} digits)", attack.describe(), model.name());
    assert_eq!(
        ours.clean_pred, theirs.clean_pred,
        "{what}: clean predictions"
    );

    let budgets: Vec<f64> = case["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_f64().unwrap())
        .collect();
    for &b in &budgets {
        let (o, t) = (ours.robust_at(&labels, b), theirs.robust_at(&labels, b));
        println!(
            "{what}: robust at {b}: {:.1} % vs Foolbox {:.1} %",
            100.0 * o,
            100.0 * t
        );
        assert!((o - t).abs() <= 0.02, "{what}: robust at {b}: {o} vs {t}");
    }

    // Norms over the clean-correct samples both sides break.
    let both: Vec<usize> = (0..n)
        .filter(|&i| labels[i] == ours.clean_pred[i] && ours.success[i] && theirs.success[i])
        .collect();
    let correct = (0..n).filter(|&i| labels[i] == ours.clean_pred[i]).count();
    assert!(
        both.len() as f64 >= 0.95 * correct as f64,
        "{what}: both sides break only {} of {correct} clean-correct digits",
        both.len()
    );
    let mean = |o: &Outcome| both.iter().map(|&i| o.norm[i]).sum::<f64>() / both.len() as f64;
    let (o, t) = (mean(&ours), mean(&theirs));
    let mut rel: Vec<f64> = both
        .iter()
        .map(|&i| (ours.norm[i] - theirs.norm[i]).abs() / theirs.norm[i])
        .collect();
    rel.sort_by(f64::total_cmp);
    let close = rel.iter().filter(|&&r| r <= tolerance).count() as f64 / rel.len() as f64;
    println!(
        "{what}: mean norm {o:.4} vs Foolbox {t:.4}; relative difference per sample: median {:.1e}, 90th percentile {:.1e}, max {:.1e}; {:.1} % within {}; {secs:.1} s (Foolbox {} s on {} digits)",
        rel[rel.len() / 2],
        rel[rel.len() * 9 / 10],
        rel[rel.len() - 1],
        100.0 * close,
        tolerance,
        case["wall_s"],
        case["samples"]
    );
    assert!((o - t).abs() <= 0.1 * t, "{what}: mean norm {o} vs {t}");
    assert!(
        close >= agree,
        "{what}: only {close} of the per-sample norms within {} of Foolbox's",
        tolerance
    );
    Ok(())
}

#[test]
fn mlp_deepfool_l2_agrees_with_foolbox() -> R {
    agrees_with_foolbox(common::mlp()?, "deepfool-l2", 1000)
}

#[test]
fn mlp_deepfool_linf_agrees_with_foolbox() -> R {
    agrees_with_foolbox(common::mlp()?, "deepfool-linf", 1000)
}

#[test]
fn mlp_cw_agrees_with_foolbox() -> R {
    agrees_with_foolbox(common::mlp()?, "cw-l2", 200)
}

#[test]
fn cnn_deepfool_l2_agrees_with_foolbox() -> R {
    agrees_with_foolbox(common::cnn()?, "deepfool-l2", 100)
}

#[test]
fn cnn_deepfool_linf_agrees_with_foolbox() -> R {
    agrees_with_foolbox(common::cnn()?, "deepfool-linf", 100)
}

/// One batch: C&W on the CNN costs 900 forward and backward passes per batch.
#[test]
fn cnn_cw_agrees_with_foolbox() -> R {
    agrees_with_foolbox(common::cnn()?, "cw-l2", 20)
}

/// Every case on all the digits of the reference (1,000 MLP, 200 CNN): about 15 minutes on
/// one core, mostly C&W on the CNN. `cargo test --test reference_minimal -- --ignored`.
#[test]
#[ignore = "slow: the whole reference, for MINIMAL.md"]
fn every_case_agrees_with_foolbox_on_every_reference_digit() -> R {
    let json: Value = serde_json::from_str(REFERENCE).expect("reference JSON parses");
    for case in json["cases"].as_array().expect("cases") {
        let model = match case["model"].as_str().unwrap() {
            "mnist_mlp" => common::mlp()?,
            _ => common::cnn()?,
        };
        let samples = case["samples"].as_u64().unwrap() as usize;
        agrees_with_foolbox(model, case["attack"].as_str().unwrap(), samples)?;
    }
    Ok(())
}
