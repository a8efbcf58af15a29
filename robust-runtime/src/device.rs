//! Where attacks run: CPU, CUDA, or the best available.
//!
//! `device = "cpu" | "cuda" | "auto"` in the macro (default `"auto"`); the environment variable
//! `ROBUST_DEVICE` overrides it for a whole run (`ROBUST_DEVICE=cpu cargo test`). CUDA needs
//! the crate's `cuda` feature, with which the macro also emits a `_cuda` variant of every test
//! (ignored unless asked for: `cargo test --features cuda -- --ignored _cuda`) that runs on the
//! first CUDA device whatever `device` and `ROBUST_DEVICE` say. While a test builds its
//! [`RobustnessCase`](crate::RobustnessCase), [`current`] returns the selected device, so a case
//! loads its model where it will run (a model left elsewhere is
//! [`Error::ModelDevice`](crate::Error::ModelDevice)):
//!
//! ```no_run
//! use robust_runtime::prelude::*;
//!
//! #[robustness_test(attack = "pgd", eps = 0.1, min_acc = 0.5, device = "auto")]
//! fn mnist_cnn() -> robust_runtime::Result<RobustnessCase> {
//!     let model = zoo::MnistCnn::load("tests/fixtures/mnist_cnn.safetensors", &robust_runtime::device::current())?;
//!     Ok(RobustnessCase::new(model, Dataset::mnist_sample()?.test_split()))
//! }
//! ```

use std::cell::{Cell, RefCell};

use candle_core::Device;

use crate::{Error, Result};

/// Environment variable that overrides every test's `device`.
pub const DEVICE_VAR: &str = crate::env::DEVICE.name;

/// A device preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeviceChoice {
    /// The CPU.
    Cpu,
    /// The first CUDA device; an error if there is none.
    Cuda,
    /// CUDA if available, else the CPU.
    Auto,
}

impl DeviceChoice {
    /// Names accepted by [`DeviceChoice::from_name`].
    pub const NAMES: &'static [&'static str] = robust_spec::names::DEVICES;

    /// `"cpu"`, `"cuda"` or `"auto"`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda),
            "auto" => Ok(DeviceChoice::Auto),
            other => Err(Error::unknown("device", other, Self::NAMES)),
        }
    }
}

/// The device for `choice`, without the `ROBUST_DEVICE` override (for code that is told
/// its device, such as training).
pub fn select_exactly(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda => cuda_device(),
        DeviceChoice::Auto => Ok(cuda().unwrap_or(Device::Cpu)),
    }
}

/// The device for `choice`, after the `ROBUST_DEVICE` override.
pub fn select(choice: DeviceChoice) -> Result<Device> {
    let choice = match crate::env::get(crate::env::DEVICE) {
        Some(v) => DeviceChoice::from_name(v)?,
        None => choice,
    };
    select_exactly(choice)
}

/// The first CUDA device, whatever `ROBUST_DEVICE` says; a typed error saying why when there is
/// none (built without the `cuda` feature, no driver, no GPU).
pub fn cuda_device() -> Result<Device> {
    cuda().map_err(|reason| Error::DeviceUnavailable {
        requested: "cuda".into(),
        reason,
    })
}

/// Whether robust-runtime was built with its `cuda` feature.
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// Why CUDA cannot run here, `None` when it can: what the `_cuda` variants of the suite
/// harness print when they are skipped.
pub fn cuda_unavailable() -> Option<String> {
    // Probed once per process: creating a CUDA context takes a moment.
    static PROBE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    PROBE.get_or_init(|| cuda().err()).clone()
}

fn cuda() -> std::result::Result<Device, String> {
    if !candle_core::utils::cuda_is_available() {
        return Err("robust-runtime was built without its `cuda` feature; expected `--features robust-runtime/cuda`".into());
    }
    Device::new_cuda(0).map_err(|e| e.to_string())
}

/// A device's name in reports: `cpu`, `cuda:0`.
pub fn name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Device>> = const { RefCell::new(None) };
}

/// The device selected for the robustness test being built on this thread; the CPU outside one.
pub fn current() -> Device {
    CURRENT.with(|c| c.borrow().clone()).unwrap_or(Device::Cpu)
}

