//! `cargo xtask <task>`: the project's maintenance tasks.
//!
//! - `fixtures [mlp|cnn|ibp|noise|pgd]…`: trains the reference models deterministically on the 4,000
//!   training digits of the MNIST sample and writes `tests/fixtures/mnist_{mlp,cnn}.safetensors`,
//!   the certified-training models `mnist_ibp` (IBP) and `mnist_noise` (Gaussian σ = 0.25), plus the
//!   1,000 test digits as `tests/reference/mnist_test.safetensors` for the PyTorch reference script;
//!   `pgd` runs `examples/adversarial_training.rs` to write `mnist_cnn_pgd` (PGD-AT, ε = 0.1).
//!   Tests never train: they load the committed files.
//! - `review`: shows every pending baseline (`robust-baselines/*.json.new`, written by a local
//!   `cargo test` whose metrics differ from the committed baseline) next to the baseline; the
//!   same code as `cargo robust review` ([`robust_runtime::cli`]).
//! - `bless [--reject] [FILTER]`: accepts the pending baselines (whose path contains FILTER),
//!   or deletes them with `--reject` (`cargo robust bless`).
//! - `page-check [PAGE] [--png FILE]`: writes the report page and renders it in headless
//!   Chromium: a screenshot, and an error when a picture does not load or a script fails.
//! - `fuzz [TARGET…] [--cases N] [--seconds S] [--seed SEED]`: mutates valid files of every
//!   format robust reads and checks that loading and using them never panics or hangs (see
//!   [`fuzz`]).

