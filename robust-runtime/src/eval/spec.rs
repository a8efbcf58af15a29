//! A robustness test as the macro writes it: attack, ε, hyper-parameters and thresholds, all
//! optional but the first two, validated here before any tensor work (the macro has already
//! checked them at compile time; this is the same check for callers who build specs by hand).

use super::{evaluate, RobustnessCase, RobustnessReport, RunConfig, Thresholds};
use crate::attack::{self, AttackParams, Loss, Norm, Targeting};
use crate::device::{self, DeviceChoice};
use crate::{Error, Result};

/// Environment variable that sets the seed of tests that do not set `seed`.
pub const SEED_VAR: &str = "ROBUST_SEED";

/// One generated robustness test. Built by `#[robustness_test]` with one builder call per key
/// the user wrote; every other value is the runtime's default.
#[derive(Debug, Clone)]
pub struct TestSpec {
    name: &'static str,
    attack: &'static str,
    eps: f64,
    norm: Option<&'static str>,
    loss: Option<&'static str>,
    steps: Option<usize>,
    step_size: Option<f64>,
    restarts: Option<usize>,
    random_start: Option<bool>,
    targeted: bool,
    thresholds: Thresholds,
    samples: Option<usize>,
    batch_size: Option<usize>,
    seed: Option<u64>,
    device: Option<&'static str>,
}

macro_rules! setters {
    ($($(#[$doc:meta])* $key:ident: $ty:ty => $($field:ident).+;)*) => {$(
        $(#[$doc])*
        pub fn $key(mut self, value: $ty) -> Self {
            self.$($field).+ = Some(value);
            self
        }
    )*};
}

impl TestSpec {
    /// A test named `name` (shown in reports) running `attack` at radius `eps`.
    pub fn new(name: &'static str, attack: &'static str, eps: f64) -> Self {
        TestSpec {
            name,
            attack,
            eps,
            norm: None,
            loss: None,
            steps: None,
            step_size: None,
            restarts: None,
            random_start: None,
            targeted: false,
            thresholds: Thresholds::default(),
            samples: None,
            batch_size: None,
            seed: None,
            device: None,
        }
    }

    setters! {
        /// `norm = "linf" | "l2"` (default `"linf"`).
        norm: &'static str => norm;
        /// `loss = "ce" | "cw"` (default `"ce"`).
        loss: &'static str => loss;
        /// `steps = 40`: iterations of iterative attacks.
        steps: usize => steps;
        /// `step_size = 0.01`: α of iterative attacks (default 2.5·ε/steps).
        step_size: f64 => step_size;
        /// `restarts = 1`: random restarts of PGD.
        restarts: usize => restarts;
        /// `random_start = true`: PGD starts from a random point of the ball.
        random_start: bool => random_start;
        /// `min_acc = 0.8`: robust accuracy must be at least this.
        min_acc: f64 => thresholds.min_acc;
        /// `max_drop = 0.1`: clean minus robust accuracy must be at most this.
        max_drop: f64 => thresholds.max_drop;
        /// `samples = 500`: evaluate the first samples of the data (default all).
        samples: usize => samples;
        /// `batch_size = 250`.
        batch_size: usize => batch_size;
        /// `seed = 0` (default: `ROBUST_SEED`, else 0).
        seed: u64 => seed;
        /// `device = "cpu" | "cuda" | "auto"` (default "auto"; `ROBUST_DEVICE` overrides).
        device: &'static str => device;
    }

    /// `targeted = true`: aim at a random other class per sample.
    pub fn targeted(mut self, targeted: bool) -> Self {
        self.targeted = targeted;
        self
    }

    /// The test's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    fn check_fraction(key: &'static str, value: Option<f64>) -> Result<()> {
        match value {
            Some(v) if !(0.0..=1.0).contains(&v) => {
                Err(Error::param(key, v, "a fraction in [0, 1]"))
            }
            _ => Ok(()),
        }
    }

    /// Builds the case with the selected device current, runs it, and checks the thresholds.
    /// `Err(Error::NotRobust)` when a threshold does not hold.
    pub fn run(&self, build: impl FnOnce() -> Result<RobustnessCase>) -> Result<RobustnessReport> {
        let params = AttackParams {
            norm: self
                .norm
                .map(Norm::from_name)
                .transpose()?
                .unwrap_or_default(),
            loss: self
                .loss
                .map(Loss::from_name)
                .transpose()?
                .unwrap_or_default(),
            steps: self.steps,
            step_size: self.step_size,
            restarts: self.restarts,
            random_start: self.random_start,
            ..AttackParams::default()
        };
        let attack = attack::build(self.attack, self.eps, &params)?;
        Self::check_fraction("min_acc", self.thresholds.min_acc)?;
        Self::check_fraction("max_drop", self.thresholds.max_drop)?;
        if self.thresholds.min_acc.is_none() && self.thresholds.max_drop.is_none() {
            return Err(Error::param(
                "min_acc",
                "none",
                "a threshold: min_acc or max_drop (a test that asserts nothing cannot fail)",
            ));
        }
        let seed = match self.seed {
            Some(s) => s,
            None => match std::env::var(SEED_VAR) {
                Ok(v) => v
                    .trim()
                    .parse()
                    .map_err(|_| Error::param("ROBUST_SEED", v, "an unsigned 64-bit integer"))?,
                Err(_) => 0,
            },
        };
        let choice = DeviceChoice::from_name(self.device.unwrap_or("auto"))?;
        let device = device::select(choice)?;
        let case = device::with_current(&device, build)?;
        let cfg = RunConfig {
            samples: self.samples,
            batch_size: self.batch_size.unwrap_or(RunConfig::default().batch_size),
            seed,
            targeting: if self.targeted {
                Targeting::Random
            } else {
                Targeting::Untargeted
            },
            device,
            test_name: Some(self.name.to_string()),
        };
        let report = evaluate(&case, attack.as_ref(), &cfg)?.check(&self.thresholds);
        if report.passed() {
            Ok(report)
        } else {
            Err(Error::NotRobust(Box::new(report)))
        }
    }
}
