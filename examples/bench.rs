//! robust against PyTorch eager on the same machine, in the same invocation, on the same
//! weights and inputs: PGD-L∞ (10 steps) on the MNIST MLP, the MNIST CNN and a ResNet-18 on
//! 3×32×32 inputs, FGSM and APGD-CE on the CNN, IBP and CROWN bounds and randomized smoothing on
//! the certified-training CNNs, and the peak memory of PGD on ResNet-18. The PyTorch side is
//! `tests/reference/bench_torch.py` (torchattacks for APGD, auto_LiRPA for CROWN, when
//! importable), run for each row right after robust's side of it (so that a drift in the
//! machine's speed reaches both sides of a row alike); each row prints both throughputs and
//! their ratio (BENCHMARKS.md).
//!
//! ```text
//! cargo xtask bench                                   # = cargo run --release --example bench
//! cargo run --release --features cuda --example bench -- --device cuda --only pgd
//! bench [--device cpu|cuda] [--torch PYTHON|none] [--only WORD] [--batch N] [--resnet-batch N]
//!       [--reps N] [--min-time S] [--out FILE] [--breakdown] [--ops] [--no-engine]
//!       [--precision default|f32|tf32]
//! ```
//!
//! `--precision` sets both sides' f32 products on CUDA to the same mode: `f32` strict on both
//! (PyTorch's `allow_tf32` off for matmul and cuDNN), `tf32` TF32 on both (robust's
//! [`Precision::Tf32`](robust_runtime::device::Precision), PyTorch's `allow_tf32` on for
//! both), or `default` (the default) each side's default: robust f32, PyTorch f32 matmul and
//! TF32 cuDNN convolutions. The table's machine line says which. The CPU has no TF32.
//!
//! Each side's number is the best of at least `--reps` (3) timed runs after a warm-up, and of
//! more until the timed runs took `--min-time` (1) seconds together: a row of 10 ms is then the
//! best of about 100 runs, not of 3 that one stall of the VM's host can all reach.
//!
//! PyTorch comes from `--torch`, else `$ROBUST_TORCH_PYTHON`, else `python3`; without one that
//! imports torch and safetensors its column says why. Both sides use as many threads as candle
//! does here (`RAYON_NUM_THREADS`, default: all cores). Timing is never asserted anywhere: this is
//! a measurement.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use candle_core::{DType, Tensor};
use robust_runtime::attack::{self, AttackBatch, AttackParams};
use robust_runtime::certify::{self, Method, Smoothing};
use robust_runtime::device::{with_precision, DeviceChoice, Precision};
use robust_runtime::prelude::*;

/// What a row runs.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// An attack by name, `steps` steps (1 for FGSM).
    Attack { name: &'static str, steps: usize },
    /// Bounds of every margin over the L∞ box.
    Bounds(Method),
    /// CERTIFY with `n0` + `n` noisy copies per sample.
    Smoothing { n0: usize, n: usize },
}

/// One workload, run by both sides.
struct Row {
    /// Key shared with the PyTorch side.
    key: String,
    title: String,
    kind: Kind,
    /// `mnist_mlp`, `mnist_cnn`, `resnet18`, `mnist_ibp` or `mnist_noise`.
    model: &'static str,
    weights: PathBuf,
    inputs: PathBuf,
    batch: usize,
    eps: f64,
    alpha: f64,
    /// What one unit of work is: `step·images/s`, `images/s` or `samples/s`.
    unit: &'static str,
    /// One timed run and no warm-up, on both sides: a run takes minutes on one of them.
    once: bool,
}

impl Row {
    /// Units of work per run (the throughput's numerator).
    fn work(&self) -> f64 {
        match self.kind {
            // FAB's rows count images: a sample stops costing once broken.
            Kind::Attack {
                name: "fab" | "fab-t",
                ..
            } => self.batch as f64,
            Kind::Attack { steps, .. } => (self.batch * steps) as f64,
            Kind::Bounds(_) | Kind::Smoothing { .. } => self.batch as f64,
        }
    }

