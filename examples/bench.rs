//! Times the hot path of PGD — forward, input gradient, step and projection — on the MNIST MLP
//! and CNN, batch 250. Compare with `tests/reference/bench_torch.py` on the same machine
//! (BENCHMARKS.md).
//!
//! ```text
//! cargo run --release --example bench
//! ```

use std::time::Instant;

use robust_runtime::attack::{Attack, AttackBatch, Pgd, PgdConfig};
use robust_runtime::prelude::*;

fn main() -> robust_runtime::Result<()> {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let data = Dataset::mnist_sample()?.test_split().take(250)?;
    let labels = candle_core::Tensor::from_slice(data.labels(), data.len(), &Device::Cpu)?;
    let models = [
        (
            "mnist_mlp",
            Model::new(zoo::MnistMlp::load(
                format!("{fixtures}/mnist_mlp.safetensors"),
                &Device::Cpu,
            )?),
        ),
        (
            "mnist_cnn",
            Model::new(zoo::MnistCnn::load(
                format!("{fixtures}/mnist_cnn.safetensors"),
                &Device::Cpu,
            )?),
        ),
    ];
    println!(
        "PGD-L∞ on 250 MNIST digits (batch 250), CPU, {} threads",
        candle_core::utils::get_num_threads()
    );
    for (name, model) in &models {
        let steps = 10;
        let pgd = Pgd::new(PgdConfig {
            eps: 0.1,
            steps,
            step_size: Some(0.01),
            random_start: false,
            ..PgdConfig::default()
        })?;
        let batch = AttackBatch::untargeted(data.inputs(), &labels, 10);
        pgd.perturb(model, &batch, &mut Rng::seed_from_u64(0))?; // warm-up
        let reps = 3;
        let started = Instant::now();
        for _ in 0..reps {
            pgd.perturb(model, &batch, &mut Rng::seed_from_u64(0))?;
        }
        let per_step = started.elapsed().as_secs_f64() / (reps * steps) as f64;
        println!(
            "{name}: {:.2} ms per PGD step of the batch, {:.0} sample-steps/s",
            1e3 * per_step,
            250.0 / per_step
        );
    }
    Ok(())
}
