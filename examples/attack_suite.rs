//! Every attack of the suite on one of the shipped models, with wall times: a tour of what
//! `#[robustness_test(attack = …)]` can run.
//!
//! ```text
//! cargo run --release --example attack_suite                          # CNN, 200 digits, L∞ ε = 0.1
//! cargo run --release --example attack_suite -- --model mlp --samples 1000 --eps 0.05
//! ```

use robust_runtime::attack::{self, AttackParams, Norm};
use robust_runtime::eval::{evaluate, RunConfig};
use robust_runtime::prelude::*;

fn main() -> robust_runtime::Result<()> {
    let (mut model, mut samples, mut eps) = ("cnn".to_string(), 200usize, 0.1f64);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_default();
        match arg.as_str() {
            "--model" => model = value,
            "--samples" => samples = value.parse().expect("--samples takes a number"),
            "--eps" => eps = value.parse().expect("--eps takes a number"),
            _ => {
                eprintln!("usage: attack_suite [--model mlp|cnn] [--samples N] [--eps E]");
                std::process::exit(2);
            }
        }
    }
    let path = format!(
        "{}/tests/fixtures/mnist_{model}.safetensors",
        env!("CARGO_MANIFEST_DIR")
    );
    let net = match model.as_str() {
        "mlp" => Model::new(zoo::MnistMlp::load(&path, &Device::Cpu)?),
        _ => Model::new(zoo::MnistCnn::load(&path, &Device::Cpu)?),
    };
    let case = RobustnessCase::from_model(
        net.named(format!("mnist_{model}")),
        Dataset::mnist_sample()?.test_split(),
    );
    let cfg = RunConfig {
        samples: Some(samples),
        ..RunConfig::default()
    };
    let linf = AttackParams::default();
    let l2 = AttackParams {
        norm: Norm::L2,
        ..AttackParams::default()
    };
    // (name, ε, parameters): L∞ attacks at `eps`; the L2 minimal attacks at L2 = 1.5 (their
    // report's curve gives every other budget from the same run).
    let runs: Vec<(&str, f64, &AttackParams)> = vec![
        ("fgsm", eps, &linf),
        ("pgd", eps, &linf),
        ("apgd", eps, &linf),
        ("apgd-t", eps, &linf),
        ("square", eps, &linf),
        ("autoattack", eps, &linf),
        ("deepfool", 1.5, &l2),
        ("cw", 1.5, &l2),
    ];
    let mut rows = Vec::new();
    for (name, eps, params) in runs {
        let attack = attack::build(name, eps, params)?;
        let sweep = if params.norm == Norm::L2 {
            vec![0.5, 1.0, 2.0]
        } else {
            Vec::new()
        };
        let report = evaluate(
            &case,
            attack.as_ref(),
            &RunConfig {
                sweep,
                ..cfg.clone()
            },
        )?;
        println!("{report}\n");
        rows.push((
            attack.describe(),
            report.clean_accuracy,
            report.robust_accuracy,
            report.seconds,
        ));
    }
    println!("mnist_{model}, {samples} test digits");
    for (what, clean, robust, seconds) in rows {
        println!(
            "{:>7.1} % robust ({:.1} % clean) {:>8.1} s  {what}",
            100.0 * robust,
            100.0 * clean,
            seconds
        );
    }
    Ok(())
}
