//! Agreement with the peer: PyTorch + torchattacks on the same committed weights and digits.
//!
//! `tests/reference/fgsm_pgd_torch.py` ran `torchattacks.FGSM`, `PGD` and `PGDL2` (no random
//! start) on `tests/fixtures/*.safetensors` and stored per-sample predictions in
//! `tests/reference/fgsm_pgd_torch.json` (see `tests/reference/README.md` for how to regenerate).
//! We run the same attacks and demand: robust accuracy within 0.5 percentage points, ≥ 99 % of
//! per-sample adversarial predictions identical, identical clean predictions, and mean
//! perturbation norms within 1 %.

mod common;

use robust_runtime::attack::{self, AttackParams, Norm};
use robust_runtime::eval::{evaluate, RunConfig};
use robust_runtime::prelude::*;
use serde_json::Value;

const REFERENCE: &str = include_str!("reference/fgsm_pgd_torch.json");

fn cases(model: &str) -> Vec<Value> {
    let json: Value = serde_json::from_str(REFERENCE).expect("reference JSON parses");
    json["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .filter(|c| c["model"] == model)
        .cloned()
        .collect()
}

fn check_model(name: &str, model: Model) -> robust_runtime::Result<()> {
    let case = RobustnessCase::from_model(model, Dataset::mnist_sample()?.test_split());
    let cases = cases(name);
    assert_eq!(cases.len(), 4, "four reference cases for {name}");
    for c in cases {
        let eps = c["eps"].as_f64().unwrap();
        let samples = c["samples"].as_u64().unwrap() as usize;
        let params = AttackParams {
            norm: Norm::from_name(c["norm"].as_str().unwrap())?,
            steps: Some(c["steps"].as_u64().unwrap() as usize),
            step_size: c["alpha"].as_f64(),
            random_start: Some(false),
            ..AttackParams::default()
        };
        let attack = attack::build(c["attack"].as_str().unwrap(), eps, &params)?;
        let report = evaluate(
            &case,
            attack.as_ref(),
            &RunConfig {
                samples: Some(samples),
                ..RunConfig::default()
            },
        )?;
        let label = format!("{name} {}", report.attack_description);

        let ints = |key: &str| -> Vec<u32> {
            c[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect()
        };
        let (torch_clean, torch_adv) = (ints("clean_pred"), ints("adv_pred"));
        let ours_clean: Vec<u32> = report.per_sample.iter().map(|s| s.clean_pred).collect();
        let ours_adv: Vec<u32> = report.per_sample.iter().map(|s| s.adv_pred).collect();
        assert_eq!(ours_clean, torch_clean, "{label}: clean predictions");
        let same = ours_adv
            .iter()
            .zip(&torch_adv)
            .filter(|(a, b)| a == b)
            .count();
        let agreement = same as f64 / samples as f64;
        let torch_robust = c["robust_acc"].as_f64().unwrap();
        println!(
            "{label}: robust {:.2} % vs torchattacks {:.2} %, {same}/{samples} adversarial predictions identical",
            100.0 * report.robust_accuracy,
            100.0 * torch_robust
        );
        assert!(
            agreement >= 0.99,
            "{label}: only {:.2} % identical adversarial predictions",
            100.0 * agreement
        );
        assert!(
            (report.robust_accuracy - torch_robust).abs() <= 0.005,
            "{label}: robust accuracy {} vs torchattacks {torch_robust}",
            report.robust_accuracy
        );
        for (ours, key) in [
            (report.perturbation.mean_linf, "mean_linf"),
            (report.perturbation.mean_l2, "mean_l2"),
        ] {
            let theirs = c[key].as_f64().unwrap();
            assert!(
                (ours - theirs).abs() <= 0.01 * theirs,
                "{label}: {key} {ours} vs torchattacks {theirs}"
            );
        }
    }
    Ok(())
}

#[test]
fn reference_digits_are_our_test_split() -> robust_runtime::Result<()> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/reference/mnist_test.safetensors"
    );
    let reference = Dataset::from_safetensors(path, "images", "labels")?;
    let ours = Dataset::mnist_sample()?.test_split();
    assert_eq!(reference.labels(), ours.labels());
    let diff = (reference.inputs() - ours.inputs())?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    assert!(diff < 1e-6, "pixels differ by {diff}");
    Ok(())
}

#[test]
fn mlp_agrees_with_torchattacks() -> robust_runtime::Result<()> {
    check_model("mnist_mlp", common::mlp()?)
}

#[test]
fn cnn_agrees_with_torchattacks() -> robust_runtime::Result<()> {
    check_model("mnist_cnn", common::cnn()?)
}

/// The same networks read from the ONNX files PyTorch exported (`tests/reference/onnx_export.py`):
/// the same agreement, so every attack sees the same model through either file.
fn onnx(name: &str) -> robust_runtime::Result<Model> {
    let path = format!(
        "{}/tests/fixtures/onnx/{name}.onnx",
        env!("CARGO_MANIFEST_DIR")
    );
    Ok(Model::new(robust_runtime::nn::Graph::from_onnx(path, &Device::Cpu)?).named(name))
}

#[test]
fn mlp_from_onnx_agrees_with_torchattacks() -> robust_runtime::Result<()> {
    check_model("mnist_mlp", onnx("mnist_mlp")?)
}

#[test]
fn cnn_from_onnx_agrees_with_torchattacks() -> robust_runtime::Result<()> {
    check_model("mnist_cnn", onnx("mnist_cnn")?)
}