/// Runs `f` with `device` as [`current`].
pub(crate) fn with_current<R>(device: &Device, f: impl FnOnce() -> R) -> R {
    let previous = CURRENT.with(|c| c.replace(Some(device.clone())));
    let out = f();
    CURRENT.with(|c| *c.borrow_mut() = previous);
    out
}

/// Environment variable that overrides the `precision` of every attack and perturbation test.
pub const PRECISION_VAR: &str = crate::env::PRECISION.name;

/// The arithmetic of f32 matrix products on CUDA: `precision = "f32" | "tf32"` in the macro and
/// the suite, `ROBUST_PRECISION` for a whole run.
///
/// The CPU has no TF32: there every run is f32 whatever is asked. On CUDA, `Tf32` turns on
/// candle's cuBLAS TF32 mode ([`candle_core::cuda::set_gemm_reduced_precision_f32`]): inputs
/// rounded to 10 mantissa bits, products accumulated in f32, as PyTorch's
/// `torch.backends.cuda.matmul.allow_tf32 = True`. Certification always runs in `F32`: a bound
/// computed from rounded products need not hold for the model ([`with_precision`] keeps every
/// run that asks for f32 away from TF32 runs on other threads).
///
/// With the `cudnn` feature, candle's cuDNN convolutions keep cuDNN's default math mode, which
/// lets Ampere and later GPUs use TF32 whatever this says (`NVIDIA_TF32_OVERRIDE=0` turns TF32
/// off in cuDNN and cuBLAS for the whole process); without it, a CUDA convolution is an im2col
/// product, under this switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Precision {
    /// IEEE f32 products (`CUBLAS_COMPUTE_32F`): the default, and certification's only mode.
    #[default]
    F32,
    /// TF32 tensor cores (`CUBLAS_COMPUTE_32F_FAST_TF32`), for attacks and perturbations.
    Tf32,
}

impl Precision {
    /// Names accepted by [`Precision::from_name`].
    pub const NAMES: &'static [&'static str] = robust_spec::names::PRECISIONS;

    /// `"f32"` or `"tf32"`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "f32" => Ok(Precision::F32),
            "tf32" => Ok(Precision::Tf32),
            other => Err(Error::unknown("precision", other, Self::NAMES)),
        }
    }

    /// The name [`Precision::from_name`] reads.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Tf32 => "tf32",
        }
    }

    /// Whether this is [`Precision::F32`] (reports leave it out then).
    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }

    /// What a report's time line adds after the device: nothing for f32.
    pub fn suffix(self) -> &'static str {
        match self {
            Precision::F32 => "",
            Precision::Tf32 => " (TF32 products)",
        }
    }

    /// An attack or perturbation test's precision: `ROBUST_PRECISION` when set, else `written`
    /// (the test's `precision`), else f32.
    pub fn select(written: Option<&str>) -> Result<Self> {
        if let Some(p) = crate::env::parse(crate::env::PRECISION, "`f32` or `tf32`")? {
            return Ok(p);
        }
        Ok(written
            .map(Self::from_name)
            .transpose()?
            .unwrap_or_default())
    }

    /// What a run asking for `self` computes in on `device`: TF32 only on CUDA.
    pub fn on(self, device: &Device) -> Precision {
        if device.is_cuda() {
            self
        } else {
            Precision::F32
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        Self::from_name(name)
    }
}

/// The mode of candle's process-wide cuBLAS switch, and how many runs on this process use it.
struct Mode {
    precision: Precision,
    runs: usize,
}

static MODE: std::sync::Mutex<Mode> = std::sync::Mutex::new(Mode {
    precision: Precision::F32,
    runs: 0,
});
static MODE_FREE: std::sync::Condvar = std::sync::Condvar::new();

thread_local! {
    /// The mode this thread's runs hold, and how deep.
    static HELD: Cell<(Precision, usize)> = const { Cell::new((Precision::F32, 0)) };
}

/// One run's hold on the switch; dropping it lets runs in the other mode start.
struct Hold;

