//! The committed file of past failures, replayed before any new case (proptest's
//! `proptest-regressions/`, for perturbation tests).
//!
//! Each failure is stored as the seed of the case that found it and the sample it broke; the
//! seed regenerates the perturbation from the test's strategy and shrinks it again, so the file
//! stays valid when the parameters change. A line reads
//!
//! ```text
//! cc 5f3a9c2e1b7d4a60 sample 17 # rotation by -12.312°: 7 → 2
//! ```
//!
//! where everything after `#` is for the reader. Tests write new failures to the file when they
//! fail; commit it so that every checkout replays them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

const HEADER: &str = "\
# Seeds of perturbations that changed a model's prediction, found by robust's perturbation
# tests. Each line is replayed on its sample before any new case is generated.
# Commit this file, so that everyone, CI included, replays these failures.
";

/// One stored failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Regression {
    /// Seed of the case (see [`super::tree_from_seed`]).
    pub seed: u64,
    /// Index of the sample in the test's data.
    pub sample: usize,
}

/// The failures stored in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Regressions {
    path: PathBuf,
    entries: Vec<Regression>,
}

impl Regressions {
    /// Reads `path`; a missing file has no entries.
    pub fn load(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let entries = parse(&text, &path)?;
        Ok(Regressions { path, entries })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored failures, in file order.
    pub fn entries(&self) -> &[Regression] {
        &self.entries
    }

    /// Appends the failures not stored yet, each with its comment, creating the file (and its
    /// folders) if needed. Returns how many were new.
    pub fn append(&mut self, failures: &[(Regression, String)]) -> Result<usize> {
        let mut text = String::new();
        let mut added = 0;
        for (entry, comment) in failures {
            if self.entries.contains(entry) {
                continue;
            }
            let comment = comment.replace(['\n', '\r'], " ");
            let _ = writeln!(
                text,
                "cc {:016x} sample {} # {comment}",
                entry.seed, entry.sample
            );
            self.entries.push(*entry);
            added += 1;
        }
        if added == 0 {
            return Ok(0);
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let existing = std::fs::metadata(&self.path)
            .map(|m| m.len() > 0)
            .unwrap_or(false);
        if !existing {
            text.insert_str(0, HEADER);
        }
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| Error::io(&self.path, e))?;
        Ok(added)
    }
}

fn parse(text: &str, path: &Path) -> Result<Vec<Regression>> {
    let mut entries = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = || {
            Error::format(
                "regressions",
                path,
                format!(
                    "line {}: `{line}`; expected `cc <16 hex digits> sample <index>`",
                    number + 1
                ),
            )
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        let [cc, seed, sample_word, sample] = words[..] else {
            return Err(bad());
        };
        if cc != "cc" || sample_word != "sample" {
            return Err(bad());
        }
        let seed = u64::from_str_radix(seed, 16).map_err(|_| bad())?;
        let sample = sample.parse().map_err(|_| bad())?;
        entries.push(Regression { seed, sample });
    }
    Ok(entries)
}

#[cfg(test)]
mod should {
    use super::*;

    #[test]
    fn write_and_read_back_new_failures_once() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("robust-regressions-{}", std::process::id()));
        let path = dir.join("nested/test.txt");
        let mut file = Regressions::load(&path)?;
        assert!(file.entries().is_empty());
        let a = Regression {
            seed: 0xdead_beef,
            sample: 3,
        };
        let b = Regression {
            seed: u64::MAX,
            sample: 0,
        };
        assert_eq!(
            file.append(&[(a, "rotation: 7 → 2\nsecond line".into())])?,
            1
        );
        assert_eq!(file.append(&[(a, String::new()), (b, "x".into())])?, 1);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        assert!(text.starts_with("# Seeds"), "{text}");
        assert!(
            text.contains("cc 00000000deadbeef sample 3 # rotation: 7 → 2 second line\n"),
            "{text}"
        );
        assert_eq!(Regressions::load(&path)?.entries(), &[a, b]);
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }

    #[test]
    fn reject_a_malformed_line_naming_it() {
        let err = parse("# fine\ncc 12 sample x\n", Path::new("r.txt")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed regressions file r.txt: line 2: `cc 12 sample x`; expected `cc <16 hex \
             digits> sample <index>`"
        );
    }
}