    /// The plan entry `bench_torch.py` reads.
    fn plan(&self) -> String {
        let (kind, steps, n0, n) = match self.kind {
            Kind::Attack { name, steps } => (name.to_string(), steps, 0, 0),
            Kind::Bounds(m) => (m.label().to_lowercase(), 0, 0, 0),
            Kind::Smoothing { n0, n } => ("smoothing".into(), 0, n0, n),
        };
        format!(
            "{{\"key\": \"{}\", \"kind\": \"{kind}\", \"model\": \"{}\", \"weights\": \"{}\", \
             \"inputs\": \"{}\", \"batch\": {}, \"eps\": {}, \"alpha\": {}, \"steps\": {steps}, \
             \"n0\": {n0}, \"n\": {n}, \"sigma\": 0.25, \"once\": {}}}",
            self.key,
            self.model,
            self.weights.display(),
            self.inputs.display(),
            self.batch,
            self.eps,
            self.alpha,
            self.once
        )
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: bench [--device cpu|cuda] [--torch PYTHON|none] [--only WORD] [--batch N] \
         [--resnet-batch N] [--reps N] [--min-time S] [--out FILE] [--breakdown] [--ops] \
         [--no-engine] [--precision default|f32|tf32] [--rss-child KEY]"
    );
    std::process::exit(2)
}

/// The repository root: where the fixtures and the PyTorch script are. The compile-time path
/// when it exists, else the current folder (a binary copied to another machine runs from the
/// checkout's root there).
fn root() -> PathBuf {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if built.join("tests/fixtures").exists() {
        built
    } else {
        std::env::current_dir().expect("a current folder")
    }
}

struct Options {
    device: String,
    torch: String,
    only: Option<String>,
    batch: usize,
    resnet_batch: Option<usize>,
    reps: usize,
    min_time: f64,
    out: Option<PathBuf>,
    breakdown: bool,
    ops: bool,
    /// `default`, `f32` or `tf32` (see the module's docs).
    precision: String,
    rss_child: Option<String>,
}

impl Options {
    /// robust's side of `--precision`.
    fn ours(&self) -> Precision {
        if self.precision == "tf32" {
            Precision::Tf32
        } else {
            Precision::F32
        }
    }
}

