//! Certification tour: IBP and CROWN on the IBP-trained small CNN, randomized smoothing on the
//! one trained with Gaussian noise, with certified accuracies and throughput.
//!
//! ```sh
//! cargo run --release --example certification            # 1,000 digits, smoothing on 100 at n = 10,000
//! cargo run --release --example certification -- 200 20 100000
//! ```
//!
//! Arguments: digits for IBP/CROWN, digits for smoothing, smoothing's `n`.

use std::time::Instant;

use robust_runtime::certify::{self, Method, Smoothing};
use robust_runtime::prelude::*;

fn main() -> robust_runtime::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers: digits, smoothing digits, n"))
        .collect();
    let digits = args.first().copied().unwrap_or(1000);
    let smoothing_digits = args.get(1).copied().unwrap_or(100);
    let n = args.get(2).copied().unwrap_or(10_000);
    let root = env!("CARGO_MANIFEST_DIR");
    let test = Dataset::mnist_sample()?.test_split();

    let ibp_net = zoo::layers::mnist_small_cnn().load(
        format!("{root}/tests/fixtures/mnist_ibp.safetensors"),
        &Device::Cpu,
    )?;
    let case = RobustnessCase::new(ibp_net, test.take(digits)?).named("mnist_ibp");
    for eps in [0.05, 0.1] {
        for method in [Method::Ibp, Method::Crown] {
            let started = Instant::now();
            let report = certify::bound_case(&case, method, eps, 100)?;
            let rate = digits as f64 / started.elapsed().as_secs_f64();
            println!(
                "mnist_ibp  {:<5} ε = {eps:<4}  clean {:6.2} %  certified {:6.2} %  ({rate:.0} samples/s)",
                method.label(),
                100.0 * report.clean_accuracy,
                100.0 * report.certified_accuracy,
            );
        }
    }

    let noise_net = zoo::layers::mnist_small_cnn().load(
        format!("{root}/tests/fixtures/mnist_noise.safetensors"),
        &Device::Cpu,
    )?;
    let case = RobustnessCase::new(noise_net, test.take(smoothing_digits)?).named("mnist_noise");
    let smoothing = Smoothing {
        n,
        ..Smoothing::new(0.25)
    };
    let started = Instant::now();
    let report = certify::smoothing_case(
        &case,
        &smoothing,
        0.5,
        &[0.0, 0.25, 0.5, 0.75, 1.0],
        0,
        &Device::Cpu,
    )?;
    let per_image = started.elapsed().as_secs_f64() / smoothing_digits as f64;
    println!("{report}");
    println!("smoothing: {per_image:.2} s per image at n = {n}");
    Ok(())
}