mod fuzz;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use robust_runtime::certify::{self, Method, Smoothing};
use robust_runtime::cli;
use robust_runtime::data::Dataset;
use robust_runtime::defense::{self, init_like_pytorch, Regime, TrainConfig};
use robust_runtime::device::DeviceChoice;
use robust_runtime::eval::RobustnessCase;
use robust_runtime::zoo::{MnistCnn, MnistMlp};
use robust_runtime::{zoo, InputDomain, Model, Rng};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Seed of every random choice in training (initialisation, batch order).
const TRAIN_SEED: u64 = 20260101;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("fixtures") => fixtures(&args[1..]),
        Some("review") => review(),
        Some("bless") => bless(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("page-check") => page_check(&args[1..]),
        Some("fuzz") => fuzz::fuzz(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask fixtures [mlp] [cnn] [ibp] [noise] [pgd]\n       \
                 cargo xtask review\n       cargo xtask bless [--reject] [FILTER]\n       \
                 cargo xtask bench [-- bench options, see examples/bench.rs]\n       \
                 cargo xtask page-check [PAGE] [--png FILE]\n       \
                 cargo xtask fuzz [TARGET…] [--cases N] [--seconds S] [--seed SEED]"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo xtask bench [ARGS]`: robust and PyTorch side by side (`examples/bench.rs`), the table
/// also written to `target/bench/BENCH.md`. PyTorch comes from `$ROBUST_TORCH_PYTHON`, else
/// `python3`; without torch its column says why.
fn bench(args: &[String]) -> Result<()> {
    let root = root();
    let mut args: Vec<String> = args.iter().filter(|a| *a != "--").cloned().collect();
    if !args.iter().any(|a| a == "--out") {
        args.push("--out".into());
        args.push(root.join("target/bench/BENCH.md").display().to_string());
    }
    let status = std::process::Command::new(env!("CARGO"))
        .args(["run", "--release", "--example", "bench", "--"])
        .args(&args)
        .current_dir(&root)
        .status()?;
    if !status.success() {
        return Err(format!("the benchmark failed: {status}").into());
    }
    Ok(())
}

/// This workspace as `cargo robust` sees it (every member's `robust-baselines/`).
fn project() -> Result<cli::Project> {
    Ok(cli::Project::find(&root())?)
}

/// `cargo xtask review`: `cargo robust review` for this workspace.
fn review() -> Result<()> {
    cli::review(&project()?, &mut std::io::stdout())?;
    Ok(())
}

/// `cargo xtask bless [--reject] [FILTER]`: `cargo robust bless` for this workspace.
fn bless(args: &[String]) -> Result<()> {
    let reject = args.iter().any(|a| a == "--reject");
    let filter = args.iter().find(|a| !a.starts_with("--"));
    cli::bless(
        &project()?,
        reject,
        filter.map(String::as_str),
        &mut std::io::stdout(),
    )?;
    Ok(())
}

/// `cargo xtask page-check [PAGE] [--png FILE]`: renders the report page (default
/// `<target>/robust/index.html`, written first by `cargo robust report`'s code) in headless
/// Chromium, writes a screenshot (default: beside the page), and fails when the page says a
/// picture did not load or a script failed, or Chromium logs a console error.
fn page_check(args: &[String]) -> Result<()> {
    let root = root();
    let png_arg = args
        .iter()
        .position(|a| a == "--png")
        .and_then(|i| args.get(i + 1));
    let page = match args
        .iter()
        .find(|a| !a.starts_with("--") && Some(*a) != png_arg)
    {
        Some(p) => PathBuf::from(p),
        None => cli::report(&project()?, None)?.path,
    };
    let page = std::fs::canonicalize(&page)?;
    // Beside the page by default: the page lives in the target folder, wherever that is.
    let png = png_arg
        .map(PathBuf::from)
        .unwrap_or_else(|| page.with_extension("png"));
    let png = if png.is_relative() {
        root.join(png)
    } else {
        png
    };
    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            std::process::Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .ok_or("no Chromium on the PATH (Debian: apt-get install chromium)")?;
    let profile = std::env::temp_dir().join(format!("robust-page-check-{}", std::process::id()));
    let url = format!("file://{}", page.display());
    let browser = |extra: &[String]| {
        std::process::Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--enable-logging=stderr",
                "--virtual-time-budget=10000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(&url)
            .output()
    };
    let dom = browser(&["--dump-dom".into()])?;
    let shot = browser(&[
        "--window-size=1280,2000".into(),
        format!("--screenshot={}", png.display()),
    ])?;
    let _ = std::fs::remove_dir_all(&profile);
    let dom_text = String::from_utf8_lossy(&dom.stdout);
    let logs =
        String::from_utf8_lossy(&dom.stderr).into_owned() + &String::from_utf8_lossy(&shot.stderr);
    let console_errors: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("CONSOLE") && (l.contains("ERROR") || l.contains("\"error\"")))
        .collect();
    let check = dom_text
        .split("data-check=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("missing (the page's check did not run)");
    if check != "ok" || !console_errors.is_empty() || !png.is_file() {
        return Err(format!(
            "the report page {} is broken: data-check {check}; console errors: {}; screenshot {}",
            page.display(),
            if console_errors.is_empty() {
                "none".into()
            } else {
                console_errors.join(" | ")
            },
            if png.is_file() { "written" } else { "missing" }
        )
        .into());
    }
    println!(
        "{}: every picture loaded, no console errors; screenshot {}",
        page.display(),
        png.display()
    );
    Ok(())
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// One model to train.
struct Recipe {
    name: &'static str,
    epochs: usize,
    lr: f64,
    build: fn(VarBuilder) -> candle_core::Result<Box<dyn Module>>,
}

fn fixtures(which: &[String]) -> Result<()> {
    let recipes = [
        Recipe {
            name: "mnist_mlp",
            epochs: 20,
            lr: 1e-3,
            build: |vb| Ok(Box::new(MnistMlp::new(vb)?)),
        },
        Recipe {
            name: "mnist_cnn",
            epochs: 8,
            lr: 1e-3,
            build: |vb| Ok(Box::new(MnistCnn::new(vb)?)),
        },
    ];
    let split = Dataset::mnist_sample()?;
    let root = root();
    std::fs::create_dir_all(root.join("tests/fixtures"))?;
    std::fs::create_dir_all(root.join("tests/reference"))?;
    write_test_split(
        &split.test,
        &root.join("tests/reference/mnist_test.safetensors"),
    )?;
    let wanted = |name: &str| {
        let short = name.trim_start_matches("mnist_");
        which.is_empty() || which.iter().any(|w| w == short || w == name)
    };
    for recipe in &recipes {
        if wanted(recipe.name) {
            let path = root.join(format!("tests/fixtures/{}.safetensors", recipe.name));
            train(recipe, &split.train, &split.test, &path)?;
        }
    }
    for (name, config) in certified_recipes() {
        if wanted(name) {
            let path = root.join(format!("tests/fixtures/{name}.safetensors"));
            train_certified(name, &config, &split.train, &split.test, &path)?;
        }
    }
    // The adversarially trained CNN is what `examples/adversarial_training.rs` produces: the
    // example is the recipe, so the two cannot drift apart.
    if which.is_empty()
        || which
            .iter()
            .any(|w| ["pgd", "cnn_pgd", "mnist_cnn_pgd"].contains(&w.as_str()))
    {
        let status = std::process::Command::new(env!("CARGO"))
            .args([
                "run",
                "--release",
                "--example",
                "adversarial_training",
                "--",
                "--out",
            ])
            .arg(root.join("tests/fixtures/mnist_cnn_pgd.safetensors"))
            .current_dir(&root)
            .status()?;
        if !status.success() {
            return Err(format!("adversarial training failed: {status}").into());
        }
    }
    Ok(())
}

/// The small CNN trained for certification: with IBP (certify with IBP/CROWN at ε = 0.1) and
/// with Gaussian noise σ = 0.25 (certify with randomized smoothing).
fn certified_recipes() -> [(&'static str, TrainConfig); 2] {
    [
        (
            "mnist_ibp",
            TrainConfig {
                epochs: 50,
                batch_size: 50,
                learning_rate: 5e-4,
                seed: TRAIN_SEED,
                regime: Regime::Ibp {
                    eps: 0.2,
                    warmup_epochs: 3,
                    ramp_epochs: 25,
                    kappa: 0.5,
                },
                device: DeviceChoice::Cpu,
            },
        ),
        (
            "mnist_noise",
            TrainConfig {
                epochs: 20,
                batch_size: 64,
                learning_rate: 1e-3,
                seed: TRAIN_SEED,
                regime: Regime::GaussianNoise { sigma: 0.25 },
                device: DeviceChoice::Cpu,
            },
        ),
    ]
}

fn train_certified(
    name: &str,
    config: &TrainConfig,
    train: &Dataset,
    test: &Dataset,
    path: &Path,
) -> Result<()> {
    let (varmap, net) = defense::train(
        zoo::layers::mnist_small_cnn(),
        train,
        InputDomain::default(),
        config,
        |net, stats| {
            println!(
                "{name} epoch {:>2}: loss {:.4}, ε {:.3}, test accuracy {:.2} % ({:.0} s)",
                stats.epoch,
                stats.loss,
                stats.eps,
                100.0
                    * accuracy(net, test)
                        .map_err(|e| robust_runtime::Error::Data(e.to_string()))?,
                stats.seconds
            );
            Ok(())
        },
    )?;
    varmap.save(path)?;
    let case = RobustnessCase::from_model(Model::new(net.clone()).named(name), test.clone());
    match config.regime {
        Regime::Ibp { .. } => {
            for method in [Method::Ibp, Method::Crown] {
                let report = certify::bound_case(&case, method, 0.1, 100)?;
                println!(
                    "{name}: {} certified accuracy at ε = 0.1: {:.2} % (clean {:.2} %)",
                    method.label(),
                    100.0 * report.certified_accuracy,
                    100.0 * report.clean_accuracy
                );
            }
        }
        Regime::GaussianNoise { sigma } => {
            let smoothing = Smoothing {
                n: 1_000,
                ..Smoothing::new(sigma)
            };
            let few = RobustnessCase::from_model(Model::new(net), test.take(100)?);
            let report = certify::smoothing_case(
                &few,
                &smoothing,
                0.5,
                &[0.0, 0.25, 0.5, 0.75, 1.0],
                0,
                &Device::Cpu,
            )?;
            println!("{report}");
        }
        _ => {}
    }
    println!("wrote {}", path.display());
    Ok(())
}

/// The test digits as uint8 images and int64 labels, the layout PyTorch reads without conversion.
fn write_test_split(test: &Dataset, path: &Path) -> Result<()> {
    let images = (test.inputs() * 255.0)?.round()?.to_dtype(DType::U8)?;
    let labels: Vec<i64> = test.labels().iter().map(|&l| l as i64).collect();
    let labels = Tensor::from_vec(labels, test.len(), &Device::Cpu)?;
    candle_core::safetensors::save(
        &[("images", images), ("labels", labels)]
            .into_iter()
            .collect(),
        path,
    )?;
    println!("wrote {}", path.display());
    Ok(())
}

fn train(recipe: &Recipe, train: &Dataset, test: &Dataset, path: &Path) -> Result<()> {
    let device = Device::Cpu;
    let mut rng = Rng::seed_from_u64(TRAIN_SEED);
    let varmap = VarMap::new();
    let model = (recipe.build)(VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
    init_like_pytorch(&varmap, &mut rng)?;

    let params = ParamsAdamW {
        lr: recipe.lr,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut opt = AdamW::new(varmap.all_vars(), params)?;
    let batch = 64;
    let started = Instant::now();
    for epoch in 1..=recipe.epochs {
        let mut order: Vec<usize> = (0..train.len()).collect();
        rng.shuffle(&mut order);
        let shuffled = train.select(&order)?;
        let mut total = 0.0;
        for b in shuffled.batches(batch, &device) {
            let b = b?;
            let logits = model.forward(&b.inputs)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &b.labels)?;
            opt.backward_step(&loss)?;
            total += loss.to_scalar::<f32>()? as f64 * b.range.len() as f64;
        }
        println!(
            "{} epoch {epoch:>2}: train loss {:.4}, test accuracy {:.2} % ({:.0} s)",
            recipe.name,
            total / train.len() as f64,
            100.0 * accuracy(model.as_ref(), test)?,
            started.elapsed().as_secs_f64()
        );
    }
    let acc = accuracy(model.as_ref(), test)?;
    if acc < 0.90 {
        return Err(format!(
            "{} reached only {:.2} % on the test split; expected ≥ 90 %",
            recipe.name,
            100.0 * acc
        )
        .into());
    }
    varmap.save(path)?;
    println!(
        "wrote {} (test accuracy {:.2} %)",
        path.display(),
        100.0 * acc
    );
    Ok(())
}

fn accuracy(model: &dyn Module, data: &Dataset) -> Result<f64> {
    let mut correct = 0usize;
    for b in data.batches(500, &Device::Cpu) {
        let b = b?;
        let pred = model.forward(&b.inputs)?.argmax(D::Minus1)?;
        correct += pred
            .eq(&b.labels)?
            .to_dtype(DType::U32)?
            .sum_all()?
            .to_scalar::<u32>()? as usize;
    }
    Ok(correct as f64 / data.len() as f64)
}