fn options() -> Options {
    let mut o = Options {
        device: "cpu".into(),
        torch: std::env::var("ROBUST_TORCH_PYTHON").unwrap_or_else(|_| "python3".into()),
        only: None,
        batch: 256,
        resnet_batch: None,
        reps: 3,
        min_time: 1.0,
        out: None,
        breakdown: false,
        ops: false,
        precision: "default".into(),
        rss_child: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--breakdown" => o.breakdown = true,
            "--ops" => o.ops = true,
            "--no-engine" => NO_ENGINE.store(true, std::sync::atomic::Ordering::Relaxed),
            _ => {
                let Some(value) = args.next() else { usage() };
                let number = |v: &str| v.parse::<usize>().unwrap_or_else(|_| usage());
                match arg.as_str() {
                    "--device" => o.device = value,
                    "--torch" => o.torch = value,
                    "--only" => o.only = Some(value),
                    "--batch" => o.batch = number(&value),
                    "--resnet-batch" => o.resnet_batch = Some(number(&value)),
                    "--reps" => o.reps = number(&value).max(1),
                    "--min-time" => o.min_time = value.parse().unwrap_or_else(|_| usage()),
                    "--out" => o.out = Some(PathBuf::from(value)),
                    "--rss-child" => o.rss_child = Some(value),
                    "--precision" if ["default", "f32", "tf32"].contains(&value.as_str()) => {
                        o.precision = value
                    }
                    _ => usage(),
                }
            }
        }
    }
    o
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let o = options();
    let dev = robust_runtime::device::select_exactly(DeviceChoice::from_name(&o.device)?)?;
    let on_gpu = !dev.is_cpu();
    // ResNet-18 at batch 64 on the CPU (issue 9's workload), at the MNIST batch on the GPU.
    let resnet_batch = o.resnet_batch.unwrap_or(if on_gpu { o.batch } else { 64 });
    let root = root();
    let scratch = root.join("target/bench");
    std::fs::create_dir_all(&scratch)?;
    let rows = rows(&root, &scratch, o.batch, resnet_batch)?;
    let rows: Vec<Row> = rows
        .into_iter()
        .filter(|r| o.only.as_ref().is_none_or(|w| r.key.contains(w.as_str())))
        .collect();

    if let Some(key) = &o.rss_child {
        // A child process: one row, then its memory (see `peak_memory`).
        let row = rows.iter().find(|r| &r.key == key).ok_or("no such row")?;
        return with_precision(&dev, o.ours(), || Ok(rss_child(row, &dev)))?;
    }

    let threads = candle_core::utils::get_num_threads();
    println!(
        "robust on {} ({threads} CPU threads), the best of at least {} timed runs and {} s \
         after a warm-up",
        robust_runtime::device::name(&dev),
        o.reps,
        o.min_time
    );
    let timing = Timing {
        reps: o.reps,
        min_time: o.min_time,
    };
    let mut ours = Vec::new();
    // Each row's two sides back to back: this VM's speed drifts with its host's load over
    // minutes, and a drift then reaches both sides of a row alike.
    let mut theirs: Result<HashMap<String, Result<f64, String>>, String> = Ok(HashMap::new());
    for row in &rows {
        let model = load(row, &dev)?;
        let seconds = with_precision(&dev, o.ours(), || time_row(row, &model, &dev, timing))?;
        println!(
            "  robust  {:<44} {:>10.1} {} ({:.2} ms per run)",
            row.title,
            row.work() / seconds,
            row.unit,
            1e3 * seconds
        );
        if o.breakdown {
            if let Kind::Attack { steps, .. } = row.kind {
                let (forward, gradient) =
                    with_precision(&dev, o.ours(), || time_phases(row, &model, &dev, timing))?;
                println!(
                    "          forward {:.2} ms, forward + input gradient + step {:.2} ms, the \
                     rest of a step {:.2} ms",
                    1e3 * forward,
                    1e3 * gradient,
                    1e3 * (seconds / steps as f64 - gradient).max(0.0)
                );
            }
        }
        ours.push(row.work() / seconds);
        if let Ok(all) = &mut theirs {
            match run_torch(&o, &root, std::slice::from_ref(row), threads, false) {
                Ok(one) => all.extend(one),
                Err(why) => theirs = Err(why),
            }
        }
    }
    if o.ops {
        time_cnn_ops(&dev, o.batch)?;
    }
    let memory = rows
        .iter()
        .find(|r| r.model == "resnet18" && matches!(r.kind, Kind::Attack { name: "pgd", .. }))
        .map(|row| peak_memory(&o, &root, row));

    let machine = format!("{}; {}", machine_name(&dev), precision_line(&o, on_gpu));
    let mut table = String::from(
        "| workload | batch | robust | PyTorch eager | unit | robust ÷ PyTorch |\n\
         |---|---|---|---|---|---|\n",
    );
    for (row, ours) in rows.iter().zip(&ours) {
        let (theirs, ratio) = match &theirs {
            Ok(t) => match t.get(&row.key) {
                Some(Ok(t)) => (format!("{t:.1}"), format!("**{:.2}×**", ours / t)),
                Some(Err(why)) => (format!("– ({why})"), "–".into()),
                None => ("missing".into(), "–".into()),
            },
            Err(_) => ("–".into(), "–".into()),
        };
        table.push_str(&format!(
            "| {} | {} | {ours:.1} | {theirs} | {} | {ratio} |\n",
            row.title, row.batch, row.unit
        ));
    }
    if let Some(m) = &memory {
        table.push_str(&format!("\n{m}\n"));
    }
    println!("\n{machine}\n\n{table}");
    if let Err(why) = &theirs {
        println!("PyTorch side not run: {why}");
    }
    if let Some(path) = &o.out {
        std::fs::write(path, format!("{machine}\n\n{table}"))?;
    }
    Ok(())
}

