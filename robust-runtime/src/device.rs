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

use std::cell::RefCell;

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
