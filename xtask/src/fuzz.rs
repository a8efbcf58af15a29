//! `cargo xtask fuzz [TARGET…] [--cases N] [--seconds S] [--seed SEED]`: a mutation fuzzer on
//! stable Rust for every file robust reads.
//!
//! Each target starts from valid files (written here, or committed ones such as the MNIST
//! MLP's weights and `tests/robustness.toml`), mutates them with a seeded generator (bit flips,
//! random bytes, inserted and deleted runs, truncation, splicing in bytes of another base,
//! interesting integers written over header fields, and for text formats interesting numbers
//! written over number tokens), loads the result through the public API and, when it loads,
//! uses it once (a batch through a model, a bound, a comparison, a resumed epoch). Every input
//! runs inside `catch_unwind`; a watchdog stops the run when one input takes longer than the
//! per-input limit. An input ends in one of: loaded and used (`ok`), a typed
//! `robust_runtime::Error` (`errors`), a panic (`panics`: a bug), or a hang (a bug).
//!
//! The run must have overflow checks on, as `cargo test` builds the code: `cargo xtask` builds
//! in release, so the task re-runs itself with `cargo run -p xtask` in the dev profile (deps at
//! -O3, the workspace at -O1, overflow checks and debug assertions on) unless it finds overflow
//! checks already on. Panicking and hanging inputs are written to `target/fuzz/<target>/` and
//! the same seed always produces the same inputs.

use std::collections::HashMap;
use std::io::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use robust_runtime::attack::{Fgsm, FgsmConfig};
use robust_runtime::baseline::{self, Baseline, UpdateMode};
use robust_runtime::certify::{self, Method};
use robust_runtime::data::{parse_idx, parse_npy, Dataset};
use robust_runtime::defense::{self, Regime, TrainConfig};
use robust_runtime::device::DeviceChoice;
use robust_runtime::eval::{self, InvarianceConfig, RobustnessCase, RunConfig};
use robust_runtime::harness::Suite;
use robust_runtime::nn::{Sequential, SequentialBuilder};
use robust_runtime::perturb::PerturbationConfig;
use robust_runtime::{zoo, InputDomain, Model};

use super::{root, Result};

/// The targets, in the order they run.
pub const TARGETS: &[&str] = &[
    "npy",
    "idx",
    "idx-gz",
    "dataset-safetensors",
    "sequential",
    "zoo",
    "onnx",
    "vnnlib",
    "suite",
    "baseline",
    "regressions",
    "checkpoint",
];

/// Inputs per target unless `--cases` says otherwise: what the bar asks for.
const DEFAULT_CASES: u64 = 20_000;
/// Time after which one input counts as a hang.
const INPUT_LIMIT: Duration = Duration::from_secs(20);

/// How a run went, per target.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    inputs: u64,
    ok: u64,
    errors: u64,
    panics: u64,
    hangs: u64,
}

struct Options {
    targets: Vec<String>,
    cases: u64,
    seconds: Option<f64>,
    seed: u64,
}

fn parse_args(args: &[String]) -> Result<Options> {
    let mut opts = Options {
        targets: Vec::new(),
        cases: DEFAULT_CASES,
        seconds: None,
        seed: 17,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "--cases" => opts.cases = value("--cases")?.parse()?,
            "--seconds" => opts.seconds = Some(value("--seconds")?.parse()?),
            "--seed" => opts.seed = value("--seed")?.parse()?,
            t if TARGETS.contains(&t) => opts.targets.push(t.to_string()),
            other => {
                return Err(format!(
                    "unknown fuzz target or option `{other}`; expected targets among {} and \
                     --cases N, --seconds S (per target), --seed SEED",
                    TARGETS.join(", ")
                )
                .into())
            }
        }
    }
    if opts.targets.is_empty() {
        opts.targets = TARGETS.iter().map(|t| t.to_string()).collect();
    }
    Ok(opts)
}

/// Whether this build panics on integer overflow (the code under test is built in the same
/// profile as this binary).
fn overflow_checks_on() -> bool {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let on = catch_unwind(|| std::hint::black_box(u8::MAX) + std::hint::black_box(1u8)).is_err();
    std::panic::set_hook(hook);
    on
}