/// Every workload, with its inputs written to `scratch` for the PyTorch side.
fn rows(
    root: &Path,
    scratch: &Path,
    batch: usize,
    resnet_batch: usize,
) -> robust_runtime::Result<Vec<Row>> {
    let fixtures = root.join("tests/fixtures");
    let cpu = candle_core::Device::Cpu;
    let digits = Dataset::mnist_sample()?.test_split().take(batch)?;
    let mnist = scratch.join(format!("mnist_{batch}.safetensors"));
    save(
        &mnist,
        digits.inputs(),
        &Tensor::from_slice(digits.labels(), digits.len(), &cpu)?,
    )?;
    // ResNet-18: seeded untrained weights and uniform images, written for PyTorch to read.
    let resnet = scratch.join("resnet18.safetensors");
    let mut rng = Rng::seed_from_u64(18);
    candle_core::safetensors::save(&zoo::ResNet18::random_weights(&mut rng, 10)?, &resnet)?;
    let images = Tensor::from_vec(
        rng.uniform_vec(resnet_batch * 3 * 32 * 32, 0.0, 1.0),
        (resnet_batch, 3, 32, 32),
        &cpu,
    )?;
    let classes: Vec<u32> = (0..resnet_batch).map(|i| (i % 10) as u32).collect();
    let cifar = scratch.join(format!("cifar_{resnet_batch}.safetensors"));
    save(
        &cifar,
        &images,
        &Tensor::from_slice(&classes, resnet_batch, &cpu)?,
    )?;
    let thousand = Dataset::mnist_sample()?.test_split().take(1000)?;
    let mnist_1000 = scratch.join("mnist_1000.safetensors");
    save(
        &mnist_1000,
        thousand.inputs(),
        &Tensor::from_slice(thousand.labels(), thousand.len(), &cpu)?,
    )?;
    let smoothing_samples = 20.min(batch);
    let row = |key: &str, title: String, kind, model, weights: PathBuf, inputs: &Path, batch| {
        let (eps, alpha, unit) = match (model, kind) {
            ("resnet18", _) => (8.0 / 255.0, 2.0 / 255.0, "step·images/s"),
            (_, Kind::Attack { name: "fgsm", .. }) => (0.1, 0.1, "images/s"),
            // FAB as AutoAttack's standard version runs it at the MLP's ε.
            (
                _,
                Kind::Attack {
                    name: "fab" | "fab-t",
                    ..
                },
            ) => (0.05, 0.0, "images/s"),
            (_, Kind::Attack { .. }) => (0.1, 0.01, "step·images/s"),
            ("mnist_cnn" | "mnist_resnet_onnx", _) => (0.005, 0.0, "samples/s"),
            _ => (0.1, 0.0, "samples/s"),
        };
        Row {
            key: key.into(),
            title,
            kind,
            model,
            weights,
            inputs: inputs.to_path_buf(),
            batch,
            eps,
            alpha,
            unit,
            once: matches!(model, "mnist_cnn" | "mnist_resnet_onnx")
                && matches!(kind, Kind::Bounds(_))
                || matches!(
                    kind,
                    Kind::Attack {
                        name: "fab" | "fab-t",
                        ..
                    }
                ),
        }
    };
    let pgd = Kind::Attack {
        name: "pgd",
        steps: 10,
    };
    Ok(vec![
        row(
            "pgd_mlp",
            "PGD-L∞ 10 steps, MNIST MLP".into(),
            pgd,
            "mnist_mlp",
            fixtures.join("mnist_mlp.safetensors"),
            &mnist,
            batch,
        ),
        row(
            "pgd_cnn",
            "PGD-L∞ 10 steps, MNIST CNN".into(),
            pgd,
            "mnist_cnn",
            fixtures.join("mnist_cnn.safetensors"),
            &mnist,
            batch,
        ),
        row(
            "pgd_resnet18",
            "PGD-L∞ 10 steps, ResNet-18 (3×32×32)".into(),
            pgd,
            "resnet18",
            resnet.clone(),
            &cifar,
            resnet_batch,
        ),
        row(
            "fgsm_cnn",
            "FGSM, MNIST CNN".into(),
            Kind::Attack {
                name: "fgsm",
                steps: 1,
            },
            "mnist_cnn",
            fixtures.join("mnist_cnn.safetensors"),
            &mnist,
            batch,
        ),
        row(
            "apgd_cnn",
            "APGD-CE 10 steps, MNIST CNN".into(),
            Kind::Attack {
                name: "apgd",
                steps: 10,
            },
            "mnist_cnn",
            fixtures.join("mnist_cnn.safetensors"),
            &mnist,
            batch,
        ),
        row(
            "fab_t_mlp",
            "FAB-T-L∞ (9 targets, 100 steps) ε = 0.05, 1,000 digits, MNIST MLP".into(),
            Kind::Attack {
                name: "fab-t",
                steps: 100,
            },
            "mnist_mlp",
            fixtures.join("mnist_mlp.safetensors"),
            &mnist_1000,
            1000,
        ),
        row(
            "fab_mlp",
            "FAB-L∞ (100 steps) ε = 0.05, 1,000 digits, MNIST MLP".into(),
            Kind::Attack {
                name: "fab",
                steps: 100,
            },
            "mnist_mlp",
            fixtures.join("mnist_mlp.safetensors"),
            &mnist_1000,
            1000,
        ),
        row(
            "ibp_small_cnn",
            "IBP bounds ε = 0.1, IBP-trained CNN".into(),
            Kind::Bounds(Method::Ibp),
            "mnist_ibp",
            fixtures.join("mnist_ibp.safetensors"),
            &mnist,
            batch,
        ),
        row(
            "crown_small_cnn",
            "CROWN bounds ε = 0.1, IBP-trained CNN".into(),
            Kind::Bounds(Method::Crown),
            "mnist_ibp",
            fixtures.join("mnist_ibp.safetensors"),
            &mnist,
            batch,
        ),
        row(
            "crown_cnn",
            "CROWN bounds ε = 0.005, MNIST CNN".into(),
            Kind::Bounds(Method::Crown),
            "mnist_cnn",
            fixtures.join("mnist_cnn.safetensors"),
            &mnist,
            smoothing_samples,
        ),
        row(
            "crown_resnet",
            "CROWN bounds ε = 0.005, MNIST ResNet (ONNX)".into(),
            Kind::Bounds(Method::Crown),
            "mnist_resnet_onnx",
            fixtures.join("onnx/mnist_resnet.onnx"),
            &mnist,
            smoothing_samples,
        ),
        row(
            "smoothing_small_cnn",
            "Smoothing σ = 0.25, n0 = 100, n = 1,000, noise CNN".into(),
            Kind::Smoothing { n0: 100, n: 1000 },
            "mnist_noise",
            fixtures.join("mnist_noise.safetensors"),
            &mnist,
            smoothing_samples,
        ),
    ])
}

