//! PGD adversarial training (Madry et al. 2018) of the MNIST CNN on the 4,000 training digits
//! of the shipped sample, then the plain and the adversarially trained CNN side by side under
//! PGD at ε = 0.1 on the 1,000 test digits.
//!
//! ```text
//! cargo run --release --example adversarial_training                 # train, evaluate, print
//! cargo run --release --example adversarial_training -- --out tests/fixtures/mnist_cnn_pgd.safetensors
//! cargo run --release --example adversarial_training -- --regime trades --epochs 5
//! ```
//!
//! `cargo xtask fixtures pgd` runs it with `--out` to produce the committed robust model.

use std::time::Instant;

use robust_runtime::attack::{Pgd, PgdConfig};
use robust_runtime::defense::{self, Regime, TrainConfig};
use robust_runtime::device::DeviceChoice;
use robust_runtime::eval::{evaluate, RunConfig};
use robust_runtime::prelude::*;

/// The recipe of the committed fixture.
fn recipe(regime: &str, epochs: usize, device: DeviceChoice) -> TrainConfig {
    let (eps, steps) = (0.1, 10);
    TrainConfig {
        epochs,
        batch_size: 50,
        learning_rate: 1e-3,
        seed: 20260101,
        regime: match regime {
            "trades" => Regime::Trades {
                eps,
                steps,
                step_size: None,
                beta: 6.0,
            },
            _ => Regime::Pgd {
                eps,
                steps,
                step_size: None,
            },
        },
        device,
    }
}

fn pgd_accuracy(
    model: Model,
    name: &str,
    samples: usize,
    device: &Device,
) -> robust_runtime::Result<RobustnessReport> {
    let case = RobustnessCase::from_model(model.named(name), Dataset::mnist_sample()?.test_split());
    let pgd = Pgd::new(PgdConfig {
        eps: 0.1,
        ..PgdConfig::default()
    })?;
    evaluate(
        &case,
        &pgd,
        &RunConfig {
            samples: Some(samples),
            device: device.clone(),
            ..RunConfig::default()
        },
    )
}

fn main() -> robust_runtime::Result<()> {
    let (mut regime, mut epochs, mut out, mut samples, mut device) = (
        "pgd".to_string(),
        10usize,
        None,
        1000usize,
        DeviceChoice::Cpu,
    );
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_default();
        match arg.as_str() {
            "--regime" => regime = value,
            "--epochs" => epochs = value.parse().expect("--epochs takes a number"),
            "--out" => out = Some(value),
            "--samples" => samples = value.parse().expect("--samples takes a number"),
            "--device" => device = DeviceChoice::from_name(&value)?,
            _ => {
                eprintln!("usage: adversarial_training [--regime pgd|trades] [--epochs N] [--out FILE] [--samples N] [--device cpu|cuda]");
                std::process::exit(2);
            }
        }
    }
    let data = Dataset::mnist_sample()?;
    let (train, test) = (data.clone().train_split(), data.test_split());
    let config = recipe(&regime, epochs, device);
    let device = robust_runtime::device::select_exactly(device)?;
    println!("training the MNIST CNN: {config:?}");
    let started = Instant::now();
    let (varmap, net) = defense::train(
        zoo::layers::mnist_cnn(),
        &train,
        InputDomain::default(),
        &config,
        |net, stats| {
            let acc =
                robust_runtime::eval::clean_accuracy(&Model::new(net.detach()), &test, &device)?;
            println!(
                "epoch {:>2}: loss {:.4}, test accuracy {:.2} % ({:.0} s)",
                stats.epoch,
                stats.loss,
                100.0 * acc,
                stats.seconds
            );
            Ok(())
        },
    )?;
    let training = started.elapsed().as_secs_f64();
    if let Some(path) = &out {
        varmap.save(path).map_err(robust_runtime::Error::from)?;
        println!("wrote {path}");
    }
    let plain = Model::new(zoo::MnistCnn::load(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/mnist_cnn.safetensors"
        ),
        &device,
    )?);
    let before = pgd_accuracy(plain, "mnist_cnn", samples, &device)?;
    let after = pgd_accuracy(Model::new(net.detach()), "mnist_cnn_pgd", samples, &device)?;
    println!("{before}\n\n{after}\n");
    println!(
        "PGD-40 at ε = 0.1 on {samples} test digits: plain CNN {:.1} % robust ({:.1} % clean), \
         {regime}-trained CNN {:.1} % robust ({:.1} % clean); training took {:.0} s",
        100.0 * before.robust_accuracy,
        100.0 * before.clean_accuracy,
        100.0 * after.robust_accuracy,
        100.0 * after.clean_accuracy,
        training
    );
    Ok(())
}
