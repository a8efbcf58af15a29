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
        let cpu_before = process_cpu_seconds();
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
            process_cpu_seconds()
                .zip(cpu_before)
                .map(|(after, before)| after - before),
        ));
    }
    println!("mnist_{model}, {samples} test digits");
    for (what, clean, robust, seconds, cpu) in rows {
        let cpu = cpu.map_or(String::new(), |cpu| format!(" ({cpu:.1} CPU-s)"));
        println!(
            "{:>7.1} % robust ({:.1} % clean) {:>8.1} s{cpu}  {what}",
            100.0 * robust,
            100.0 * clean,
            seconds
        );
    }
    Ok(())
}

/// CPU time (user + system, all threads) this process has used so far, from `/proc/self/stat`
/// on Linux; `None` elsewhere. Beside the wall time it shows an attack's cost independent of
/// whatever else the machine is running.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // The kernel reports in USER_HZ, 100 on every Linux configuration Rust targets.
    Some(ticks / 100.0)
}