fn save(path: &Path, x: &Tensor, y: &Tensor) -> robust_runtime::Result<()> {
    let tensors: HashMap<String, Tensor> = [("x".to_string(), x.clone()), ("y".into(), y.clone())]
        .into_iter()
        .collect();
    Ok(candle_core::safetensors::save(&tensors, path)?)
}

/// `--no-engine`: every model runs on candle's operations and autograd
/// (`Model::without_engine`), as before the engine, for a before/after column.
static NO_ENGINE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn load(row: &Row, dev: &Device) -> robust_runtime::Result<Model> {
    let model = match row.model {
        "mnist_mlp" => Model::new(zoo::MnistMlp::load(&row.weights, dev)?),
        // Certifiers need the layers: the same network as a `Sequential`.
        "mnist_cnn" if matches!(row.kind, Kind::Bounds(_)) => {
            Model::new(zoo::layers::mnist_cnn().load(&row.weights, dev)?)
        }
        "mnist_cnn" => Model::new(zoo::MnistCnn::load(&row.weights, dev)?),
        "resnet18" => Model::new(zoo::ResNet18::load(&row.weights, dev)?),
        "mnist_resnet_onnx" => Model::new(robust_runtime::nn::Graph::from_onnx(&row.weights, dev)?),
        _ => Model::new(zoo::layers::mnist_small_cnn().load(&row.weights, dev)?),
    };
    Ok(if NO_ENGINE.load(std::sync::atomic::Ordering::Relaxed) {
        model.without_engine()
    } else {
        model
    })
}

fn inputs(row: &Row, dev: &Device) -> robust_runtime::Result<(Tensor, Tensor)> {
    let data = candle_core::safetensors::load(&row.inputs, dev)?;
    let x = data["x"].to_dtype(DType::F32)?.narrow(0, 0, row.batch)?;
    let y = data["y"].narrow(0, 0, row.batch)?;
    Ok((x, y))
}

/// How many timed runs: at least `reps`, and more until they took `min_time` seconds together
/// (a row of 10 ms gets about 100, so that a stall of the VM's host during one run, or three,
/// does not decide it). The PyTorch side (`bench_torch.py`) follows the same rule.
#[derive(Clone, Copy)]
struct Timing {
    reps: usize,
    min_time: f64,
}

impl Timing {
    /// The best of the timed runs of `f` (each timed by `f` itself).
    fn best(
        self,
        mut f: impl FnMut() -> robust_runtime::Result<f64>,
    ) -> robust_runtime::Result<f64> {
        let (mut best, mut total, mut runs) = (f64::INFINITY, 0.0, 0);
        while runs < self.reps || (runs > 0 && total < self.min_time) {
            let t = f()?;
            (best, total, runs) = (best.min(t), total + t, runs + 1);
        }
        Ok(best)
    }
}