/// `cargo xtask fuzz …`.
pub fn fuzz(args: &[String]) -> Result<()> {
    let opts = parse_args(args)?;
    if !overflow_checks_on() {
        eprintln!("fuzz: this build has no overflow checks; re-running in the dev profile");
        let status = std::process::Command::new(env!("CARGO"))
            .args(["run", "--package", "xtask", "--", "fuzz"])
            .args(args)
            .current_dir(root())
            .status()?;
        return if status.success() {
            Ok(())
        } else {
            Err(format!("the fuzz run failed: {status}").into())
        };
    }
    // Panics are counted, not printed: the hook keeps the last message for the report.
    let last_panic: Arc<Mutex<String>> = Arc::default();
    let sink = Arc::clone(&last_panic);
    std::panic::set_hook(Box::new(move |info| {
        let mut s = sink.lock().unwrap_or_else(|p| p.into_inner());
        *s = info.to_string();
    }));
    // Nothing the fuzzer does may write baselines or pick up a GPU.
    std::env::set_var("CI", "true");
    std::env::remove_var("ROBUST_UPDATE");
    std::env::remove_var("ROBUST_BLESS");
    std::env::set_var("ROBUST_DEVICE", "cpu");

    let work = root().join("target/fuzz");
    let watchdog = Watchdog::start();
    let mut table = Vec::new();
    let started = Instant::now();
    for name in &opts.targets {
        let dir = work.join(name);
        std::fs::create_dir_all(&dir)?;
        let mut target = make_target(name, &dir)?;
        let counts = run_target(name, target.as_mut(), &opts, &dir, &watchdog, &last_panic)?;
        table.push((name.clone(), counts));
    }
    println!(
        "\n{:<20} {:>8} {:>8} {:>8} {:>7} {:>6}",
        "target", "inputs", "ok", "errors", "panics", "hangs"
    );
    let mut bad = 0;
    for (name, c) in &table {
        println!(
            "{name:<20} {:>8} {:>8} {:>8} {:>7} {:>6}",
            c.inputs, c.ok, c.errors, c.panics, c.hangs
        );
        bad += c.panics + c.hangs;
    }
    println!(
        "seed {}, overflow checks on, {:.0} s",
        opts.seed,
        started.elapsed().as_secs_f64()
    );
    if bad > 0 {
        return Err(format!(
            "{bad} inputs panicked or hung; they are under {}",
            work.display()
        )
        .into());
    }
    Ok(())
}

fn run_target(
    name: &str,
    target: &mut dyn Target,
    opts: &Options,
    dir: &Path,
    watchdog: &Watchdog,
    last_panic: &Mutex<String>,
) -> Result<Counts> {
    let mut counts = Counts::default();
    let mut rng = SplitMix::new(opts.seed ^ hash(name));
    let bases = target.bases();
    let text = target.is_text();
    let started = Instant::now();
    let mut progress = Instant::now();
    for index in 0..opts.cases {
        if opts
            .seconds
            .is_some_and(|s| started.elapsed().as_secs_f64() >= s)
        {
            break;
        }
        // One input in 64 is the first base, unmutated: it must load and be used without
        // error, or the target tests nothing.
        let which = rng.below(bases.len() as u64) as usize;
        let input = if index % 64 == 0 {
            bases[0].clone()
        } else {
            mutate(&bases[which], &bases, text, &mut rng)
        };
        watchdog.arm(name, index, &input, dir);
        let outcome = catch_unwind(AssertUnwindSafe(|| target.run(&input)));
        watchdog.disarm();
        counts.inputs += 1;
        match outcome {
            Ok(Ok(())) => counts.ok += 1,
            Ok(Err(e)) => {
                counts.errors += 1;
                if index % 64 == 0 {
                    return Err(format!("{name}: a valid base input failed: {e}").into());
                }
            }
            Err(_) => {
                counts.panics += 1;
                let file = dir.join(format!("panic-{index}.bin"));
                std::fs::write(&file, &input)?;
                let message = last_panic.lock().map(|m| m.clone()).unwrap_or_default();
                eprintln!(
                    "{name}: input {index} panicked ({}): {message}",
                    file.display()
                );
            }
        }
        if progress.elapsed() > Duration::from_secs(10) {
            progress = Instant::now();
            eprintln!("{name}: {} inputs", counts.inputs);
        }
    }
    Ok(counts)
}

/// Stops the process when one input runs longer than [`INPUT_LIMIT`], after writing it to
/// `<dir>/hang-<index>.bin`: a thread cannot be interrupted, and a hang is a failure anyway.
struct Watchdog {
    armed_at: Arc<AtomicU64>,
    armed: Arc<AtomicBool>,
    current: Arc<Mutex<(String, u64, Vec<u8>, PathBuf)>>,
    epoch: Instant,
}

