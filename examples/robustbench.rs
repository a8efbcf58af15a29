//! A RobustBench-style evaluation of the shipped MNIST models: clean accuracy and the standard
//! AutoAttack's robust accuracy (APGD-CE → APGD-T → FAB-T → Square, L∞) on the first N test
//! digits, one leaderboard row per model, ranked by robust accuracy, with the time each took.
//!
//! ```text
//! cargo run --release --example robustbench                       # 200 digits, ε = 0.1
//! cargo run --release --example robustbench -- --samples 1000 --eps 0.3 --models mnist_cnn_pgd
//! ```
//!
//! RobustBench (Croce et al. 2021) ranks models by AutoAttack's standard version on the first
//! points of the test set; this prints the same columns for the models in `tests/fixtures/`.
//! The sample's test digits are those of `Dataset::mnist_sample()` (the shipped MNIST sample).

use std::time::Instant;

use robust_runtime::attack::{Attack, AttackParams, Ensemble};
use robust_runtime::eval::{evaluate, RunConfig};
use robust_runtime::prelude::*;

const USAGE: &str =
    "usage: robustbench [--samples N] [--eps E] [--models mnist_mlp,mnist_cnn,mnist_cnn_pgd]";

/// The shipped models: name, architecture, how it was trained.
const MODELS: [(&str, &str, &str); 3] = [
    ("mnist_mlp", "MLP 784-256-256-10", "standard"),
    ("mnist_cnn", "CNN 2×conv5 + 1024", "standard"),
    ("mnist_cnn_pgd", "CNN 2×conv5 + 1024", "PGD-AT ε = 0.1"),
];

struct Row {
    name: &'static str,
    architecture: &'static str,
    training: &'static str,
    clean: f64,
    robust: f64,
    stages: Vec<f64>,
    seconds: f64,
}

fn main() -> robust_runtime::Result<()> {
    let (mut samples, mut eps) = (200usize, 0.1f64);
    let mut chosen: Vec<String> = MODELS.iter().map(|m| m.0.to_string()).collect();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_else(|| {
            eprintln!("`{arg}` needs a value\n{USAGE}");
            std::process::exit(2)
        });
        let parsed = match arg.as_str() {
            "--samples" => value.parse().map(|v| samples = v).is_ok() && samples > 0,
            "--eps" => value.parse().map(|v| eps = v).is_ok() && eps > 0.0,
            "--models" => {
                chosen = value.split(',').map(str::to_string).collect();
                chosen.iter().all(|c| MODELS.iter().any(|m| m.0 == c))
            }
            _ => false,
        };
        if !parsed {
            eprintln!("bad `{arg} {value}`\n{USAGE}");
            std::process::exit(2);
        }
    }
    let fixtures = format!("{}/tests/fixtures", env!("CARGO_MANIFEST_DIR"));
    let device = robust_runtime::device::current();
    let attack = Ensemble::autoattack(eps, &AttackParams::default())?;
    let mut rows = Vec::new();
    for &(name, architecture, training) in MODELS.iter().filter(|m| chosen.iter().any(|c| c == m.0))
    {
        let path = format!("{fixtures}/{name}.safetensors");
        let net = match name {
            "mnist_mlp" => Model::new(zoo::MnistMlp::load(&path, &device)?),
            _ => Model::new(zoo::MnistCnn::load(&path, &device)?),
        };
        let case =
            RobustnessCase::from_model(net.named(name), Dataset::mnist_sample()?.test_split());
        let started = Instant::now();
        let report = evaluate(
            &case,
            &attack,
            &RunConfig {
                samples: Some(samples),
                device: device.clone(),
                ..RunConfig::default()
            },
        )?;
        eprintln!("{report}\n");
        rows.push(Row {
            name,
            architecture,
            training,
            clean: report.clean_accuracy,
            robust: report.robust_accuracy,
            stages: report.stages.iter().map(|s| s.robust_accuracy).collect(),
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    rows.sort_by(|a, b| {
        b.robust
            .total_cmp(&a.robust)
            .then(b.clean.total_cmp(&a.clean))
    });
    println!(
        "MNIST, L∞ ε = {eps}, first {samples} test digits of the shipped sample, {}\n",
        attack.describe()
    );
    println!("| Rank | Model | Training | Architecture | Clean accuracy | AutoAttack robust accuracy | after APGD-CE / APGD-T / FAB-T / Square | Time |");
    println!("|---:|---|---|---|---:|---:|---|---:|");
    for (rank, r) in rows.iter().enumerate() {
        let stages: Vec<String> = r
            .stages
            .iter()
            .map(|a| format!("{:.2}", 100.0 * a))
            .collect();
        println!(
            "| {} | {} | {} | {} | {:.2} % | {:.2} % | {} | {:.1} s |",
            rank + 1,
            r.name,
            r.training,
            r.architecture,
            100.0 * r.clean,
            100.0 * r.robust,
            stages.join(" / "),
            r.seconds
        );
    }
    Ok(())
}
