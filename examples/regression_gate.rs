//! The CI story in one run: record a baseline for the MNIST CNN, then evaluate a "pull request"
//! that swaps in a weaker model which still clears `min_acc`, and watch the baseline catch it.
//!
//! ```text
//! cargo run --release --example regression_gate
//! ```
//!
//! In a test suite the same happens through `#[robustness_test(..., baseline = true)]`: the
//! baseline lives in `robust-baselines/`, `cargo xtask bless` records it, and CI fails the build.
//! Here everything goes to a temporary folder.

use robust_runtime::attack::{Pgd, PgdConfig};
use robust_runtime::baseline::{self, UpdateMode};
use robust_runtime::eval::{evaluate, Fingerprint, RunConfig, Thresholds};
use robust_runtime::prelude::*;
use robust_runtime::report;

const TEST: &str = "gate::mnist_cnn::pgd_eps_0_05";

fn run(model: Model) -> robust_runtime::Result<RobustnessReport> {
    let case = RobustnessCase::from_model(
        model.named("mnist_cnn"),
        Dataset::mnist_sample()?.test_split(),
    );
    let pgd = Pgd::new(PgdConfig {
        eps: 0.05,
        steps: 10,
        ..PgdConfig::default()
    })?;
    let cfg = RunConfig {
        samples: Some(200),
        test_name: Some(TEST.into()),
        ..RunConfig::default()
    };
    let mut report = evaluate(&case, &pgd, &cfg)?.check(&Thresholds {
        min_acc: Some(0.3),
        confidence: Some(0.95),
        ..Thresholds::default()
    });
    report.fingerprint = Some(Fingerprint::of(&case, Some(200), 250, &Device::Cpu)?);
    Ok(report)
}

fn main() -> robust_runtime::Result<()> {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let dir = std::env::temp_dir().join(format!("robust-gate-{}", std::process::id()));
    let path = baseline::path_for(&dir, TEST);

    // main: the CNN, blessed as the baseline.
    let cnn = Model::new(zoo::MnistCnn::load(
        format!("{fixtures}/mnist_cnn.safetensors"),
        &Device::Cpu,
    )?);
    let before = run(cnn)?;
    println!("{before}\n");
    let blessed = baseline::compare(&before, &path, 0.01, UpdateMode::Always)?;
    println!("{}\n", blessed.describe(UpdateMode::Always));

    // The pull request: an MLP in its place. It still clears min_acc = 30 % …
    let mlp = Model::new(zoo::MnistMlp::load(
        format!("{fixtures}/mnist_mlp.safetensors"),
        &Device::Cpu,
    )?);
    let after = run(mlp)?;
    println!("{after}\n");
    // … but CI (`UpdateMode::No`: nothing written) compares it with the baseline.
    let verdict = baseline::compare(&after, &path, 0.01, UpdateMode::No)?;
    println!("{}\n", verdict.describe(UpdateMode::No));
    let files = report::write(
        &dir.join("report"),
        &after,
        &verdict.describe(UpdateMode::No),
    )?;
    println!("{}", files.describe());
    println!(
        "\nthresholds {}, baseline {}: the build is {}",
        if after.passed() { "hold" } else { "fail" },
        if verdict.failed() {
            "regressed"
        } else {
            "holds"
        },
        if after.passed() && !verdict.failed() {
            "green"
        } else {
            "red"
        }
    );
    Ok(())
}
