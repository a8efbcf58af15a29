//! Files a run leaves for people to look at, under `target/robust/`.
//!
//! - [`write`]: what every generated test leaves in `target/robust/<test>/`: `report.json`,
//!   `summary.md`, `curve.svg` (accuracy against ε or radius) and `examples.png` (the worst
//!   adversarial examples: original, adversarial, perturbation).
//! - [`png_grid`]: images side by side in a PNG (original / perturbed / difference, adversarial
//!   examples, …).
//! - [`Outcome`]: what the three kinds of report offer files and baselines.
//! - [`write_page`]: `target/robust/index.html`, one self-contained page over every test.
//! - [`TestRecord`]: `result.json`, a test's verdict in one layout for every kind of test.
//!
//! [`output_dir`] finds `target/robust/` for the running test binary.

mod files;
pub(crate) mod markup;
mod outcome;
mod page;
pub mod png_grid;
mod record;

pub use files::{svg_plot, write, ReportFiles};
pub use outcome::{AdversarialExample, Curve, Metric, Outcome, Provenance};
pub use page::{write_page, Page, PAGE_FILE};
pub use record::{records, RecordBaseline, RecordMetric, TestRecord, RECORD_FILE, RECORD_FORMAT};

use std::path::{Path, PathBuf};

/// `<target>/robust/<test path>`: the folder for files about test `test`
/// (`suite::mnist_cnn::rotation` → `target/robust/suite/mnist_cnn/rotation`).
///
/// The target folder is `CARGO_TARGET_DIR` when it is set, otherwise the nearest folder above
/// the running executable that holds cargo's `CACHEDIR.TAG` (what `cargo test` runs lives in
/// `target/debug/deps/`), otherwise `<manifest_dir>/target`.
pub fn output_dir(manifest_dir: &Path, test: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            exe.ancestors()
                .find(|dir| dir.join("CACHEDIR.TAG").is_file())
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(|| manifest_dir.join("target"));
    let target = if target.is_relative() {
        manifest_dir.join(target)
    } else {
        target
    };
    test.split("::")
        .fold(target.join("robust"), |dir, part| dir.join(sanitize(part)))
}

/// A file-name-safe version of one path component.
pub(crate) fn sanitize(part: &str) -> String {
    part.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod should {
    use super::*;

    #[test]
    fn put_each_test_in_its_own_folder() {
        let dir = output_dir(Path::new("/repo"), "suite::mnist_cnn::rotation+shift");
        assert!(
            dir.ends_with("robust/suite/mnist_cnn/rotation_shift"),
            "{dir:?}"
        );
    }
}
