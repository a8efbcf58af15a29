//! A robustness test as the macro writes it: attack, ε, hyper-parameters and thresholds, all
//! optional but the first two, validated here before any tensor work (the macro has already
//! checked them at compile time; this is the same check for callers who build specs by hand).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use super::masking::{self, MaskingPolicy};
use super::{evaluate, Fingerprint, RobustnessCase, RobustnessReport, RunConfig, Thresholds};
use robust_spec::Options;

use crate::attack::Attack;
use crate::attack::{self, AttackParams, Loss, Norm, Targeting};
use crate::device::{self, DeviceChoice, Precision};
use crate::{Error, Result};

/// Environment variable that sets the seed of tests that do not set `seed`.
pub const SEED_VAR: &str = crate::env::SEED.name;

/// What every kind of generated test shares beyond its own thresholds: the confidence level of
/// its assertions and its committed baseline (see [`crate::baseline`]). A view of the test's
/// options, made by `guard()`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Guard {
    /// `confidence = 0.95`: thresholds are compared with one-sided Clopper–Pearson bounds at
    /// this level (in (0, 1)) instead of the point estimates.
    pub confidence: Option<f64>,
    /// `baseline = true`: compare with (and record) the committed baseline.
    pub baseline: Option<bool>,
    /// `tolerance = 0.01`: how far (in accuracy, 0.01 = 1 percentage point) a metric may fall
    /// below its baseline before the test fails; setting it turns the baseline on.
    pub tolerance: Option<f64>,
    /// The test crate's folder (the macro passes `CARGO_MANIFEST_DIR`): baselines live in its
    /// `robust-baselines/`, reports go to its `target/robust/`. Without it nothing is written.
    pub manifest_dir: Option<String>,
    /// This is the `_cuda` variant of a test (the macro emits one per test when built with the
    /// `cuda` feature): it runs on the first CUDA device whatever `device` and `ROBUST_DEVICE`
    /// say, compares with the baseline of the test it is a variant of and never writes one.
    pub cuda_variant: bool,
}

/// The suffix of a test's CUDA variant: `pgd_eps_0_1` runs on the CPU or where `device` says,
/// `pgd_eps_0_1_cuda` on the GPU.
pub const CUDA_SUFFIX: &str = "_cuda";

/// The default `tolerance`: one percentage point.
pub const DEFAULT_TOLERANCE: f64 = 0.01;

impl Guard {
    /// Whether the test compares with a baseline: `baseline = true`, or a `tolerance` given.
    pub fn uses_baseline(&self) -> bool {
        self.baseline.unwrap_or(self.tolerance.is_some())
    }

    /// The tolerance, [`DEFAULT_TOLERANCE`] unless set.
    pub fn tolerance(&self) -> f64 {
        self.tolerance.unwrap_or(DEFAULT_TOLERANCE)
    }

    /// The device a test with `device = choice` (default `"auto"`) runs on: the first CUDA
    /// device for a `_cuda` variant, else [`device::select`] (which applies `ROBUST_DEVICE`).
    pub fn device(&self, choice: Option<&str>) -> Result<candle_core::Device> {
        if self.cuda_variant {
            return device::cuda_device();
        }
        device::select(DeviceChoice::from_name(choice.unwrap_or("auto"))?)
    }

    /// The name baselines are filed under: a `_cuda` variant shares its test's baseline.
    pub fn baseline_name<'a>(&self, test: &'a str) -> &'a str {
        match test.strip_suffix(CUDA_SUFFIX) {
            Some(base) if self.cuda_variant => base,
            _ => test,
        }
    }
}

/// What every kind of generated test holds besides what it runs: its name, the options of the
/// key table ([`robust_spec::Options`], one field per key), and where its crate is.
#[derive(Debug, Clone, Default)]
pub(crate) struct Common {
    pub(crate) name: String,
    pub(crate) options: Options,
    pub(crate) manifest_dir: Option<String>,
    pub(crate) cuda_variant: bool,
}

impl Common {
    pub(crate) fn named(name: impl Into<String>) -> Self {
        Common {
            name: name.into(),
            ..Common::default()
        }
    }

    pub(crate) fn guard(&self) -> Guard {
        Guard {
            confidence: self.options.confidence,
            baseline: self.options.baseline,
            tolerance: self.options.tolerance,
            manifest_dir: self.manifest_dir.clone(),
            cuda_variant: self.cuda_variant,
        }
    }