impl Watchdog {
    fn start() -> Self {
        let w = Watchdog {
            armed_at: Arc::default(),
            armed: Arc::default(),
            current: Arc::new(Mutex::new((String::new(), 0, Vec::new(), PathBuf::new()))),
            epoch: Instant::now(),
        };
        let (armed_at, armed, current, epoch) = (
            Arc::clone(&w.armed_at),
            Arc::clone(&w.armed),
            Arc::clone(&w.current),
            w.epoch,
        );
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(250));
            let since = epoch.elapsed().as_millis() as u64 - armed_at.load(Ordering::SeqCst);
            if armed.load(Ordering::SeqCst) && since > INPUT_LIMIT.as_millis() as u64 {
                let (name, index, input, dir) = &*current.lock().unwrap_or_else(|p| p.into_inner());
                let file = dir.join(format!("hang-{index}.bin"));
                let _ = std::fs::write(&file, input);
                println!(
                    "\n{name}: input {index} ran past {} s: 1 hang ({})",
                    INPUT_LIMIT.as_secs(),
                    file.display()
                );
                let _ = std::io::stdout().flush();
                std::process::exit(3);
            }
        });
        w
    }

    fn arm(&self, name: &str, index: u64, input: &[u8], dir: &Path) {
        {
            let mut c = self.current.lock().unwrap_or_else(|p| p.into_inner());
            c.0.clear();
            c.0.push_str(name);
            c.1 = index;
            c.2.clear();
            c.2.extend_from_slice(input);
            if c.3 != dir {
                c.3 = dir.to_path_buf();
            }
        }
        self.armed_at
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
    }

    fn disarm(&self) {
        self.armed.store(false, Ordering::SeqCst);
    }
}

// ---- mutations ------------------------------------------------------------------------------

/// SplitMix64: small, seeded, and the same on every machine.
struct SplitMix(u64);

