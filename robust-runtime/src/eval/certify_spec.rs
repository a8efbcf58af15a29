//! A certification test as the macro writes it: `certify = "ibp" | "crown" | "smoothing"`, the
//! radius, the certifier's parameters and `min_certified_acc`.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use super::spec::{common_builders, option_setters, Common};
use super::Fingerprint;
use crate::certify::{self, CertificationReport, Method, Smoothing};
use crate::device::{self, Precision};
use crate::{Error, Result, RobustnessCase};
use robust_spec::names::{BAB_TIMEOUT, VERIFIERS};

/// Certifiers `certify = "…"` accepts.
pub use robust_spec::names::CERTIFIERS;

/// One generated certification test.
#[derive(Debug, Clone)]
pub struct CertifySpec {
    certifier: &'static str,
    radius: f64,
    curve: Vec<f64>,
    common: Common,
}

impl CertifySpec {
    /// A test named `name` certifying at `radius`: the L∞ ε for `"ibp"`/`"crown"`, the L2
    /// radius for `"smoothing"`.
    pub fn new(name: impl Into<String>, certifier: &'static str, radius: f64) -> Self {
        CertifySpec {
            certifier,
            radius,
            curve: Vec::new(),
            common: Common::named(name),
        }
    }

    common_builders!();

    /// Every radius of the attribute: smoothing certifies each sample once and each test reads
    /// its radius off the same certificates (the report shows them all).
    pub fn curve(mut self, radii: &[f64]) -> Self {
        self.curve = radii.to_vec();
        self
    }

    /// This test as the key table describes it.
    fn spec(&self) -> robust_spec::Spec {
        let mut spec = robust_spec::Spec::new(robust_spec::Kind::Certify);
        spec.certifiers = vec![self.certifier];
        let radius = vec![robust_spec::Radius::from_value(self.radius)];
        if self.certifier == "smoothing" {
            spec.radius = radius;
        } else {
            spec.eps = radius;
        }
        spec.options = self.common.options;
        spec
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
        self.common.check(&self.spec())?;
        let o = &self.common.options;
        let Some(min) = o.min_certified_acc else {
            return Err(Error::param(
                "min_certified_acc",
                "none",
                "a threshold (a certification test that asserts nothing cannot fail)",
            ));
        };
        let smoothing = match self.certifier {
            "smoothing" => {
                let Some(sigma) = o.sigma else {
                    return Err(Error::param("sigma", "none", "a noise level for smoothing"));
                };
                let mut s = Smoothing::new(sigma);
                s.n0 = o.n0.unwrap_or(s.n0);
                s.n = o.n.unwrap_or(s.n);
                s.alpha = o.alpha.unwrap_or(s.alpha);
                s.batch_size = o.batch_size.unwrap_or(s.batch_size);
                s.check()?;
                Some(s)
            }
            other => {
                if !VERIFIERS.contains(&other) {
                    Method::from_name(other)?;
                }
                crate::check::check_positive_as("eps", self.radius, "a finite radius > 0")?;
                if let Some(t) = o.timeout {
                    crate::check::check_positive_as("timeout", t, "seconds, finite and > 0")?;
                }
                None
            }
        };
        for &r in &self.curve {
            if !(r.is_finite() && r >= 0.0) {
                return Err(Error::param("radius", r, "a finite radius ≥ 0"));
            }
        }
        self.common.seed()?;
        Ok((min, smoothing))
    }

    /// Builds the case on the selected device, certifies it and checks `min_certified_acc`.
    /// The report says whether it holds ([`CertifySpec::failure`]); `Err` only when the test
    /// could not run.
    pub fn run(
        &self,
        build: impl FnOnce() -> Result<RobustnessCase>,
    ) -> Result<CertificationReport> {
        let (min, smoothing) = self.prepare()?;
        let o = &self.common.options;
        let seed = self.common.seed()?;
        let device = self.guard().device(o.device)?;
        // Certification is f32 whatever `ROBUST_PRECISION` says: TF32 attack tests on other
        // threads wait until it is done, and it until they are.
        device::with_precision(&device, Precision::F32, || {
            self.certify_on(min, smoothing, seed, device.clone(), build)
        })
    }

    /// [`CertifySpec::run`] once the device is chosen and held in f32.
    fn certify_on(
        &self,
        min: f64,
        smoothing: Option<Smoothing>,
        seed: u64,
        device: candle_core::Device,
        build: impl FnOnce() -> Result<RobustnessCase>,
    ) -> Result<CertificationReport> {
        let o = &self.common.options;
        let case = device::with_current(&device, build)?.named_after_test(self.name());
        let fingerprint = Fingerprint::of(&case, o.samples, 250, &device)?;
        let case = match o.samples {
            Some(n) => case.truncated(n)?,
            None => case,
        };
        let mut report = match smoothing {
            Some(s) => self.shared_smoothing(&case, &s, seed, &device)?,
            None if VERIFIERS.contains(&self.certifier) => {
                let options = crate::verify::Options {
                    timeout: std::time::Duration::from_secs_f64(o.timeout.unwrap_or(BAB_TIMEOUT)),
                    // α-CROWN alone: no attack, no branches.
                    max_branches: (self.certifier == "alpha-crown").then_some(0),
                    restarts: if self.certifier == "alpha-crown" {
                        0
                    } else {
                        10
                    },
                    seed,
                    ..crate::verify::Options::default()
                };
                certify::verify_case(&case, self.radius, &options)?
            }
            None => {
                let method = Method::from_name(self.certifier)?;
                certify::bound_case(&case, method, self.radius, o.batch_size.unwrap_or(100))?
            }
        };
        report.test = self.common.name.clone();
        report.min_certified_accuracy = Some(min);
        report.confidence = o.confidence;
        report.fingerprint = Some(fingerprint);
        Ok(report)
    }

    /// The verdict on a report of this test: `None` when `min_certified_acc` holds.
    pub fn failure(&self, report: &CertificationReport) -> Option<String> {
        (!report.passed()).then(|| report.failure_message())
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
            self.common
                .name
                .rsplit_once("::")
                .map_or(self.common.name.as_str(), |(group, _)| group),
            smoothing,
            self.common.options.samples,
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
                &self.curve,
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