    /// Checks `spec` (this test as the key table describes it) with the rules the attribute and
    /// the suite apply: the same messages for the same mistakes.
    pub(crate) fn check(&self, spec: &robust_spec::Spec) -> Result<()> {
        robust_spec::check_spec(spec).map_err(|issues| Error::Spec {
            test: self.name.clone(),
            message: issues
                .into_iter()
                .map(|i| i.message)
                .collect::<Vec<_>>()
                .join("; "),
        })
    }

    /// `seed`, else `ROBUST_SEED`, else 0.
    pub(crate) fn seed(&self) -> Result<u64> {
        seed_or_env(self.options.seed)
    }
}

/// The builder methods every spec type shares: one per key of the table (generated from it, so
/// that a new key is a new method with no edit here), and the test's folder and variant.
macro_rules! common_builders {
    () => {
        robust_spec::for_each_option!(option_setters);

        /// Sets every option at once: what a suite entry or another front end has read.
        pub fn with_options(mut self, options: robust_spec::Options) -> Self {
            self.common.options = options;
            self
        }
        /// The options set so far.
        pub fn options(&self) -> &robust_spec::Options {
            &self.common.options
        }
        /// The test crate's folder (the macro passes `CARGO_MANIFEST_DIR`).
        pub fn manifest_dir(mut self, value: impl Into<String>) -> Self {
            self.common.manifest_dir = Some(value.into());
            self
        }
        /// Makes this the `_cuda` variant of its test: it runs on the first CUDA device
        /// whatever `device` or `ROBUST_DEVICE` say, and compares with (never writes) the
        /// baseline of the test it varies.
        pub fn cuda_variant(mut self) -> Self {
            self.common.cuda_variant = true;
            self
        }
        /// The same test under another name (the suite harness names its `_cuda` variants).
        #[allow(dead_code)]
        pub(crate) fn renamed(mut self, name: impl Into<String>) -> Self {
            self.common.name = name.into();
            self
        }
        /// The test's name.
        pub fn name(&self) -> &str {
            &self.common.name
        }
        /// The confidence level, baseline settings and folder of this test.
        pub fn guard(&self) -> $crate::eval::Guard {
            self.common.guard()
        }
    };
}
pub(crate) use common_builders;