impl SplitMix {
    fn new(seed: u64) -> Self {
        SplitMix(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    7,
    8,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    1 << 61,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

const INTERESTING_TEXT: &[&str] = &[
    "0",
    "-1",
    "1",
    "255",
    "256",
    "65536",
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "2305843009213693952",
    "9223372036854775807",
    "-9223372036854775808",
    "1e39",
    "1e-50",
    "1e308",
    "-0.0",
    "nan",
    "inf",
    "-inf",
    "0.10",
    "1.5",
    "\"\"",
    "[]",
    "{}",
    "true",
];

fn mutate(base: &[u8], bases: &[Vec<u8>], text: bool, rng: &mut SplitMix) -> Vec<u8> {
    let mut v = base.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let len = v.len() as u64;
        // Header fields live near the start: half the positions are drawn from the first
        // 128 bytes.
        let pos = |rng: &mut SplitMix, len: u64| {
            if len == 0 {
                0
            } else if rng.below(2) == 0 {
                rng.below(len.min(128)) as usize
            } else {
                rng.below(len) as usize
            }
        };
        match rng.below(if text { 10 } else { 8 }) {
            0 if len > 0 => {
                for _ in 0..1 + rng.below(8) {
                    let p = pos(rng, len);
                    v[p] ^= 1 << rng.below(8);
                }
            }
            1 if len > 0 => {
                let p = pos(rng, len);
                v[p] = rng.next() as u8;
            }
            2 => {
                let p = pos(rng, len);
                let n = 1 + rng.below(16) as usize;
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(p..p, bytes);
            }
            3 if len > 0 => {
                let p = pos(rng, len);
                let n = (1 + rng.below(32) as usize).min(v.len() - p);
                v.drain(p..p + n);
            }
            4 => {
                let p = rng.below(len + 1) as usize;
                v.truncate(p);
            }
            5 => {
                // Splice a run of another base (or of this one) over a run of this one.
                let other = &bases[rng.below(bases.len() as u64) as usize];
                if !other.is_empty() {
                    let from = rng.below(other.len() as u64) as usize;
                    let n = (1 + rng.below(64) as usize).min(other.len() - from);
                    let p = pos(rng, len);
                    let end = (p + rng.below(64) as usize).min(v.len());
                    v.splice(p..end, other[from..from + n].iter().copied());
                }
            }
            6 | 7 if len > 0 => {
                let value = INTERESTING[rng.below(INTERESTING.len() as u64) as usize];
                let width = [1usize, 2, 4, 8][rng.below(4) as usize];
                let bytes = if rng.below(2) == 0 {
                    value.to_le_bytes()
                } else {
                    value.to_be_bytes()
                };
                let bytes = if bytes[..8 - width].iter().all(|&b| b == 0) && rng.below(2) == 0 {
                    &bytes[8 - width..]
                } else {
                    &bytes[..width]
                };
                let p = pos(rng, len).min(v.len().saturating_sub(width));
                let end = (p + width).min(v.len());
                v.splice(p..end, bytes.iter().copied());
            }
            8 => {
                // Write an interesting number over a number token.
                let starts: Vec<usize> = (0..v.len())
                    .filter(|&i| {
                        v[i].is_ascii_digit() && (i == 0 || !v[i - 1].is_ascii_alphanumeric())
                    })
                    .collect();
                if !starts.is_empty() {
                    let s = starts[rng.below(starts.len() as u64) as usize];
                    let mut e = s;
                    while e < v.len() && (v[e].is_ascii_digit() || b".eE-+".contains(&v[e])) {
                        e += 1;
                    }
                    let with = INTERESTING_TEXT[rng.below(INTERESTING_TEXT.len() as u64) as usize];
                    v.splice(s..e, with.bytes());
                }
            }
            _ => {
                // Duplicate or delete a line.
                let lines: Vec<usize> = std::iter::once(0)
                    .chain((0..v.len()).filter(|&i| v[i] == b'\n').map(|i| i + 1))
                    .filter(|&i| i < v.len())
                    .collect();
                if !lines.is_empty() {
                    let k = rng.below(lines.len() as u64) as usize;
                    let s = lines[k];
                    let e = lines.get(k + 1).copied().unwrap_or(v.len());
                    if rng.below(2) == 0 {
                        let line = v[s..e].to_vec();
                        v.splice(e..e, line);
                    } else {
                        v.drain(s..e);
                    }
                }
            }
        }
    }
    v
}

// ---- targets ----------------------------------------------------------------------------------

/// A file format and what loading it and using it once means.
trait Target {
    /// Valid files to mutate.
    fn bases(&self) -> Vec<Vec<u8>>;
    /// Whether the format is text (number-token and line mutations apply).
    fn is_text(&self) -> bool {
        false
    }
    /// Loads `input` and uses what loaded; a typed error is an expected outcome.
    fn run(&mut self, input: &[u8]) -> robust_runtime::Result<()>;
}

fn make_target(name: &str, dir: &Path) -> Result<Box<dyn Target>> {
    Ok(match name {
        "npy" => Box::new(Npy::new(dir)),
        "idx" => Box::new(Idx { gz: false }),
        "idx-gz" => Box::new(Idx { gz: true }),
        "dataset-safetensors" => Box::new(DatasetSafetensors::new(dir)?),
        "sequential" => Box::new(Weights::sequential(dir)?),
        "zoo" => Box::new(Weights::zoo(dir)?),
        "onnx" => Box::new(OnnxFile::new(dir)?),
        "vnnlib" => Box::new(VnnlibFile::new(dir)?),
        "suite" => Box::new(SuiteText::new()?),
        "baseline" => Box::new(BaselineFile::new(dir)?),
        "regressions" => Box::new(RegressionsFile::new(dir)?),
        "checkpoint" => Box::new(Checkpoint::new(dir)?),
        other => return Err(format!("unknown target {other}").into()),
    })
}

/// A model for any sample shape: 3 logits from the mean, so every loaded data set can go
/// through an attack.
fn any_shape_model() -> Model {
    Model::new(|x: &Tensor| {
        let m = x.flatten_from(1)?.mean_keepdim(1)?;
        Tensor::cat(&[&m, &m.neg()?, &(&m * 0.5)?], 1)
    })
}

/// The first use of a data set: class counts, a shuffle, and FGSM on its first samples.
fn use_dataset(data: &Dataset) -> robust_runtime::Result<()> {
    let _ = data.class_counts();
    let shuffled = data.shuffled(1)?;
    let case = RobustnessCase::from_model(any_shape_model(), shuffled);
    let fgsm = Fgsm::new(FgsmConfig {
        eps: 0.1,
        ..FgsmConfig::default()
    })?;
    eval::evaluate(
        &case,
        &fgsm,
        &RunConfig {
            samples: Some(data.len().min(4)),
            ..RunConfig::default()
        },
    )?;
    Ok(())
}

fn npy_bytes(descr: &str, shape: &str, body: &[u8], version: u8) -> Vec<u8> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let prefix = if version == 1 { 10 } else { 12 };
    while (prefix + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut v = b"\x93NUMPY".to_vec();
    v.extend_from_slice(&[version, 0]);
    if version == 1 {
        v.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        v.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(body);
    v
}

/// `.npy` inputs and labels through `parse_npy` and `Dataset::from_npy`: the mutated file is
/// the inputs or the labels, the other one valid.
struct Npy {
    inputs: PathBuf,
    labels: PathBuf,
}

impl Npy {
    fn new(dir: &Path) -> Self {
        Npy {
            inputs: dir.join("x.npy"),
            labels: dir.join("y.npy"),
        }
    }
    fn valid_inputs() -> Vec<u8> {
        npy_bytes(
            "|u1",
            "(4, 1, 2, 3)",
            &[0, 10, 20, 30, 40, 255].repeat(4),
            1,
        )
    }
    fn valid_labels() -> Vec<u8> {
        let labels: Vec<u8> = [0i64, 2, 1, 2]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        npy_bytes("<i8", "(4,)", &labels, 1)
    }
}

impl Target for Npy {
    fn bases(&self) -> Vec<Vec<u8>> {
        let floats: Vec<u8> = (0..12)
            .flat_map(|i| (i as f32 / 12.0).to_le_bytes())
            .collect();
        vec![
            Self::valid_inputs(),
            Self::valid_labels(),
            npy_bytes("<f4", "(2, 6)", &floats, 1),
            npy_bytes("<f8", "(3,)", &[0u8; 24], 2),
            npy_bytes("<u4", "(4,)", &[0u8; 16], 3),
        ]
    }
    fn run(&mut self, input: &[u8]) -> robust_runtime::Result<()> {
        let write = |p: &Path, b: &[u8]| std::fs::write(p, b).map_err(std::io::Error::other);
        let _ = parse_npy(input, Path::new("<fuzz>"));
        // The labels file when it parses as 1-D, else the inputs file.
        let as_labels = parse_npy(input, Path::new("<fuzz>")).is_ok_and(|a| a.shape.len() == 1);
        let (x, y) = if as_labels {
            (Self::valid_inputs(), input.to_vec())
        } else {
            (input.to_vec(), Self::valid_labels())
        };
        write(&self.inputs, &x).map_err(|e| io_error(&self.inputs, e))?;
        write(&self.labels, &y).map_err(|e| io_error(&self.labels, e))?;
        let data = Dataset::from_npy(&self.inputs, &self.labels)?;
        use_dataset(&data)
    }
}

fn io_error(path: &Path, e: std::io::Error) -> robust_runtime::Error {
    robust_runtime::Error::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = gz.write_all(bytes);
    gz.finish().unwrap_or_default()
}

/// IDX images and labels through `parse_idx` and `Dataset::from_idx_bytes`, plain or gzip
/// (mutated after compression, or compressed after mutation so the IDX parser sees the damage).
struct Idx {
    gz: bool,
}

impl Idx {
    fn valid_images() -> Vec<u8> {
        idx_bytes(&[4, 2, 3], &[0, 10, 20, 30, 40, 255].repeat(4))
    }
    fn valid_labels() -> Vec<u8> {
        idx_bytes(&[4], &[0, 2, 1, 2])
    }
}

impl Target for Idx {
    fn bases(&self) -> Vec<Vec<u8>> {
        let plain = vec![
            Self::valid_images(),
            Self::valid_labels(),
            idx_bytes(&[2, 1, 2, 2], &[1, 2, 3, 4, 5, 6, 7, 8]),
        ];
        if self.gz {
            // Plain bases are kept beside the compressed ones: a mutated plain base is
            // compressed before it is parsed (see `run`).
            let mut all: Vec<Vec<u8>> = plain.iter().map(|b| gzip(b)).collect();
            all.extend(plain);
            all
        } else {
            plain
        }
    }
    fn run(&mut self, input: &[u8]) -> robust_runtime::Result<()> {
        let input = if self.gz && !input.starts_with(&[0x1f, 0x8b]) {
            gzip(input)
        } else {
            input.to_vec()
        };
        let parsed = parse_idx(&input, Path::new("<fuzz>"));
        let as_labels = parsed.is_ok_and(|a| a.dims.len() == 1);
        let (images, labels) = if as_labels {
            (Self::valid_images(), input)
        } else {
            (input, Self::valid_labels())
        };
        let data = Dataset::from_idx_bytes(&images, &labels)?;
        use_dataset(&data)
    }
}

/// A safetensors data set through `Dataset::from_safetensors`.
struct DatasetSafetensors {
    path: PathBuf,
    bases: Vec<Vec<u8>>,
}

impl DatasetSafetensors {
    fn new(dir: &Path) -> Result<Self> {
        let path = dir.join("data.safetensors");
        let cpu = Device::Cpu;
        let mut bases = Vec::new();
        let x_u8 = Tensor::from_vec((0u8..24).collect::<Vec<_>>(), (4, 1, 2, 3), &cpu)?;
        let x_f32 = (x_u8.to_dtype(DType::F32)? / 24.0)?;
        let y_u8 = Tensor::new(&[0u8, 2, 1, 2], &cpu)?;
        let y_i64 = Tensor::new(&[0i64, 2, 1, 2], &cpu)?;
        for (x, y) in [(x_u8, y_i64), (x_f32, y_u8)] {
            let tensors: HashMap<String, Tensor> =
                [("x".to_string(), x), ("y".to_string(), y)].into();
            candle_core::safetensors::save(&tensors, &path)?;
            bases.push(std::fs::read(&path)?);
        }
        Ok(DatasetSafetensors { path, bases })
    }
}

impl Target for DatasetSafetensors {
    fn bases(&self) -> Vec<Vec<u8>> {
        self.bases.clone()
    }
    fn run(&mut self, input: &[u8]) -> robust_runtime::Result<()> {
        std::fs::write(&self.path, input).map_err(|e| io_error(&self.path, e))?;
        let data = Dataset::from_safetensors(&self.path, "x", "y")?;
        use_dataset(&data)
    }
}

/// Weights through `SequentialBuilder::load` (a small network, then IBP bounds on it) or
/// `zoo::MnistMlp::load` (the committed fixture, then a batch of digits).
struct Weights {
    path: PathBuf,
    bases: Vec<Vec<u8>>,
    zoo: bool,
    digits: Dataset,
}

fn small_net() -> SequentialBuilder {
    Sequential::builder(&[1, 4, 4])
        .conv2d(2, 3, 1, 1)
        .relu()
        .flatten()
        .linear(5)
        .relu()
        .linear(3)
}

impl Weights {
    fn sequential(dir: &Path) -> Result<Self> {
        let path = dir.join("net.safetensors");
        let varmap = candle_nn::VarMap::new();
        small_net().build(candle_nn::VarBuilder::from_varmap(
            &varmap,
            DType::F32,
            &Device::Cpu,
        ))?;
        defense::init_like_pytorch(&varmap, &mut robust_runtime::Rng::seed_from_u64(1))?;
        varmap.save(&path)?;
        let digits = Dataset::new(
            (Tensor::arange(0u32, 32, &Device::Cpu)?.to_dtype(DType::F32)? / 32.0)?
                .reshape((2, 1, 4, 4))?,
            vec![0, 2],
        )?;
        Ok(Weights {
            bases: vec![std::fs::read(&path)?],
            path,
            zoo: false,
            digits,
        })
    }

    fn zoo(dir: &Path) -> Result<Self> {
        let fixture = root().join("tests/fixtures/mnist_mlp.safetensors");
        Ok(Weights {
            bases: vec![std::fs::read(&fixture)?],
            path: dir.join("mlp.safetensors"),
            zoo: true,
            digits: Dataset::mnist_sample()?.test_split().take(4)?,
        })
    }
}

impl Target for Weights {
    fn bases(&self) -> Vec<Vec<u8>> {
        self.bases.clone()
    }
    fn run(&mut self, input: &[u8]) -> robust_runtime::Result<()> {
        std::fs::write(&self.path, input).map_err(|e| io_error(&self.path, e))?;
        if self.zoo {
            let model = Model::new(zoo::MnistMlp::load(&self.path, &Device::Cpu)?);
            eval::clean_accuracy(&model, &self.digits, &Device::Cpu)?;
        } else {
            let net = small_net().load(&self.path, &Device::Cpu)?;
            let case = RobustnessCase::from_model(Model::new(net), self.digits.clone());
            certify::bound_case(&case, Method::Crown, 0.05, 2)?;
        }
        Ok(())
    }
}

/// An ONNX file through `Graph::from_onnx`: logits of two inputs on the engine and through
/// candle, and IBP bounds of the model. The bases: a residual network, a network with
/// concatenations, and a chain.
struct OnnxFile {
    bases: Vec<Vec<u8>>,
    path: PathBuf,
}

impl OnnxFile {
    fn new(dir: &Path) -> Result<Self> {
        let fixtures = root().join("tests/fixtures/onnx");
        Ok(OnnxFile {
            bases: vec![
                std::fs::read(fixtures.join("resnet_small.onnx"))?,
                std::fs::read(fixtures.join("concat_small.onnx"))?,
                std::fs::read(fixtures.join("mnist_ibp_opset17.onnx"))?,
            ],
            path: dir.join("model.onnx"),
        })
    }
}

impl Target for OnnxFile {
    fn bases(&self) -> Vec<Vec<u8>> {
        self.bases.clone()
    }
    fn run(&mut self, input: &[u8]) -> robust_runtime::Result<()> {
        std::fs::write(&self.path, input).map_err(|e| io_error(&self.path, e))?;
        let graph = robust_runtime::nn::Graph::from_onnx(&self.path, &Device::Cpu)?;
        let mut shape = vec![2];
        shape.extend_from_slice(graph.input_shape());
        let values: usize = shape.iter().product();
        if values > 1 << 22 {
            return Ok(()); // loaded; too large an input to push through here
        }
        let x = (Tensor::arange(0u32, values as u32, &Device::Cpu)?.to_dtype(DType::F32)?
            / values as f64)?
            .reshape(shape.as_slice())?;
        let model = Model::new(graph.clone());
        model.logits(&x)?;
        candle_core::Module::forward(&graph, &x)?;
        let (lower, upper) = certify::input_box(&x, 0.05, InputDomain::default())?;
        certify::model_logit_bounds(&model, &lower, &upper, Method::Ibp)?;
        Ok(())
    }
}

/// A VNN-LIB property through `vnnlib::Property::from_file`, then asked whether its box's
/// lower corner is inside and whether zero outputs violate it. The base: one of the `mnistfc`
/// properties.
struct VnnlibFile {
    base: Vec<u8>,
    path: PathBuf,
}

impl VnnlibFile {
    fn new(dir: &Path) -> Result<Self> {
        let file = root().join("tests/fixtures/vnncomp2021-mnistfc/prop_1_0.03.vnnlib");
        Ok(VnnlibFile {
            base: std::fs::read(file)?,
            path: dir.join("property.vnnlib"),
        })
    }
}

impl Target for VnnlibFile {
    fn bases(&self) -> Vec<Vec<u8>> {
        vec![self.base.clone()]
    }
    fn is_text(&self) -> bool {
        true
    }
    fn run(&mut self, input: &[u8]) -> robust_runtime::Result<()> {
        std::fs::write(&self.path, input).map_err(|e| io_error(&self.path, e))?;
        let p = robust_runtime::vnnlib::Property::from_file(&self.path)?;
        assert!(p.contains(&p.lower), "the lower corner is in the box");
        p.violated(&vec![0.0; p.outputs]);
        Ok(())
    }
}

/// A suite file through `Suite::from_toml`, its cases and its trials (not run: a trial is a
/// whole robustness test).
struct SuiteText {
    base: Vec<u8>,
}

impl SuiteText {
    fn new() -> Result<Self> {
        Ok(SuiteText {
            base: std::fs::read(root().join("tests/robustness.toml"))?,
        })
    }
}

impl Target for SuiteText {
    fn bases(&self) -> Vec<Vec<u8>> {
        let extra = "\n[[test]]\nmodel = \"mnist_mlp\"\ncertify = \"smoothing\"\nradius = [0.25, 0.5]\n\
                     sigma = 0.25\nn0 = 10\nn = 100\nalpha = 0.01\nmin_certified_acc = 0.1\n\
                     \n[[test]]\nmodel = \"mnist_cnn\"\nperturbation = [\"rotation\", \"occlusion+shift\"]\n\
                     max_degrees = 10.0\npatch = 4\nmax_shift = 2.0\nmin_invariance = 0.5\n";
        let mut with_more = self.base.clone();
        with_more.extend_from_slice(extra.as_bytes());
        vec![self.base.clone(), with_more]
    }
    fn is_text(&self) -> bool {
        true
    }
    fn run(&mut self, input: &[u8]) -> robust_runtime::Result<()> {
        let text = String::from_utf8_lossy(input);
        let suite = Suite::from_toml(root(), "fuzz", &text)?;
        suite.cases()?;
        suite.trials()?;
        Ok(())
    }
}

/// A baseline file through `baseline::compare` with a real report (mode `no`), its
/// description, and `Pending::describe` of the same file as a pending one.
struct BaselineFile {
    path: PathBuf,
    report: eval::RobustnessReport,
    base: Vec<u8>,
}

impl BaselineFile {
    fn new(dir: &Path) -> Result<Self> {
        let data = Dataset::mnist_sample()?.test_split().take(20)?;
        let case = RobustnessCase::from_model(
            Model::new(zoo::MnistMlp::load(
                root().join("tests/fixtures/mnist_mlp.safetensors"),
                &Device::Cpu,
            )?),
            data,
        );
        let fgsm = Fgsm::new(FgsmConfig {
            eps: 0.05,
            ..FgsmConfig::default()
        })?;
        let cfg = RunConfig {
            test_name: Some("fuzz::baseline".into()),
            sweep: vec![0.05, 0.1],
            ..RunConfig::default()
        };
        let mut report = eval::evaluate(&case, &fgsm, &cfg)?;
        report.fingerprint = Some(eval::Fingerprint::of(&case, None, 250, &Device::Cpu)?);
        let path = dir.join("fuzz__baseline.json");
        Baseline::of(&report).write(&path)?;
        Ok(BaselineFile {
            base: std::fs::read(&path)?,
            path,
            report,
        })
    }
}

impl Target for BaselineFile {
    fn bases(&self) -> Vec<Vec<u8>> {
        vec![self.base.clone()]
    }
    fn is_text(&self) -> bool {
        true
    }
    fn run(&mut self, input: &[u8]) -> robust_runtime::Result<()> {
        std::fs::write(&self.path, input).map_err(|e| io_error(&self.path, e))?;
        let c = baseline::compare(&self.report, &self.path, 0.01, UpdateMode::No)?;
        let _ = c.describe(UpdateMode::No);
        let pending = baseline::Pending {
            baseline: self.path.clone(),
            pending: self.path.clone(),
        };
        pending.describe()?;
        Ok(())
    }
}

/// A regressions file replayed by a perturbation run on a small case.
struct RegressionsFile {
    path: PathBuf,
    case: RobustnessCase,
}

impl RegressionsFile {
    fn new(dir: &Path) -> Result<Self> {
        let case = RobustnessCase::from_model(
            Model::new(zoo::MnistMlp::load(
                root().join("tests/fixtures/mnist_mlp.safetensors"),
                &Device::Cpu,
            )?),
            Dataset::mnist_sample()?.test_split().take(4)?,
        );
        Ok(RegressionsFile {
            path: dir.join("shift.txt"),
            case,
        })
    }
}

impl Target for RegressionsFile {
    fn bases(&self) -> Vec<Vec<u8>> {
        let committed =
            std::fs::read(root().join("robust-regressions/perturb/mnist_mlp_shifted/shift.txt"))
                .unwrap_or_default();
        let small = b"# seeds\ncc 5f3a9c2e1b7d4a60 sample 3 # shift: 7 -> 2\ncc 0000000000000001 sample 0\n"
            .to_vec();
        vec![committed, small]
    }
    fn is_text(&self) -> bool {
        true
    }
    fn run(&mut self, input: &[u8]) -> robust_runtime::Result<()> {
        std::fs::write(&self.path, input).map_err(|e| io_error(&self.path, e))?;
        let p = PerturbationConfig::new("shift", Default::default())?;
        let cfg = InvarianceConfig {
            cases: 1,
            max_shrink_iters: 4,
            regressions: Some(self.path.clone()),
            ..InvarianceConfig::default()
        };
        eval::evaluate_invariance(&self.case, &p, &cfg)?;
        Ok(())
    }
}

/// A training checkpoint (`state.json` and `weights.safetensors`) resumed for its last epoch.
struct Checkpoint {
    dir: PathBuf,
    data: Dataset,
    state: Vec<u8>,
    weights: Vec<u8>,
}

fn checkpoint_net() -> SequentialBuilder {
    Sequential::builder(&[1, 2, 3]).flatten().linear(3)
}

fn checkpoint_config() -> TrainConfig {
    TrainConfig {
        epochs: 2,
        batch_size: 2,
        learning_rate: 1e-2,
        seed: 3,
        regime: Regime::Standard,
        device: DeviceChoice::Cpu,
    }
}

impl Checkpoint {
    fn new(dir: &Path) -> Result<Self> {
        let dir = dir.join("checkpoint");
        let _ = std::fs::remove_dir_all(&dir);
        let data = Dataset::from_idx_bytes(&Idx::valid_images(), &Idx::valid_labels())?;
        // Interrupted after epoch 1 of 2: the checkpoint every input starts from.
        let _ = defense::train_resumable(
            checkpoint_net(),
            &data,
            InputDomain::default(),
            &checkpoint_config(),
            Some(&dir),
            |_, stats| {
                if stats.epoch == 1 {
                    Err(robust_runtime::Error::Data("interrupted".into()))
                } else {
                    Ok(())
                }
            },
        );
        Ok(Checkpoint {
            state: std::fs::read(dir.join("state.json"))?,
            weights: std::fs::read(dir.join("weights.safetensors"))?,
            dir,
            data,
        })
    }
}

impl Target for Checkpoint {
    fn bases(&self) -> Vec<Vec<u8>> {
        // Inputs starting with `{` are the state, the others the weights.
        vec![self.state.clone(), self.weights.clone()]
    }
    fn is_text(&self) -> bool {
        true
    }
    fn run(&mut self, input: &[u8]) -> robust_runtime::Result<()> {
        let state = self.dir.join("state.json");
        let weights = self.dir.join("weights.safetensors");
        let is_state = input.first() == Some(&b'{');
        let (s, w) = if is_state {
            (input, self.weights.as_slice())
        } else {
            (self.state.as_slice(), input)
        };
        std::fs::write(&state, s).map_err(|e| io_error(&state, e))?;
        std::fs::write(&weights, w).map_err(|e| io_error(&weights, e))?;
        let (_, net) = defense::train_resumable(
            checkpoint_net(),
            &self.data,
            InputDomain::default(),
            &checkpoint_config(),
            Some(&self.dir),
            |_, _| Ok(()),
        )?;
        eval::clean_accuracy(&Model::new(net.detach()), &self.data, &Device::Cpu)?;
        Ok(())
    }
}