/// Seconds per run of the row's whole workload: the best of the timed runs ([`Timing`]) after a
/// warm-up, the device synchronised before the clock stops. `reps = 0`: the warm-up alone.
fn time_row(row: &Row, model: &Model, dev: &Device, timing: Timing) -> robust_runtime::Result<f64> {
    let (x, y) = inputs(row, dev)?;
    let run: Box<dyn Fn() -> robust_runtime::Result<()>> = match row.kind {
        Kind::Attack { name, steps } => {
            let params = AttackParams {
                steps: Some(steps),
                step_size: Some(row.alpha),
                random_start: Some(false),
                ..AttackParams::default()
            };
            let attack = attack::build(name, row.eps, &params)?;
            Box::new(move || {
                let batch = AttackBatch::untargeted(&x, &y, 10);
                attack.perturb(model, &batch, &mut Rng::seed_from_u64(0))?;
                Ok(())
            })
        }
        Kind::Bounds(method) => {
            // A chain, detached once (its engine compiled once); a graph through its model.
            let net = model.network().ok().map(|net| net.detach());
            let labels = y.to_vec1::<u32>()?;
            Box::new(move || {
                let (lower, upper) = certify::input_box(&x, row.eps, InputDomain::default())?;
                let m = match &net {
                    Some(net) => {
                        certify::margin_lower_bounds(net, &lower, &upper, &labels, method)?
                    }
                    None => {
                        certify::model_margin_lower_bounds(model, &lower, &upper, &labels, method)?
                    }
                };
                m.to_vec2::<f32>()?;
                Ok(())
            })
        }
        Kind::Smoothing { n0, n } => {
            let smoothing = Smoothing {
                n0,
                n,
                batch_size: 1000,
                ..Smoothing::new(0.25)
            };
            Box::new(move || {
                let mut rng = Rng::seed_from_u64(0);
                for i in 0..row.batch {
                    smoothing.certify(model, &x.get(i)?, &mut rng)?;
                }
                Ok(())
            })
        }
    };
    if !row.once {
        run()?;
        dev.synchronize()?;
    }
    let timing = if row.once {
        Timing {
            reps: 1,
            min_time: 0.0,
        }
    } else {
        timing
    };
    timing.best(|| {
        let started = Instant::now();
        run()?;
        dev.synchronize()?;
        Ok(started.elapsed().as_secs_f64())
    })
}

/// Seconds for the forward pass alone and for forward + input gradient (one FGSM step: the
/// cross-entropy's input gradient, as PGD's objective, plus one fused step and projection),
/// best of `reps`, device synchronised. Both through the public API, so on the engine where
/// the model runs on it.
fn time_phases(
    row: &Row,
    model: &Model,
    dev: &Device,
    timing: Timing,
) -> robust_runtime::Result<(f64, f64)> {
    let (x, y) = inputs(row, dev)?;
    let best = |f: &dyn Fn() -> robust_runtime::Result<Tensor>| -> robust_runtime::Result<f64> {
        f()?;
        dev.synchronize()?;
        let timing = Timing {
            reps: timing.reps.max(3),
            ..timing
        };
        timing.best(|| {
            let started = Instant::now();
            let out = f()?;
            dev.synchronize()?;
            drop(out);
            Ok(started.elapsed().as_secs_f64())
        })
    };
    let forward = best(&|| model.logits(&x))?;
    let fgsm = attack::build("fgsm", row.eps, &AttackParams::default())?;
    let gradient = best(&|| {
        let batch = AttackBatch::untargeted(&x, &y, 10);
        fgsm.perturb(model, &batch, &mut Rng::seed_from_u64(0))
    })?;
    Ok((forward, gradient))
}

/// Kibibytes of `VmHWM` (peak resident memory) or `VmRSS` of this process.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// In a child process: PGD on the row, then its peak memory and the resident memory after 1
/// and after 4 more runs (growth would be a leak of autograd graphs).
fn rss_child(row: &Row, dev: &Device) -> Result<(), Box<dyn std::error::Error>> {
    let model = load(row, dev)?;
    let warm_up = Timing {
        reps: 0,
        min_time: 0.0,
    };
    time_row(row, &model, dev, warm_up)?; // the one warm-up run
    let after_one = status_kib("VmRSS:");
    for _ in 0..4 {
        time_row(row, &model, dev, warm_up)?;
    }
    let after_more = status_kib("VmRSS:");
    println!("RSS {} {after_one} {after_more}", status_kib("VmHWM:"));
    Ok(())
}

/// Peak resident memory of PGD on the row, ours and PyTorch's, each in a fresh process.
fn peak_memory(o: &Options, root: &Path, row: &Row) -> String {
    let ours = Command::new(std::env::current_exe().expect("this program"))
        .args(["--device", &o.device, "--rss-child", &row.key])
        .args(
            o.resnet_batch
                .map(|b| ["--resnet-batch".to_string(), b.to_string()])
                .into_iter()
                .flatten(),
        )
        .output();
    let ours = ours.ok().and_then(|out| {
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let line = text.lines().find(|l| l.starts_with("RSS "))?.to_string();
        let v: Vec<u64> = line[4..]
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        (v.len() == 3).then(|| (v[0], v[1], v[2]))
    });
    let theirs = run_torch(o, root, std::slice::from_ref(row), 0, true);
    let theirs = theirs
        .ok()
        .and_then(|t| t.get(&format!("{}_rss", row.key)).cloned())
        .and_then(|r| r.ok());
    let mib = |k: u64| k as f64 / 1024.0;
    match ours {
        Some((peak, one, more)) => format!(
            "Peak resident memory of a process running PGD-L∞ 10 steps on ResNet-18, batch {}: \
             robust {:.0} MiB{}; resident after 1 run {:.0} MiB, after 5 runs {:.0} MiB \
             (growth {:+.0} MiB).",
            row.batch,
            mib(peak),
            theirs
                .map(|t| format!(", PyTorch {:.0} MiB", t / 1024.0))
                .unwrap_or_default(),
            mib(one),
            mib(more),
            mib(more) - mib(one)
        ),
        None => "Peak memory: the child process failed.".into(),
    }
}