/// `pub fn key(self, value) -> Self` for every option of the key table.
macro_rules! option_setters {
    ($($(#[doc = $doc:literal])* $key:ident: $ty:ty;)*) => {$(
        $(#[doc = $doc])*
        pub fn $key(mut self, value: $ty) -> Self {
            self.common.options.$key = Some(value);
            self
        }
    )*};
}
pub(crate) use option_setters;

/// One generated robustness test. Built by `#[robustness_test]` with one builder call per key
/// the user wrote (or by a suite entry with [`TestSpec::with_options`]); every other value is
/// the runtime's default.
#[derive(Debug, Clone)]
pub struct TestSpec {
    attack: &'static str,
    eps: f64,
    sweep: Vec<f64>,
    common: Common,
}

impl TestSpec {
    /// A test named `name` (shown in reports) running `attack` at radius `eps`.
    pub fn new(name: impl Into<String>, attack: &'static str, eps: f64) -> Self {
        TestSpec {
            attack,
            eps,
            sweep: Vec::new(),
            common: Common::named(name),
        }
    }

    common_builders!();

    /// Every ε of the attribute: minimal-perturbation attacks (C&W, DeepFool) run once for the
    /// whole list and each test reads its ε off that run.
    pub fn sweep(mut self, eps: &[f64]) -> Self {
        self.sweep = eps.to_vec();
        self
    }

    /// This test as the key table describes it.
    fn spec(&self) -> robust_spec::Spec {
        let mut spec = robust_spec::Spec::new(robust_spec::Kind::Attack);
        spec.attacks = vec![self.attack];
        spec.eps = vec![robust_spec::Radius::from_value(self.eps)];
        spec.options = self.common.options;
        spec
    }

    /// Checks every value of the spec without building the case or touching a tensor: what
    /// [`TestSpec::run`] checks first, and what a suite checks for all its tests before any
    /// runs.
    pub fn check(&self) -> Result<()> {
        self.prepare().map(|_| ())
    }

    /// The attack, its parameters and the masking policy, once every value is checked.
    fn prepare(&self) -> Result<(AttackParams, Box<dyn Attack>, MaskingPolicy)> {
        self.common.check(&self.spec())?;
        let o = &self.common.options;
        let params = AttackParams {
            norm: o.norm.map(Norm::from_name).transpose()?.unwrap_or_default(),
            loss: o.loss.map(Loss::from_name).transpose()?.unwrap_or_default(),
            steps: o.steps,
            step_size: o.step_size,
            restarts: o.restarts,
            random_start: o.random_start,
            target_classes: o.target_classes,
            queries: o.queries,
            p_init: o.p_init,
            confidence: o.kappa,
            binary_search_steps: o.binary_search_steps,
            initial_const: o.initial_const,
            learning_rate: o.learning_rate,
            overshoot: o.overshoot,
            rescale_schedule: o.rescale_schedule,
            version: o
                .version
                .map(attack::Version::from_name)
                .transpose()?
                .unwrap_or_default(),
            members: o
                .attacks
                .unwrap_or_default()
                .iter()
                .map(|m| m.to_string())
                .collect(),
        };
        let attack = attack::build(self.attack, self.eps, &params)?;
        for &e in &self.sweep {
            attack::check_positive("eps", e)?;
        }
        let policy = MaskingPolicy::from_name(o.masking_checks.unwrap_or("fail"))?;
        self.common.seed()?;
        Precision::select(o.precision)?;
        Ok((params, attack, policy))
    }

    fn thresholds(&self) -> Thresholds {
        Thresholds {
            min_acc: self.common.options.min_acc,
            max_drop: self.common.options.max_drop,
            confidence: self.common.options.confidence,
        }
    }

    /// Builds the case with the selected device current, runs it, and checks the thresholds:
    /// the report says which checks held ([`TestSpec::failure`] is the verdict). `Err` only
    /// when the test could not run.
    pub fn run(&self, build: impl FnOnce() -> Result<RobustnessCase>) -> Result<RobustnessReport> {
        let prepared = self.prepare()?;
        let device = self.guard().device(self.common.options.device)?;
        let precision = Precision::select(self.common.options.precision)?.on(&device);
        device::with_precision(&device, precision, || {
            let mut report = self.run_on(prepared, device.clone(), precision, build)?;
            report.precision = precision;
            Ok(report)
        })
    }

    /// [`TestSpec::run`] once the device and its precision are chosen.
    fn run_on(
        &self,
        (params, attack, policy): (AttackParams, Box<dyn Attack>, MaskingPolicy),
        device: candle_core::Device,
        precision: Precision,
        build: impl FnOnce() -> Result<RobustnessCase>,
    ) -> Result<RobustnessReport> {
        let o = &self.common.options;
        let seed = self.common.seed()?;
        let case = device::with_current(&device, build)?.named_after_test(self.name());
        let batch_size = o.batch_size.unwrap_or(RunConfig::default().batch_size);
        let fingerprint = Fingerprint::of(&case, o.samples, batch_size, &device)?;
        let cfg = RunConfig {
            samples: o.samples,
            batch_size: o.batch_size.unwrap_or(RunConfig::default().batch_size),
            seed,
            targeting: if o.targeted.unwrap_or(false) {
                Targeting::Random
            } else {
                Targeting::Untargeted
            },
            device,
            test_name: Some(self.common.name.clone()),
            sweep: self.sweep.clone(),
        };
        let key = format!(
            "{}|{}|{}|{}|{:?}|{:?}|{}|{:?}|{}|{}",
            self.common
                .name
                .rsplit_once("::")
                .map_or("", |(group, _)| group),
            device::name(&cfg.device),
            precision.name(),
            self.attack,
            params,
            self.sweep,
            seed,
            o.samples,
            cfg.batch_size,
            o.targeted.unwrap_or(false)
        );
        let thresholds = self.thresholds();
        let mut report = shared_minimal_run(&key, &case, attack.as_ref(), &cfg)?.check(&thresholds);
        report.fingerprint = Some(fingerprint);
        if policy != MaskingPolicy::Off {
            let group = format!(
                "{}|{}|{:?}|{}|{:?}|{}",
                key.split('|').next().unwrap_or(""),
                precision.name(),
                params.norm,
                seed,
                o.samples,
                cfg.batch_size
            );
            let slot = {
                let mut all = SHARED_MASKING
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                Arc::clone(all.entry(group).or_default())
            };
            let mut shared = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            // Behind gradient-blocking preprocessing, the gradients to judge are the BPDA
            // twin's, which the evaluation attacked through.
            let twin = case.model().adaptive().map(|m| case.with_model(m));
            let judged = twin.as_ref().unwrap_or(&case);
            if shared.is_none() {
                *shared = Some(masking::diagnose_model(judged, params.norm, &cfg)?);
            }
            report.masking = shared.clone().unwrap_or_default();
            drop(shared);
            report
                .masking
                .extend(masking::diagnose_eps(judged, attack.threat(), &cfg)?);
            // The stages are those of the run the report shows: on a randomized model, the
            // attack's randomized version (AutoAttack's rand).
            let staged = attack
                .randomized_version()
                .map(|(version, _)| version)
                .filter(|_| report.adaptive.is_some())
                .and_then(|version| version.as_ensemble())
                .filter(|version| version.members().len() == report.stages.len())
                .or(attack.as_ensemble());
            if let Some(ensemble) = staged {
                let black_box: Vec<bool> = ensemble
                    .members()
                    .iter()
                    .map(|m| m.is_black_box())
                    .collect();
                report
                    .masking
                    .extend(masking::black_box_beats_white_box(&report, &black_box));
            }
        }
        Ok(report)
    }

    /// The verdict on a report of this test: `None` when it passes, else why not. A missed
    /// threshold fails; so, under `masking_checks = "fail"` (the default), do thresholds that
    /// hold on gradients that cannot be trusted.
    pub fn failure(&self, report: &RobustnessReport) -> Option<String> {
        let name = self.common.options.masking_checks.unwrap_or("fail");
        // An unknown name never gets this far: `run` checks it first.
        let policy = MaskingPolicy::from_name(name).unwrap_or(MaskingPolicy::Fail);
        if !report.passed() {
            Some(report.failure_message())
        } else if policy == MaskingPolicy::Fail && !report.masking.is_empty() {
            Some(report.masking_message())
        } else {
            None
        }
    }
}

/// `seed`, else `ROBUST_SEED`, else 0.
pub(crate) fn seed_or_env(seed: Option<u64>) -> Result<u64> {
    match seed {
        Some(s) => Ok(s),
        None => Ok(crate::env::parse(crate::env::SEED, "an unsigned 64-bit integer")?.unwrap_or(0)),
    }
}

/// The first run of a group of tests that differ only in ε: a minimal-perturbation run (reused by
/// the others at their ε), or `None` when the attack is ε-bounded and each test runs its own.
type SharedRun = Arc<Mutex<Option<Option<RobustnessReport>>>>;

/// The ε-independent masking diagnostics of a group of tests (one model, norm, seed and sample set).
static SHARED_MASKING: LazyLock<
    Mutex<HashMap<String, Arc<Mutex<Option<Vec<masking::MaskingSymptom>>>>>>,
> = LazyLock::new(Default::default);

static SHARED_RUNS: LazyLock<Mutex<HashMap<String, SharedRun>>> = LazyLock::new(Default::default);

/// `evaluate`, sharing one unbounded run among the tests of one ε-sweep when the attack is a
/// minimal-perturbation attack: the tests of `eps = [a, b, c]` all read their ε off it.
fn shared_minimal_run(
    key: &str,
    case: &RobustnessCase,
    attack: &dyn Attack,
    cfg: &RunConfig,
) -> Result<RobustnessReport> {
    if cfg.sweep.len() < 2 {
        return evaluate(case, attack, cfg);
    }
    let slot = {
        let mut runs = SHARED_RUNS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(runs.entry(key.to_string()).or_default())
    };
    // Held while the first test runs, so the others wait for its result instead of recomputing.
    let mut slot = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    match &*slot {
        None => {
            let report = evaluate(case, attack, cfg)?;
            let minimal = report.per_sample.iter().any(|s| s.minimal.is_some());
            *slot = Some(minimal.then(|| report.clone()));
            Ok(report)
        }
        Some(None) => {
            drop(slot);
            evaluate(case, attack, cfg)
        }
        Some(Some(shared)) => {
            let threat = attack.threat();
            let outcomes = shared
                .per_sample
                .iter()
                .filter_map(|s| s.at_eps(threat.norm, threat.eps))
                .collect();
            let mut report = RobustnessReport::from_outcomes(
                cfg.test_name.clone().unwrap_or_default(),
                shared.model.clone(),
                attack,
                cfg,
                outcomes,
                0.0,
            );
            report.curve = shared.curve.clone();
            // The shared run's worst examples that fit in this test's ε.
            report.worst = shared
                .worst
                .iter()
                .filter(|w| {
                    let diff = w.clean.iter().zip(&w.adversarial).map(|(c, a)| a - c);
                    let norm = match threat.norm {
                        Norm::Linf => diff.fold(0.0f32, |m, d| m.max(d.abs())),
                        _ => diff.map(|d| d * d).sum::<f32>().sqrt(),
                    };
                    norm <= threat.eps as f32
                })
                .cloned()
                .collect();
            Ok(report)
        }
    }
}
