//! Runs a VNN-COMP benchmark's instances (its `*_instances.csv`: network, property, timeout)
//! through [`robust_runtime::verify`], one line per instance, then a Markdown table per network
//! and ε beside α,β-CROWN's published VNN-COMP 2021 result and a check of every verdict
//! against the published ones (`tests/fixtures/vnncomp2021-mnistfc/published_results.csv`,
//! written by `tests/reference/vnncomp2021_results.py`).
//!
//! ```sh
//! cargo run --release --example vnncomp -- ../shared/data/vnncomp2021-mnistfc
//! cargo run --release --example vnncomp -- DIR --timeout 30 --filter 256x2
//! ```
//!
//! Flags: `--timeout S` caps every instance's budget at `S` seconds; `--filter TEXT` keeps the
//! instances whose name contains it; `--alpha-iterations`, `--bab-iterations`, `--batch`,
//! `--candidates`, `--refine`, `--stabilise SHARE`, `--stabilise-branches N`, `--restarts N`
//! (PGD's starts per disjunct) and `--steps N` set [`Options`]. `ROBUST_VERIFY_TRACE=1`
//! prints, per instance, the time of the root's layer bounds and the unstable neurons per layer,
//! what stabilisation proved per layer, each disjunct's α-CROWN bound, each disjunct branch and
//! bound closes, how much of the input space it had left when a budget ran out, and where its
//! time went (the branches' refined layer bounds, their β-CROWN bounds, the branching choice).

use std::collections::BTreeMap;
use std::time::Duration;

use robust_runtime::nn::Graph;
use robust_runtime::prelude::*;
use robust_runtime::verify::{self, Options};
use robust_runtime::vnnlib::Property;

