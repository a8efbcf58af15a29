//! A certification test as the macro writes it: `certify = "ibp" | "crown" | "smoothing"`, the
//! radius, the certifier's parameters and `min_certified_acc`.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use super::spec::{check_run_keys, guard_setters, seed_or_env, Guard};
use super::Fingerprint;
use crate::certify::{self, CertificationReport, Method, Smoothing};
use crate::device;
use crate::{Error, Result, RobustnessCase};

/// Certifiers `certify = "…"` accepts.
pub const CERTIFIERS: &[&str] = &["ibp", "crown", "smoothing"];

/// One generated certification test.
#[derive(Debug, Clone)]
pub struct CertifySpec {
    name: &'static str,
    certifier: &'static str,
    radius: f64,
    min_certified_acc: Option<f64>,
    samples: Option<usize>,
    batch_size: Option<usize>,
    seed: Option<u64>,
    device: Option<&'static str>,
    sigma: Option<f64>,
    n0: Option<usize>,
    n: Option<usize>,
    alpha: Option<f64>,
    curve: &'static [f64],
    guard: Guard,
}

macro_rules! setters {
    ($($(#[$doc:meta])* $key:ident: $ty:ty;)*) => {$(
        $(#[$doc])*
        pub fn $key(mut self, value: $ty) -> Self {
            self.$key = Some(value);
            self
        }
    )*};
}

impl CertifySpec {
    /// A test named `name` certifying at `radius`: the L∞ ε for `"ibp"`/`"crown"`, the L2
    /// radius for `"smoothing"`.
    pub fn new(name: &'static str, certifier: &'static str, radius: f64) -> Self {
        CertifySpec {
            name,
            certifier,
            radius,
            min_certified_acc: None,
            samples: None,
            batch_size: None,
            seed: None,
            device: None,
            sigma: None,
            n0: None,
            n: None,
            alpha: None,
            curve: &[],
            guard: Guard::default(),
        }
    }

    guard_setters!();

    setters! {
        /// `min_certified_acc = 0.8`: the share of samples correct and certified.
        min_certified_acc: f64;
        /// `samples = 100`: certify the first samples of the data (default all).
        samples: usize;
        /// `batch_size = 100`: samples per bound computation (smoothing: noisy copies per pass).
        batch_size: usize;
        /// `seed = 0`: seed of the smoothing noise (default `ROBUST_SEED`, else 0).
        seed: u64;
        /// `device = "cpu" | "cuda" | "auto"`.
        device: &'static str;
        /// `sigma = 0.25`: smoothing noise (required for smoothing).
        sigma: f64;
        /// `n0 = 100`: smoothing's selection copies.
        n0: usize;
        /// `n = 100000`: smoothing's estimation copies.
        n: usize;
        /// `alpha = 0.001`: smoothing's failure probability.
        alpha: f64;
    }

    /// Every radius of the attribute: smoothing certifies each sample once and each test reads
    /// its radius off the same certificates (the report shows them all).
    pub fn curve(mut self, radii: &'static [f64]) -> Self {
        self.curve = radii;
        self
    }

    /// The test's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Checks every value of the spec without building the case or touching a tensor: what
    /// [`CertifySpec::run`] checks first, and what a suite checks for all its tests before any
    /// runs.
    pub fn check(&self) -> Result<()> {
        self.prepare().map(|_| ())
    }

    /// The threshold and the smoothing configuration (for `smoothing`), once every value is
    /// checked.
    fn prepare(&self) -> Result<(f64, Option<Smoothing>)> {
        let Some(min) = self.min_certified_acc else {
            return Err(Error::param(
                "min_certified_acc",
                "none",
                "a threshold (a certification test that asserts nothing cannot fail)",
            ));
        };
        if !(0.0..=1.0).contains(&min) {
            return Err(Error::param(
                "min_certified_acc",
                min,
                "a fraction in [0, 1]",
            ));
        }
        let smoothing = match self.certifier {
            "smoothing" => {
                let Some(sigma) = self.sigma else {
                    return Err(Error::param("sigma", "none", "a noise level for smoothing"));
                };
                let mut s = Smoothing::new(sigma);
                s.n0 = self.n0.unwrap_or(s.n0);
                s.n = self.n.unwrap_or(s.n);
                s.alpha = self.alpha.unwrap_or(s.alpha);
                s.batch_size = self.batch_size.unwrap_or(s.batch_size);
                s.check()?;
                Some(s)
            }
            other => {
                Method::from_name(other)?;
                crate::attack::check_positive_as("eps", self.radius, "a finite radius > 0")?;
                None
            }
        };
        for &r in self.curve {
            if !(r.is_finite() && r >= 0.0) {
                return Err(Error::param("radius", r, "a finite radius ≥ 0"));
            }
        }
        self.guard.check()?;
        check_run_keys(self.samples, self.batch_size, self.device)?;
        seed_or_env(self.seed)?;
        Ok((min, smoothing))
    }

    /// Builds the case on the selected device, certifies it and checks `min_certified_acc`.
    /// `Err(Error::NotCertified)` when it does not hold.
    pub fn run(
        &self,
        build: impl FnOnce() -> Result<RobustnessCase>,
    ) -> Result<CertificationReport> {
        let (min, smoothing) = self.prepare()?;
        let seed = seed_or_env(self.seed)?;
        let device = self.guard.device(self.device)?;
        let case = device::with_current(&device, build)?;
        let fingerprint = Fingerprint::of(&case, self.samples, 250, &device)?;
        let case = match self.samples {
            Some(n) => case.truncated(n)?,
            None => case,
        };
        let mut report = match smoothing {
            Some(s) => self.shared_smoothing(&case, &s, seed, &device)?,
            None => {
                let method = Method::from_name(self.certifier)?;
                certify::bound_case(&case, method, self.radius, self.batch_size.unwrap_or(100))?
            }
        };
        report.test = self.name.to_string();
        report.min_certified_accuracy = Some(min);
        report.confidence = self.guard.confidence;
        report.fingerprint = Some(fingerprint);
        if report.passed() {
            Ok(report)
        } else {
            Err(Error::NotCertified(Box::new(report)))
        }
    }

    /// Smoothing certificates do not depend on the radius asked about: the first test of a
    /// group computes them and the others re-read them at their radius.
    fn shared_smoothing(
        &self,
        case: &RobustnessCase,
        smoothing: &Smoothing,
        seed: u64,
        device: &candle_core::Device,
    ) -> Result<CertificationReport> {
        let key = format!(
            "{}|{:?}|{seed}|{:?}|{}",
            self.name
                .rsplit_once("::")
                .map_or(self.name, |(group, _)| group),
            smoothing,
            self.samples,
            device::name(device)
        );
        let slot = {
            let mut all = SHARED.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(all.entry(key).or_default())
        };
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(certify::smoothing_case(
                case,
                smoothing,
                self.radius,
                self.curve,
                seed,
                device,
            )?);
        }
        let shared = slot.as_ref().expect("just computed");
        Ok(shared.at_radius(self.radius))
    }
}

type Shared = Arc<Mutex<Option<CertificationReport>>>;

static SHARED: LazyLock<Mutex<HashMap<String, Shared>>> = LazyLock::new(Default::default);
