//! `zoo::ResNet18` computes what PyTorch's ResNet-18 computes on the same weights: logits and the
//! input gradient PGD follows, against `tests/reference/resnet18_torch.json` (PyTorch, float64).
//! The weights and images are the benchmark's, regenerated from the same seed.

use candle_core::{Tensor, Var};
use robust_runtime::prelude::*;

const REFERENCE: &str = include_str!("reference/resnet18_torch.json");

#[test]
fn resnet18_matches_pytorch_logits_and_input_gradient() -> robust_runtime::Result<()> {
    let reference: serde_json::Value = serde_json::from_str(REFERENCE).unwrap();
    let mut rng = Rng::seed_from_u64(18);
    let weights = zoo::ResNet18::random_weights(&mut rng, 10)?;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resnet18.safetensors");
    candle_core::safetensors::save(&weights, &path)?;
    let model = Model::new(zoo::ResNet18::load(&path, &Device::Cpu)?);
    // The first 4 of the benchmark's images: the uniform draws that follow the weights.
    let x = Tensor::from_vec(
        rng.uniform_vec(4 * 3 * 32 * 32, 0.0, 1.0),
        (4, 3, 32, 32),
        &Device::Cpu,
    )?;
    let labels: Vec<u32> = (0..4).collect();
    let y = Tensor::from_slice(&labels, 4, &Device::Cpu)?;

    let var = Var::from_tensor(&x)?;
    let logits = model.logits(var.as_tensor())?;
    let expected = &reference["logits"];
    for (i, row) in logits.to_vec2::<f32>()?.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            let e = expected[i][j].as_f64().unwrap();
            assert!(
                (v as f64 - e).abs() < 1e-4,
                "logit [{i}][{j}]: {v} vs PyTorch {e}"
            );
        }
    }
    // Sum of cross-entropies, as PGD's objective; its gradient goes through every layer's
    // backward, the strided convolutions' and the residual additions' included.
    let loss = (candle_nn::loss::cross_entropy(&logits, &y)? * 4.0)?;
    let grad = loss
        .backward()?
        .get(var.as_tensor())
        .unwrap()
        .flatten_from(1)?;
    let sums = grad.abs()?.sum(1)?.to_vec1::<f32>()?;
    for (i, &s) in sums.iter().enumerate() {
        let e = reference["grad_sum_abs"][i].as_f64().unwrap();
        assert!(
            (s as f64 - e).abs() <= 1e-4 * e.abs().max(1.0),
            "|∇x| of image {i}: {s} vs {e}"
        );
    }
    let first = grad.narrow(1, 0, 16)?.flatten_all()?.to_vec1::<f32>()?;
    for (k, &g) in first.iter().enumerate() {
        let e = reference["grad_first"][k].as_f64().unwrap();
        assert!((g as f64 - e).abs() < 1e-6, "∇x[{k}]: {g} vs {e}");
    }
    Ok(())
}
