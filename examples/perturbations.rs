//! Does each prediction of the shipped MNIST models survive the perturbations a deployed model
//! meets? Rotation, shift, brightness, contrast, Gaussian noise, salt-and-pepper pixels and
//! occlusion, `--cases` random draws per digit; each failure shrunk to the smallest perturbation
//! that flips it, with its seed and a PNG under `target/robust/perturbations/`.
//!
//! ```text
//! cargo run --release --example perturbations                        # 1,000 digits, 64 cases
//! cargo run --release --example perturbations -- --samples 200 --cases 64 --models mlp
//! ```

use std::path::Path;
use std::time::Instant;

use robust_runtime::eval::{evaluate_invariance, InvarianceConfig};
use robust_runtime::perturb::{PerturbParams, PerturbationConfig};
use robust_runtime::prelude::*;

/// The perturbations measured, with the parameters of the README's table.
const PERTURBATIONS: &[&str] = &[
    "rotation",
    "shift",
    "brightness",
    "contrast",
    "gaussian",
    "salt_pepper",
    "occlusion",
    "rotation+shift+brightness",
];

fn main() -> robust_runtime::Result<()> {
    let mut samples = None;
    let mut cases = 64;
    let mut models = vec!["mlp".to_string(), "cnn".to_string()];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--samples", Some(n)) => samples = Some(n.parse().expect("--samples takes a number")),
            ("--cases", Some(n)) => cases = n.parse().expect("--cases takes a number"),
            ("--models", Some(m)) => models = m.split(',').map(str::to_string).collect(),
            _ => {
                eprintln!("usage: perturbations [--samples N] [--cases N] [--models mlp,cnn]");
                std::process::exit(2);
            }
        }
    }
    let params = PerturbParams {
        max_degrees: 15.0,
        max_shift: 2.0,
        max_brightness: 0.2,
        max_contrast: 0.3,
        sigma: 0.1,
        pixels: 10,
        patch: 6,
        ..PerturbParams::default()
    };

    let root = env!("CARGO_MANIFEST_DIR");
    let device = robust_runtime::device::select(robust_runtime::device::DeviceChoice::Auto)?;
    let started = Instant::now();
    let mut table = Vec::new();
    for name in &models {
        let path = format!("{root}/tests/fixtures/mnist_{name}.safetensors");
        let model = match name.as_str() {
            "mlp" => Model::new(zoo::MnistMlp::load(&path, &device)?),
            "cnn" => Model::new(zoo::MnistCnn::load(&path, &device)?),
            other => panic!("unknown model {other}; expected mlp or cnn"),
        };
        let case = RobustnessCase::from_model(
            model.named(format!("mnist_{name}")),
            Dataset::mnist_sample()?.test_split(),
        );
        for perturbation in PERTURBATIONS {
            let config = PerturbationConfig::new(perturbation, params.clone())?;
            let test = format!("perturbations::mnist_{name}::{perturbation}");
            let cfg = InvarianceConfig {
                samples,
                cases,
                device: device.clone(),
                output: Some(robust_runtime::report::output_dir(Path::new(root), &test)),
                test_name: Some(test),
                ..InvarianceConfig::default()
            };
            let report = evaluate_invariance(&case, &config, &cfg)?;
            println!("{report}\n");
            // Sizes of different families do not add up to anything: no median for compositions.
            let median = (config.families().len() == 1)
                .then(|| median(report.counterexamples.iter().map(|c| c.size).collect()))
                .flatten();
            table.push((
                format!("mnist_{name}"),
                config.name(),
                report.invariance,
                report.perturbed_accuracy,
                median,
                report.seconds,
            ));
        }
    }

    println!(
        "invariance: share of correctly classified digits whose prediction survives {cases} \
         cases of rotation ≤ {}°, shift ≤ {} px, brightness ±{}, contrast ×(1 ± {}), Gaussian \
         σ {}, {} salt-and-pepper pixels, {}×{} occlusion",
        params.max_degrees,
        params.max_shift,
        params.max_brightness,
        params.max_contrast,
        params.sigma,
        params.pixels,
        params.patch,
        params.patch
    );
    println!(
        "{:<10} {:<26} {:>10} {:>10} {:>12} {:>7}",
        "model", "perturbation", "invariance", "accuracy", "median flip", "time"
    );
    for (model, perturbation, invariance, accuracy, median, seconds) in &table {
        println!(
            "{model:<10} {perturbation:<26} {:>8.2} % {:>8.2} % {:>12} {:>6.1}s",
            100.0 * invariance,
            100.0 * accuracy,
            median.map_or("–".to_string(), |m| format!("{m:.3}")),
            seconds
        );
    }
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The median of the minimal flips' sizes (degrees, pixels, …), if any sample flipped.
fn median(mut sizes: Vec<f64>) -> Option<f64> {
    sizes.sort_by(f64::total_cmp);
    (!sizes.is_empty()).then(|| sizes[sizes.len() / 2])
}
