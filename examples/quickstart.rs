//! The main job: attack the shipped MNIST models with FGSM and PGD (L∞, 20 steps of 2.5·ε/20,
//! random start) over an ε sweep on the 1,000 test digits of the MNIST sample, and print each
//! report and a summary curve. About 2 minutes on 2 CPU cores, most of it the CNN
//! (BENCHMARKS.md).
//!
//! ```text
//! cargo run --release --example quickstart                 # both models, all 1,000 test digits
//! cargo run --release --example quickstart -- --samples 200 --models mlp
//! ```

use std::time::Instant;

use robust_runtime::attack::{self, AttackParams};
use robust_runtime::eval::{evaluate, RunConfig};
use robust_runtime::prelude::*;

const EPS: &[f64] = &[0.05, 0.1, 0.2, 0.3];
const PGD_STEPS: usize = 20;

fn main() -> robust_runtime::Result<()> {
    let mut samples = None;
    let mut models = vec!["mlp".to_string(), "cnn".to_string()];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--samples", Some(n)) => samples = Some(n.parse().expect("--samples takes a number")),
            ("--models", Some(m)) => models = m.split(',').map(str::to_string).collect(),
            _ => {
                eprintln!("usage: quickstart [--samples N] [--models mlp,cnn]");
                std::process::exit(2);
            }
        }
    }

    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let device = robust_runtime::device::select(robust_runtime::device::DeviceChoice::Auto)?;
    let started = Instant::now();
    let mut curve = Vec::new();
    for name in &models {
        let path = format!("{fixtures}/mnist_{name}.safetensors");
        let model = match name.as_str() {
            "mlp" => Model::new(zoo::MnistMlp::load(&path, &device)?),
            "cnn" => Model::new(zoo::MnistCnn::load(&path, &device)?),
            other => panic!("unknown model {other}; expected mlp or cnn"),
        };
        let case = RobustnessCase::from_model(
            model.named(format!("mnist_{name}")),
            Dataset::mnist_sample()?.test_split(),
        );
        for attack_name in ["fgsm", "pgd"] {
            for &eps in EPS {
                let params = AttackParams {
                    steps: Some(PGD_STEPS),
                    ..AttackParams::default()
                };
                let attack = attack::build(attack_name, eps, &params)?;
                let cfg = RunConfig {
                    samples,
                    device: device.clone(),
                    ..RunConfig::default()
                };
                let report = evaluate(&case, attack.as_ref(), &cfg)?;
                println!("{report}\n");
                curve.push((
                    format!("mnist_{name}"),
                    attack_name,
                    eps,
                    report.clean_accuracy,
                    report.robust_accuracy,
                ));
            }
        }
    }

    println!("robust accuracy (L∞, ε in pixel units of [0, 1])");
    println!(
        "{:<10} {:<6} {:>6} {:>8} {:>8}",
        "model", "attack", "ε", "clean", "robust"
    );
    for (model, attack, eps, clean, robust) in &curve {
        println!(
            "{model:<10} {attack:<6} {eps:>6} {:>7.1}% {:>7.1}%",
            100.0 * clean,
            100.0 * robust
        );
    }
    println!(
        "\ntotal {:.1} s on {}",
        started.elapsed().as_secs_f64(),
        robust_runtime::device::name(&device)
    );
    Ok(())
}