/// PyTorch's throughput per row key (or why a row was skipped), from `bench_torch.py` run on
/// the same plan; with `rss`, the peak memory of a fresh process running the rows instead.
fn run_torch(
    o: &Options,
    root: &Path,
    rows: &[Row],
    threads: usize,
    rss: bool,
) -> Result<HashMap<String, Result<f64, String>>, String> {
    if o.torch == "none" {
        return Err("--torch none".into());
    }
    let threads = if threads == 0 {
        candle_core::utils::get_num_threads()
    } else {
        threads
    };
    let script = root.join("tests/reference/bench_torch.py");
    let output = Command::new(&o.torch)
        .arg(&script)
        .args(["--device", &o.device, "--threads", &threads.to_string()])
        .args(["--reps", &o.reps.to_string()])
        .args(["--precision", &o.precision])
        .args(["--min-time", &o.min_time.to_string()])
        .args(o.breakdown.then_some("--breakdown"))
        .args(rss.then_some("--rss"))
        .args(rows.iter().map(Row::plan))
        .output()
        .map_err(|e| format!("{}: {e}", o.torch))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !rss {
        print!("{text}");
    }
    if !output.status.success() {
        return Err(format!(
            "{} {} failed: {}",
            o.torch,
            script.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    // Lines `RESULT <key> <value>` or `SKIPPED <key> <why>`.
    Ok(text
        .lines()
        .filter_map(|l| {
            if let Some(rest) = l.strip_prefix("RESULT ") {
                let mut parts = rest.split_whitespace();
                Some((parts.next()?.to_string(), Ok(parts.next()?.parse().ok()?)))
            } else {
                let (key, why) = l.strip_prefix("SKIPPED ")?.split_once(' ')?;
                Some((key.to_string(), Err(why.to_string())))
            }
        })
        .collect())
}

/// The MNIST CNN's and ResNet-18's convolutions one by one at `batch`, forward and the two ways
/// of computing the input gradient: where a step's time goes (`--ops`).
fn time_cnn_ops(dev: &Device, batch: usize) -> robust_runtime::Result<()> {
    use robust_runtime::nn::relu_max_pool2d;
    let time =
        |what: &str, f: &dyn Fn() -> candle_core::Result<Tensor>| -> robust_runtime::Result<()> {
            f()?;
            dev.synchronize()?;
            let mut best = f64::INFINITY;
            for _ in 0..5 {
                let started = Instant::now();
                let out = f()?;
                dev.synchronize()?;
                drop(out);
                best = best.min(started.elapsed().as_secs_f64());
            }
            println!("  op {what:<64} {:>8.3} ms", 1e3 * best);
            Ok(())
        };
    let mut rng = Rng::seed_from_u64(1);
    let mut randn = |shape: &[usize]| -> robust_runtime::Result<Tensor> {
        let n = shape.iter().product();
        Ok(Tensor::from_vec(rng.normal_vec(n), shape, dev)?)
    };
    let x = randn(&[batch, 1, 28, 28])?;
    let (w1, w2) = (randn(&[32, 1, 5, 5])?, randn(&[64, 32, 5, 5])?);
    let (g1, g2) = (randn(&[batch, 32, 28, 28])?, randn(&[batch, 64, 14, 14])?);
    let h1 = randn(&[batch, 32, 14, 14])?;
    let flip = robust_runtime::nn::flipped_kernel;
    let (f1, f2) = (flip(&w1)?, flip(&w2)?);
    let (fc1, a) = (randn(&[1024, 3136])?, randn(&[batch, 3136])?);
    println!(
        "Operations at batch {batch} on {}",
        robust_runtime::device::name(dev)
    );
    time("CNN conv1 forward (1→32, 5×5, 28×28)", &|| {
        x.conv2d(&w1, 2, 1, 1, 1)
    })?;
    time("CNN conv2 forward (32→64, 5×5, 14×14)", &|| {
        h1.conv2d(&w2, 2, 1, 1, 1)
    })?;
    time("conv1 input gradient as conv2d(flipped kernel)", &|| {
        g1.conv2d(&f1, 2, 1, 1, 1)
    })?;
    time("conv1 input gradient as candle conv_transpose2d", &|| {
        g1.conv_transpose2d(&w1, 2, 0, 1, 1)
    })?;
    time("conv1 input gradient, robust's path", &|| {
        robust_runtime::nn::conv_transpose2d(&g1, &w1, 2, 1, (28, 28))
    })?;
    time("conv2 input gradient as conv2d(flipped kernel)", &|| {
        g2.conv2d(&f2, 2, 1, 1, 1)
    })?;
    time("conv2 input gradient as candle conv_transpose2d", &|| {
        g2.conv_transpose2d(&w2, 2, 0, 1, 1)
    })?;
    time("conv2 input gradient, robust's path", &|| {
        robust_runtime::nn::conv_transpose2d(&g2, &w2, 2, 1, (14, 14))
    })?;
    time(
        "ReLU + max-pool 2 forward + first-max backward (32×28×28)",
        &|| {
            let v = candle_core::Var::from_tensor(&g1)?;
            let y = relu_max_pool2d(v.as_tensor(), 2)?;
            let grads = y.sum_all()?.backward()?;
            Ok(grads.get(v.as_tensor()).cloned().unwrap_or(y))
        },
    )?;
    time(
        "candle ReLU + max_pool2d forward + backward (32×28×28)",
        &|| {
            let v = candle_core::Var::from_tensor(&g1)?;
            let y = v.as_tensor().relu()?.max_pool2d(2)?;
            let grads = y.sum_all()?.backward()?;
            Ok(grads.get(v.as_tensor()).cloned().unwrap_or(y))
        },
    )?;
    time("CNN fc1 forward (3136→1024)", &|| a.matmul(&fc1.t()?))?;
    for (c_in, c_out, hw, stride) in [(64, 64, 32, 1), (256, 256, 8, 1), (64, 128, 32, 2)] {
        let x = randn(&[batch, c_in, hw, hw])?;
        let w = randn(&[c_out, c_in, 3, 3])?;
        let g = randn(&[batch, c_out, hw / stride, hw / stride])?;
        let f = flip(&w)?;
        let what = format!("ResNet conv {c_in}→{c_out}, 3×3/{stride}, {hw}×{hw}");
        time(&format!("{what} forward"), &|| {
            x.conv2d(&w, 1, stride, 1, 1)
        })?;
        time(&format!("{what} input grad, robust's path"), &|| {
            robust_runtime::nn::conv_transpose2d(&g, &w, 1, stride, (hw, hw))
        })?;
        if stride == 1 {
            time(&format!("{what} input grad, conv2d(flipped)"), &|| {
                g.conv2d(&f, 1, 1, 1, 1)
            })?;
        }
        time(&format!("{what} input grad, conv_transpose2d"), &|| {
            g.conv_transpose2d(&w, 1, stride - 1, stride, 1)
        })?;
    }
    Ok(())
}

/// The precision flags of both sides, for the table.
fn precision_line(o: &Options, on_gpu: bool) -> String {
    if !on_gpu {
        return "f32 on both sides (the CPU has no TF32)".into();
    }
    match o.precision.as_str() {
        "f32" => "precision: both strict f32 (robust `f32`; PyTorch `allow_tf32` off for matmul \
                  and cuDNN)"
            .into(),
        "tf32" => "precision: both TF32 (robust `tf32`; PyTorch `allow_tf32` on for matmul and \
                   cuDNN)"
            .into(),
        _ => "precision: each side's default (robust `f32`; PyTorch matmul f32, cuDNN \
              convolutions TF32)"
            .into(),
    }
}

/// The machine, for the table: CPU model and core count, the GPU's name on CUDA, the commit.
fn machine_name(dev: &Device) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let gpu = if dev.is_cpu() {
        String::new()
    } else {
        Command::new("nvidia-smi")
            .args(["--query-gpu=name", "--format=csv,noheader"])
            .output()
            .ok()
            .map(|o| format!(", GPU {}", String::from_utf8_lossy(&o.stdout).trim()))
            .unwrap_or_default()
    };
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    format!(
        "Machine: {cpu}, {cores} cores{gpu}; candle {} threads; commit {commit}",
        candle_core::utils::get_num_threads()
    )
}