impl Hold {
    fn take(precision: Precision) -> Result<Hold> {
        let (held, depth) = HELD.with(Cell::get);
        if depth > 0 && held != precision {
            return Err(Error::param(
                "precision",
                precision.name(),
                format!(
                    "`{}`, the precision of the run this one is inside: a thread's runs share one",
                    held.name()
                ),
            ));
        }
        let mut mode = MODE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Same mode: join the runs there. A thread inside one of them never waits on itself.
        while mode.runs > 0 && mode.precision != precision {
            mode = MODE_FREE
                .wait(mode)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        mode.precision = precision;
        candle_core::cuda::set_gemm_reduced_precision_f32(precision == Precision::Tf32);
        mode.runs += 1;
        HELD.with(|h| h.set((precision, depth + 1)));
        Ok(Hold)
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        HELD.with(|h| {
            let (held, depth) = h.get();
            h.set((held, depth.saturating_sub(1)));
        });
        let mut mode = MODE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        mode.runs = mode.runs.saturating_sub(1);
        if mode.runs == 0 {
            // Back to candle's default, for code that runs outside any test.
            candle_core::cuda::set_gemm_reduced_precision_f32(false);
            mode.precision = Precision::F32;
            MODE_FREE.notify_all();
        }
    }
}

/// Runs `f` with `device`'s f32 products in `precision`.
///
/// On CUDA the mode is one switch for the whole process, and tests run on parallel threads: a
/// run waits until no run in the other mode is left, so an f32 run (every certification) never
/// overlaps a TF32 one. Runs in the same mode share it. On the CPU `f` just runs. A run inside
/// another on the same thread must ask for the same mode; asking for the other is an error
/// rather than a wait on itself.
pub fn with_precision<R>(
    device: &Device,
    precision: Precision,
    f: impl FnOnce() -> Result<R>,
) -> Result<R> {
    if !device.is_cuda() {
        return f();
    }
    let hold = Hold::take(precision)?;
    let out = f();
    drop(hold);
    out
}

/// The mode candle's cuBLAS switch is in now: what a run inside [`with_precision`] computes in.
pub fn cuda_precision() -> Precision {
    if CUDA_BUILT && candle_core::cuda::gemm_reduced_precision_f32() {
        Precision::Tf32
    } else {
        Precision::F32
    }
}

#[cfg(test)]
mod should {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn read_precisions_by_name_and_serialise_them_so() {
        assert_eq!(Precision::from_name("tf32").unwrap(), Precision::Tf32);
        assert_eq!(Precision::from_name("f32").unwrap(), Precision::F32);
        let err = Precision::from_name("fp32").unwrap_err().to_string();
        assert!(err.contains("fp32") && err.contains("tf32"), "{err}");
        assert_eq!(serde_json::to_string(&Precision::Tf32).unwrap(), "\"tf32\"");
        assert_eq!(Precision::Tf32.on(&Device::Cpu), Precision::F32);
        assert_eq!(Precision::default(), Precision::F32);
    }

    /// The hold itself, without a GPU: an f32 run waits for the TF32 run on another thread to
    /// end, runs in one mode share it, and a run inside a run of the other mode is an error.
    #[test]
    fn keep_f32_runs_apart_from_tf32_runs() {
        let first = Hold::take(Precision::Tf32).unwrap();
        // The same mode, inside: shared.
        let inner = Hold::take(Precision::Tf32).unwrap();
        let err = Hold::take(Precision::F32)
            .err()
            .expect("the other mode inside a run");
        assert!(err.to_string().contains("tf32"), "{err}");
        let started = Arc::new(AtomicBool::new(false));
        let f32_run = {
            let started = Arc::clone(&started);
            std::thread::spawn(move || {
                let hold = Hold::take(Precision::F32).unwrap();
                started.store(true, Ordering::SeqCst);
                let mode = MODE.lock().unwrap().precision;
                drop(hold);
                mode
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !started.load(Ordering::SeqCst),
            "an f32 run started beside a TF32 one"
        );
        drop(inner);
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !started.load(Ordering::SeqCst),
            "an f32 run started beside a TF32 one"
        );
        drop(first);
        assert_eq!(f32_run.join().unwrap(), Precision::F32);
        assert!(started.load(Ordering::SeqCst));
        let mode = MODE.lock().unwrap();
        assert_eq!((mode.precision, mode.runs), (Precision::F32, 0));
    }
}
