//! The data-driven robustness suite: `tests/robustness.toml` run by `robust_runtime::harness`,
//! one libtest trial per case, so `cargo test --test suite -- pgd`, `-- --list`, `-- --ignored`
//! and `cargo nextest run` work as for ordinary tests.

use std::process::ExitCode;

use robust_runtime::harness::Suite;

fn main() -> ExitCode {
    match Suite::from_file(env!("CARGO_MANIFEST_DIR"), "tests/robustness.toml").and_then(Suite::run)
    {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