/// Counts per verdict, and time.
#[derive(Default)]
struct Tally {
    verified: usize,
    falsified: usize,
    unknown: usize,
    seconds: f64,
    published: [usize; 3],
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = (args.first().filter(|a| !a.starts_with("--")).cloned())
        .unwrap_or_else(|| "../shared/data/vnncomp2021-mnistfc".into());
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let num =
        |name: &str, default: usize| flag(name).map_or(default, |s| s.parse().expect("a number"));
    let cap: Option<f64> = flag("--timeout").map(|s| s.parse().expect("seconds"));
    let filter = flag("--filter").cloned().unwrap_or_default();
    let d = Options::default();
    let base = Options {
        refine: args.iter().any(|a| a == "--refine"),
        batch: num("--batch", d.batch),
        alpha_iterations: num("--alpha-iterations", d.alpha_iterations),
        bab_iterations: num("--bab-iterations", d.bab_iterations),
        candidates: num("--candidates", d.candidates),
        stabilise: flag("--stabilise").map_or(d.stabilise, |s| s.parse().expect("a share")),
        stabilise_branches: num("--stabilise-branches", d.stabilise_branches),
        restarts: num("--restarts", d.restarts),
        steps: num("--steps", d.steps),
        ..d
    };
    let published_file = format!(
        "{}/tests/fixtures/vnncomp2021-mnistfc/published_results.csv",
        env!("CARGO_MANIFEST_DIR")
    );
    // (network, property) → (α,β-CROWN's result, tools that said sat, tools that said unsat).
    let mut published = BTreeMap::new();
    for line in std::fs::read_to_string(&published_file)?.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let tools = |s: &str| -> Vec<String> {
            // RPM's mnistfc results were withdrawn by the organisers (a VNN-LIB parsing bug).
            s.split_whitespace()
                .filter(|t| *t != "RPM")
                .map(String::from)
                .collect()
        };
        published.insert(
            (f[0].to_string(), f[1].to_string()),
            (f[2].to_string(), tools(f[4]), tools(f[5])),
        );
    }
    let csv = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with("_instances.csv"))
        .ok_or("no *_instances.csv in the benchmark folder")?;
    let mut tallies = BTreeMap::<(String, String), Tally>::new();
    let mut contradictions = Vec::new();
    let mut refuted = Vec::new();
    let mut models = BTreeMap::new();
    for line in std::fs::read_to_string(&csv)?.lines() {
        let parts: Vec<&str> = line.split(',').map(str::trim).collect();
        let [net, prop, timeout] = parts[..] else {
            continue;
        };
        let (net_name, prop_name) = (
            net.trim_end_matches(".onnx"),
            prop.trim_end_matches(".vnnlib"),
        );
        let name = format!("{net_name}-{prop_name}");
        if !name.contains(&filter) {
            continue;
        }
        let mut timeout: f64 = timeout.parse()?;
        if let Some(cap) = cap {
            timeout = timeout.min(cap);
        }
        if !models.contains_key(net) {
            let graph = Graph::from_onnx(format!("{dir}/{net}"), &Device::Cpu)?;
            models.insert(net.to_string(), Model::new(graph));
        }
        let property = Property::from_file(format!("{dir}/{prop}"))?;
        let options = Options {
            timeout: Duration::from_secs_f64(timeout),
            ..base.clone()
        };
        let out = verify::verify(&models[net], &property, &options)?;
        let word = out.verdict.vnncomp();
        let (theirs, said_sat, said_unsat) = published
            .get(&(net_name.to_string(), prop_name.to_string()))
            .cloned()
            .unwrap_or_else(|| ("unknown".into(), Vec::new(), Vec::new()));
        // A proof against a published counterexample is a contradiction; a counterexample
        // (checked on the model's own forward pass) against a published proof refutes that proof.
        if word == "unsat" && !said_sat.is_empty() {
            contradictions.push(format!(
                "{name}: unsat, against sat by {}",
                said_sat.join(" ")
            ));
        }
        if word == "sat" && !said_unsat.is_empty() {
            refuted.push(format!(
                "{name}: our checked counterexample refutes unsat by {}",
                said_unsat.join(" ")
            ));
        }
        println!(
            "{name:<36} {word:<8} {:>7.2} s  {:<11} branches {:>8}  (α,β-CROWN 2021: {theirs})",
            out.time.as_secs_f64(),
            out.stage,
            out.branches,
        );
        let eps = prop_name.rsplit('_').next().unwrap_or("").to_string();
        let t = tallies.entry((net_name.to_string(), eps)).or_default();
        match word {
            "unsat" => t.verified += 1,
            "sat" => t.falsified += 1,
            _ => t.unknown += 1,
        }
        t.seconds += out.time.as_secs_f64();
        t.published[match theirs.as_str() {
            "unsat" => 0,
            "sat" => 1,
            _ => 2,
        }] += 1;
    }
    println!();
    println!("| network | ε | instances | verified | falsified | unknown | solved | mean time per instance | α,β-CROWN 2021: verified / falsified / unknown |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut all = Tally::default();
    for ((net, eps), t) in &tallies {
        let n = t.verified + t.falsified + t.unknown;
        println!(
            "| {net} | {eps} | {n} | {} | {} | {} | {} | {:.1} s | {} / {} / {} |",
            t.verified,
            t.falsified,
            t.unknown,
            t.verified + t.falsified,
            t.seconds / n as f64,
            t.published[0],
            t.published[1],
            t.published[2]
        );
        all.verified += t.verified;
        all.falsified += t.falsified;
        all.unknown += t.unknown;
        all.seconds += t.seconds;
        (0..3).for_each(|i| all.published[i] += t.published[i]);
    }
    let n = all.verified + all.falsified + all.unknown;
    println!(
        "| **all** | | {n} | {} | {} | {} | **{}** | {:.1} s | {} / {} / {} (solved {}) |",
        all.verified,
        all.falsified,
        all.unknown,
        all.verified + all.falsified,
        all.seconds / n.max(1) as f64,
        all.published[0],
        all.published[1],
        all.published[2],
        all.published[0] + all.published[1]
    );
    println!();
    println!(
        "contradictions with published verdicts (RPM's withdrawn results aside): {}",
        contradictions.len()
    );
    for c in &contradictions {
        println!("  {c}");
    }
    for r in &refuted {
        println!("  {r}");
    }
    if !contradictions.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
