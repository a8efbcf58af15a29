//! Runs a VNN-COMP benchmark's instances (its `*_instances.csv`: network, property, timeout)
//! through [`robust_runtime::verify`] and prints one line per instance and a table per
//! network and ε.
//!
//! ```sh
//! cargo run --release --example vnncomp -- ../shared/data/vnncomp2021-mnistfc
//! cargo run --release --example vnncomp -- DIR --timeout 30 --filter 256x2
//! ```

use std::time::Duration;

use robust_runtime::nn::Graph;
use robust_runtime::prelude::*;
use robust_runtime::verify::{self, Options, Verdict};
use robust_runtime::vnnlib::Property;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args
        .first()
        .cloned()
        .unwrap_or_else(|| "../shared/data/vnncomp2021-mnistfc".into());
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let cap: Option<f64> = flag("--timeout").map(|s| s.parse().expect("seconds"));
    let filter = flag("--filter").cloned().unwrap_or_default();
    let csv = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with("_instances.csv"))
        .expect("an instances CSV");
    let mut totals = std::collections::BTreeMap::<String, [usize; 3]>::new();
    for line in std::fs::read_to_string(&csv)?.lines() {
        let parts: Vec<&str> = line.split(',').map(str::trim).collect();
        let [net, prop, timeout] = parts[..] else {
            continue;
        };
        let name = format!(
            "{}-{}",
            net.trim_end_matches(".onnx"),
            prop.trim_end_matches(".vnnlib")
        );
        if !name.contains(&filter) {
            continue;
        }
        let mut timeout: f64 = timeout.parse().expect("a timeout");
        if let Some(cap) = cap {
            timeout = timeout.min(cap);
        }
        let model = Model::new(Graph::from_onnx(format!("{dir}/{net}"), &Device::Cpu)?);
        let property = Property::from_file(format!("{dir}/{prop}"))?;
        let options = Options {
            timeout: Duration::from_secs_f64(timeout),
            ..Options::default()
        };
        let out = verify::verify(&model, &property, &options)?;
        let min_root = out
            .root_bounds
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min);
        println!(
            "{name:<36} {:<8} {:>7.2} s  {:<11} branches {:>8}  root {:>9.4}",
            out.verdict.vnncomp(),
            out.time.as_secs_f64(),
            out.stage,
            out.branches,
            min_root
        );
        let key = format!(
            "{} {}",
            net.trim_end_matches(".onnx"),
            prop.rsplit('_')
                .next()
                .unwrap_or("")
                .trim_end_matches(".vnnlib")
        );
        let t = totals.entry(key).or_default();
        match out.verdict {
            Verdict::Verified => t[0] += 1,
            Verdict::Falsified(_) => t[1] += 1,
            Verdict::Unknown => t[2] += 1,
        }
    }
    for (k, [v, f, u]) in totals {
        println!("{k:<24} verified {v:>3}  falsified {f:>3}  unknown {u:>3}");
    }
    Ok(())
}
