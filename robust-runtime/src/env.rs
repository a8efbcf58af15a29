//! Every environment variable the runtime reads, in one table, read once per process (insta's
//! `env.rs`, trybuild's `src/env.rs`). The first read also warns, on standard error, about
//! `ROBUST_*` variables that are not in the table (`ROBUST_SEEED=3` would otherwise be ignored
//! without a word), with the closest known name.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use crate::{Error, Result};

/// One variable: its name and what it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Var {
    /// `ROBUST_SEED`.
    pub name: &'static str,
    /// What it sets.
    pub doc: &'static str,
}

/// `ROBUST_SEED`: the seed of tests that do not set `seed` (default 0).
pub const SEED: Var = Var {
    name: "ROBUST_SEED",
    doc: "seed of tests that do not set `seed` (default 0)",
};
/// `ROBUST_CASES`: the perturbations per sample of tests that do not set `cases` (default 256).
pub const CASES: Var = Var {
    name: "ROBUST_CASES",
    doc: "perturbations per sample of tests that do not set `cases` (default 256)",
};
/// `ROBUST_DEVICE`: `cpu`, `cuda` or `auto`, overriding every test's `device`.
pub const DEVICE: Var = Var {
    name: "ROBUST_DEVICE",
    doc: "`cpu`, `cuda` or `auto`, overriding every test's `device`",
};
/// `ROBUST_PRECISION`: `f32` or `tf32`, overriding the `precision` of every attack and
/// perturbation test (certification stays f32).
pub const PRECISION: Var = Var {
    name: "ROBUST_PRECISION",
    doc: "`f32` or `tf32`, overriding the `precision` of every attack and perturbation test on CUDA (certification stays f32)",
};
/// `ROBUST_UPDATE`: what a run writes to `robust-baselines/` (`auto`, `new`, `always`, `no`).
pub const UPDATE: Var = Var {
    name: "ROBUST_UPDATE",
    doc: "what a run writes to `robust-baselines/`: `auto` (default), `new`, `always` or `no`",
};
/// `ROBUST_BLESS=1`: record every baseline (`ROBUST_UPDATE=always`).
pub const BLESS: Var = Var {
    name: "ROBUST_BLESS",
    doc: "`1`: record every baseline, as `ROBUST_UPDATE=always`",
};
/// `ROBUST_PROGRESS`: progress bars `always` (`1`), `never` (`0`), or on a terminal (default).
pub const PROGRESS: Var = Var {
    name: "ROBUST_PROGRESS",
    doc: "progress bars: `always` (`1`), `never` (`0`), or on a terminal (default)",
};
/// `ROBUST_MAX_INFLATED_BYTES`: the most bytes a compressed IDX file may inflate to.
pub const MAX_INFLATED_BYTES: Var = Var {
    name: "ROBUST_MAX_INFLATED_BYTES",
    doc: "the most bytes a compressed IDX file may inflate to (default 1 GiB)",
};
/// `CI`: set by CI services; baselines are then never written (`ROBUST_UPDATE=auto`).
pub const CI: Var = Var {
    name: "CI",
    doc: "set by CI services: `ROBUST_UPDATE=auto` then writes nothing",
};

/// Every variable the runtime reads.
pub const VARS: &[Var] = &[
    SEED,
    CASES,
    DEVICE,
    PRECISION,
    UPDATE,
    BLESS,
    PROGRESS,
    MAX_INFLATED_BYTES,
    CI,
];

/// `ROBUST_*` variables that the workspace's own tools read, not the runtime: known, so never
/// warned about.
pub const TOOLS: &[Var] = &[
    Var {
        name: "ROBUST_TORCH_PYTHON",
        doc: "the Python with PyTorch that `cargo xtask bench` runs its side with",
    },
    Var {
        name: "ROBUST_README",
        doc: "`write`: robust-spec's README test rewrites the key table",
    },
];

/// The variables of the table that are set (and not empty), as the process started.
static VALUES: LazyLock<BTreeMap<&'static str, String>> = LazyLock::new(|| {
    let names: Vec<&str> = VARS.iter().chain(TOOLS).map(|v| v.name).collect();
    for (name, suggestion) in unknown(std::env::vars().map(|(k, _)| k), &names) {
        let hint = suggestion.map_or(String::new(), |s| format!("; did you mean `{s}`?"));
        eprintln!("robust: ignoring unknown environment variable `{name}`{hint}");
    }
    VARS.iter()
        .filter_map(|v| {
            let value = std::env::var(v.name).ok()?;
            let value = value.trim();
            (!value.is_empty()).then(|| (v.name, value.to_owned()))
        })
        .collect()
});

/// The `ROBUST_*` names among `names` that are not in `known`, each with the closest known one.
pub fn unknown(
    names: impl IntoIterator<Item = String>,
    known: &[&'static str],
) -> Vec<(String, Option<&'static str>)> {
    let mut out: Vec<(String, Option<&'static str>)> = names
        .into_iter()
        .filter(|n| n.starts_with("ROBUST_") && !known.contains(&n.as_str()))
        .map(|n| {
            // `closest` compares in lower case.
            let lower: Vec<String> = known.iter().map(|k| k.to_lowercase()).collect();
            let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
            let closest = robust_spec::suggest::closest(&n, &lower)
                .and_then(|c| lower.iter().position(|l| *l == c))
                .map(|i| known[i]);
            (n, closest)
        })
        .collect();
    out.sort();
    out
}

/// The value of `var`, trimmed; `None` when unset or empty.
pub fn get(var: Var) -> Option<&'static str> {
    VALUES.get(var.name).map(String::as_str)
}

/// The value of `var` parsed as a `T`; `None` when unset, an error naming the variable and
/// `expected` when it does not parse.
pub fn parse<T: std::str::FromStr>(var: Var, expected: &str) -> Result<Option<T>> {
    match get(var) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| Error::param(var.name, v, expected.to_owned())),
    }
}

#[cfg(test)]
mod should {
    use super::*;

    #[test]
    fn name_unknown_robust_variables_with_the_closest_known_one() {
        let names = ["ROBUST_SEEED", "ROBUST_SEED", "PATH", "ROBUST_X"].map(String::from);
        let known: Vec<&str> = VARS.iter().map(|v| v.name).collect();
        assert_eq!(
            unknown(names, &known),
            [
                ("ROBUST_SEEED".to_string(), Some("ROBUST_SEED")),
                ("ROBUST_X".to_string(), None),
            ]
        );
    }

    #[test]
    fn list_every_variable_once() {
        for (i, v) in VARS.iter().enumerate() {
            assert!(
                !VARS[..i].iter().any(|w| w.name == v.name),
                "{} twice",
                v.name
            );
        }
    }
}
