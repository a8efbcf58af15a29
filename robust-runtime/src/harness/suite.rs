//! A declarative suite: a TOML file of models and tests, one libtest trial per case.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use libtest_mimic::{Arguments, Trial};
use serde::Deserialize;

use crate::eval::{CertifySpec, InvarianceSpec, TestSpec, CERTIFIERS};
use crate::{device, zoo, Dataset, Error, Model, Result, RobustnessCase};

/// Builds a case: what a suite file's model names resolve to.
pub type CaseBuilder = Arc<dyn Fn() -> Result<RobustnessCase> + Send + Sync>;

/// A suite read from a file: see the [module documentation](super).
pub struct Suite {
    name: String,
    manifest_dir: PathBuf,
    file: SuiteFile,
    builders: HashMap<String, CaseBuilder>,
}

impl std::fmt::Debug for Suite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Suite")
            .field("name", &self.name)
            .field("manifest_dir", &self.manifest_dir)
            .field("models", &self.file.models.keys().collect::<Vec<_>>())
            .field("builders", &self.builders.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// `[models.<name>]`: a zoo architecture with its weights, on a shipped data set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelEntry {
    /// `mnist_mlp`, `mnist_cnn` or `mnist_small_cnn`.
    zoo: String,
    /// Safetensors file, relative to the crate's folder.
    weights: String,
    /// `mnist_sample` (the shipped sample's test split; the default).
    #[serde(default)]
    data: Option<String>,
}

/// A value or a list of values.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    fn to_vec(&self) -> Vec<T> {
        match self {
            OneOrMany::One(v) => vec![v.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// `[[test]]`: the keys of `#[robustness_test]`, plus `model` and `ignore`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestEntry {
    model: Option<OneOrMany<String>>,
    attack: Option<OneOrMany<String>>,
    certify: Option<OneOrMany<String>>,
    perturbation: Option<OneOrMany<String>>,
    eps: Option<OneOrMany<f64>>,
    radius: Option<OneOrMany<f64>>,
    #[serde(default)]
    ignore: bool,
    // Thresholds and assurance.
    min_acc: Option<f64>,
    max_drop: Option<f64>,
    min_certified_acc: Option<f64>,
    min_invariance: Option<f64>,
    confidence: Option<f64>,
    baseline: Option<bool>,
    tolerance: Option<f64>,
    // Run.
    samples: Option<usize>,
    batch_size: Option<usize>,
    seed: Option<u64>,
    device: Option<String>,
    // Attacks.
    norm: Option<String>,
    loss: Option<String>,
    steps: Option<usize>,
    step_size: Option<f64>,
    restarts: Option<usize>,
    random_start: Option<bool>,
    targeted: Option<bool>,
    target_classes: Option<usize>,
    queries: Option<usize>,
    kappa: Option<f64>,
    overshoot: Option<f64>,
    masking_checks: Option<String>,
    // Certification and perturbations.
    sigma: Option<f64>,
    pixels: Option<usize>,
    max_brightness: Option<f64>,
    max_contrast: Option<f64>,
    max_shift: Option<f64>,
    max_degrees: Option<f64>,
    patch: Option<usize>,
    n0: Option<usize>,
    n: Option<usize>,
    alpha: Option<f64>,
    cases: Option<usize>,
}

impl TestEntry {
    /// The first written key that the entry's kind of test would ignore, with what it belongs
    /// to: a key that does nothing is a test that checks something other than it says, so the
    /// suite refuses it as `#[robustness_test]` does.
    fn misplaced_key<'k>(&self, written: &'k [String]) -> Option<(&'k str, String)> {
        const SHARED: &[&str] = &[
            "confidence",
            "baseline",
            "tolerance",
            "samples",
            "batch_size",
            "seed",
            "device",
        ];
        const ATTACK: &[&str] = &[
            "attack",
            "eps",
            "min_acc",
            "max_drop",
            "norm",
            "loss",
            "steps",
            "step_size",
            "restarts",
            "random_start",
            "targeted",
            "target_classes",
            "queries",
            "kappa",
            "overshoot",
            "masking_checks",
        ];
        const SMOOTHING: &[&str] = &["radius", "sigma", "n0", "n", "alpha"];
        // Each perturbation key, with the families that read it.
        const FAMILY_KEYS: &[(&str, &[&str])] = &[
            ("eps", &["linf", "l2"]),
            ("sigma", &["gaussian"]),
            ("pixels", &["salt_pepper"]),
            ("max_brightness", &["brightness"]),
            ("max_contrast", &["contrast"]),
            ("max_shift", &["shift"]),
            ("max_degrees", &["rotation"]),
            ("patch", &["occlusion"]),
        ];
        let certifiers = self.certify.as_ref().map(OneOrMany::to_vec);
        let perturbations = self.perturbation.as_ref().map(OneOrMany::to_vec);
        for key in written.iter().map(String::as_str) {
            if matches!(key, "model" | "ignore") || SHARED.contains(&key) {
                continue;
            }
            let used = if self.attack.is_some() {
                ATTACK.contains(&key)
            } else if let Some(certifiers) = &certifiers {
                let smoothing = certifiers.iter().any(|c| c == "smoothing");
                let bounds = certifiers.iter().any(|c| c != "smoothing");
                matches!(key, "certify" | "min_certified_acc")
                    || (smoothing && SMOOTHING.contains(&key))
                    || (bounds && key == "eps")
            } else if let Some(perturbations) = &perturbations {
                let families: Vec<&str> = perturbations.iter().flat_map(|p| p.split('+')).collect();
                match FAMILY_KEYS.iter().find(|(k, _)| *k == key) {
                    Some((_, readers)) => readers.iter().any(|f| families.contains(f)),
                    None => matches!(key, "perturbation" | "min_invariance" | "cases"),
                }
            } else {
                true
            };
            if !used {
                let owner = if key == "eps" {
                    "attack tests, IBP and CROWN certification, and the linf or l2 perturbation"
                        .to_string()
                } else if ATTACK.contains(&key) {
                    "attack tests (`attack = ...`)".to_string()
                } else if let Some((_, readers)) = FAMILY_KEYS.iter().find(|(k, _)| *k == key) {
                    let mut owners = vec![format!("the {} perturbation", readers.join(" or "))];
                    if SMOOTHING.contains(&key) {
                        owners.push("smoothing certification".into());
                    }
                    owners.join(" and ")
                } else if SMOOTHING.contains(&key) {
                    "smoothing certification (`certify = \"smoothing\"`)".to_string()
                } else if key == "min_certified_acc" {
                    "certification tests (`certify = ...`)".to_string()
                } else {
                    "perturbation tests (`perturbation = ...`)".to_string()
                };
                return Some((key, owner));
            }
        }
        None
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuiteFile {
    #[serde(default)]
    models: BTreeMap<String, ModelEntry>,
    #[serde(default, rename = "test")]
    tests: Vec<TestEntry>,
    /// The keys written in each `[[test]]`, in file order (filled from the raw table).
    #[serde(skip)]
    written: Vec<Vec<String>>,
}

/// One case of a suite: its trial name and whether it is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuiteCase {
    /// `<suite>::<model>::<test>`, e.g. `suite::mnist_mlp::pgd_eps_0_1`.
    pub name: String,
    /// `ignore = true` in the file: runs only with `--ignored` / `--include-ignored`.
    pub ignored: bool,
}

/// A spec and the case it runs on, ready to become a trial.
enum Runnable {
    Attack(TestSpec),
    Certify(CertifySpec),
    Perturbation(InvarianceSpec),
}

impl Runnable {
    /// Whether the case asks for `device = "cpu"`.
    fn cpu_only(&self) -> bool {
        let device = match self {
            Runnable::Attack(s) => s.device_name(),
            Runnable::Certify(s) => s.device_name(),
            Runnable::Perturbation(s) => s.device_name(),
        };
        device == Some("cpu")
    }

    /// Checks every value of the spec, without running it.
    fn check(&self) -> Result<()> {
        match self {
            Runnable::Attack(s) => s.check(),
            Runnable::Certify(s) => s.check(),
            Runnable::Perturbation(s) => s.check(),
        }
    }

    /// The case's `_cuda` variant, named `name`.
    fn cuda_variant(&self, name: &'static str) -> Runnable {
        match self {
            Runnable::Attack(s) => Runnable::Attack(s.clone().renamed(name).cuda_variant()),
            Runnable::Certify(s) => Runnable::Certify(s.clone().renamed(name).cuda_variant()),
            Runnable::Perturbation(s) => {
                Runnable::Perturbation(s.clone().renamed(name).cuda_variant())
            }
        }
    }
}

/// Suite-file strings live as long as the test process: the specs hold `&'static str`s, like
/// the literals the macro gives them. A suite is read once per process, so this is bounded by
/// the size of the file.
fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

/// `0.05` → `0_05`, as the macro names tests after the literal.
fn name_part(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

impl Suite {
    /// Reads `path` (relative to `manifest_dir`, the test crate's folder); the suite is named
    /// after the file (`robustness.toml` → `robustness`).
    pub fn from_file(manifest_dir: impl AsRef<Path>, path: impl AsRef<Path>) -> Result<Self> {
        let manifest_dir = manifest_dir.as_ref();
        let full = manifest_dir.join(path.as_ref());
        let text = std::fs::read_to_string(&full).map_err(|e| Error::io(&full, e))?;
        let name = full
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "suite".into());
        Self::from_toml(manifest_dir, &name, &text).map_err(|e| match e {
            Error::Format { format, reason, .. } => Error::Format {
                format,
                path: full.clone(),
                reason,
            },
            other => other,
        })
    }

    /// Parses a suite from TOML text; `name` prefixes every trial.
    pub fn from_toml(manifest_dir: impl AsRef<Path>, name: &str, text: &str) -> Result<Self> {
        let bad = |e: toml::de::Error| {
            Error::format(
                "suite",
                Path::new(name),
                format!("{e}expected [models.<name>] tables and [[test]] entries"),
            )
        };
        let mut file: SuiteFile = toml::from_str(text).map_err(bad)?;
        let raw: toml::Table = toml::from_str(text).map_err(bad)?;
        file.written = match raw.get("test") {
            Some(toml::Value::Array(tests)) => tests
                .iter()
                .map(|t| {
                    t.as_table()
                        .map(|t| t.keys().cloned().collect())
                        .unwrap_or_default()
                })
                .collect(),
            _ => Vec::new(),
        };
        let suite = Suite {
            name: name.to_string(),
            manifest_dir: manifest_dir.as_ref().to_path_buf(),
            file,
            builders: HashMap::new(),
        };
        // Every mistake in the file is reported before anything runs.
        suite.runnables()?;
        Ok(suite)
    }

    /// Registers a model the file can name in `model = "…"` without a `[models.…]` table: any
    /// case the user's code builds.
    pub fn model(
        mut self,
        name: &str,
        build: impl Fn() -> Result<RobustnessCase> + Send + Sync + 'static,
    ) -> Self {
        self.builders.insert(name.to_string(), Arc::new(build));
        self
    }

    /// The cases, in file order (test entry × model × attack × ε).
    pub fn cases(&self) -> Result<Vec<SuiteCase>> {
        Ok(self
            .runnables()?
            .into_iter()
            .map(|(name, _, _, ignored)| SuiteCase { name, ignored })
            .collect())
    }

    /// The trials libtest-mimic runs. A passing trial's report goes to the report files, and
    /// to standard output only with `--nocapture` (libtest-mimic does not capture output, so
    /// this keeps `cargo test` as quiet as for ordinary tests); a failing trial's message is
    /// always shown.
    pub fn trials(&self) -> Result<Vec<Trial>> {
        self.trials_printing(false)
    }

    fn trials_printing(&self, print_passes: bool) -> Result<Vec<Trial>> {
        let mut trials = Vec::new();
        for (name, model, runnable, ignored) in self.runnables()? {
            let build = self.builder(&model)?;
            let trial = Trial::test(name, move || {
                let verdict = match &runnable {
                    Runnable::Attack(spec) => super::run(spec, || build()),
                    Runnable::Certify(spec) => super::run(spec, || build()),
                    Runnable::Perturbation(spec) => super::run(spec, || build()),
                };
                match verdict {
                    Ok(message) => {
                        if print_passes {
                            println!("{message}");
                        }
                        Ok(())
                    }
                    Err(message) => Err(message.into()),
                }
            })
            .with_ignored_flag(ignored);
            trials.push(trial);
        }
        Ok(trials)
    }

    /// Runs the suite with the process's command line (`cargo test` / `cargo nextest` flags).
    pub fn run(self) -> Result<ExitCode> {
        self.run_with(Arguments::from_args())
    }

    /// Runs the suite with the given libtest arguments.
    pub fn run_with(self, args: Arguments) -> Result<ExitCode> {
        let trials = self.trials_printing(args.nocapture)?;
        if let (true, Some(reason)) = (device::CUDA_BUILT, device::cuda_unavailable()) {
            if !args.list {
                eprintln!("robust: the `_cuda` trials are ignored, no GPU is usable: {reason}");
            }
        }
        let conclusion = libtest_mimic::run(&args, trials);
        Ok(if conclusion.has_failed() {
            ExitCode::from(101)
        } else {
            ExitCode::SUCCESS
        })
    }

    /// The case builder of model `name`: registered with [`Suite::model`], else its
    /// `[models.name]` table.
    fn builder(&self, name: &str) -> Result<CaseBuilder> {
        if let Some(b) = self.builders.get(name) {
            return Ok(Arc::clone(b));
        }
        let Some(entry) = self.file.models.get(name) else {
            let mut known: Vec<&str> = self.file.models.keys().map(String::as_str).collect();
            known.extend(self.builders.keys().map(String::as_str));
            known.sort();
            return Err(Error::param(
                "model",
                name,
                format!(
                    "a [models.<name>] table of the suite or a model registered with Suite::model (known: {})",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                ),
            ));
        };
        let entry = entry.clone();
        let weights = self.manifest_dir.join(&entry.weights);
        let model_name = name.to_string();
        Ok(Arc::new(move || {
            let dev = device::current();
            let model = match entry.zoo.as_str() {
                "mnist_mlp" => Model::new(zoo::MnistMlp::load(&weights, &dev)?),
                "mnist_cnn" => Model::new(zoo::MnistCnn::load(&weights, &dev)?),
                "mnist_small_cnn" => {
                    Model::new(zoo::layers::mnist_small_cnn().load(&weights, &dev)?)
                }
                other => {
                    return Err(Error::param(
                        "zoo",
                        other,
                        "one of mnist_mlp, mnist_cnn, mnist_small_cnn",
                    ))
                }
            };
            let data = match entry.data.as_deref().unwrap_or("mnist_sample") {
                "mnist_sample" => Dataset::mnist_sample()?.test_split(),
                other => return Err(Error::param("data", other, "mnist_sample")),
            };
            Ok(RobustnessCase::from_model(
                model.named(model_name.clone()),
                data,
            ))
        }))
    }

    /// Every case with its spec: (trial name, model, spec, ignored), each followed by its
    /// `_cuda` variant when robust-runtime has the `cuda` feature and the case does not ask for
    /// `device = "cpu"`. The variants are ignored when no GPU is usable at run time.
    fn runnables(&self) -> Result<Vec<(String, String, Runnable, bool)>> {
        let cases = self.cases_in_file()?;
        if !device::CUDA_BUILT {
            return Ok(cases);
        }
        let no_gpu = device::cuda_unavailable().is_some();
        let mut out = Vec::with_capacity(2 * cases.len());
        for (name, model, runnable, ignored) in cases {
            let variant = (!runnable.cpu_only()).then(|| {
                let name = format!("{name}{}", crate::eval::CUDA_SUFFIX);
                let spec = runnable.cuda_variant(leak(&name));
                (name, model.clone(), spec, ignored || no_gpu)
            });
            out.push((name, model, runnable, ignored));
            out.extend(variant);
        }
        Ok(out)
    }

    /// The cases the file describes, in file order.
    fn cases_in_file(&self) -> Result<Vec<(String, String, Runnable, bool)>> {
        let mut out = Vec::new();
        let dir = leak(&self.manifest_dir.to_string_lossy());
        for (i, t) in self.file.tests.iter().enumerate() {
            let at = |detail: &str| {
                Error::format(
                    "suite",
                    Path::new(&self.name),
                    format!("[[test]] number {}: {detail}", i + 1),
                )
            };
            let models = t
                .model
                .as_ref()
                .ok_or_else(|| at("no `model`; expected model = \"<name>\" or a list"))?
                .to_vec();
            let kinds = [
                t.attack.is_some(),
                t.certify.is_some(),
                t.perturbation.is_some(),
            ];
            if kinds.iter().filter(|&&k| k).count() != 1 {
                return Err(at(
                    "expected exactly one of `attack`, `certify` and `perturbation`",
                ));
            }
            let written = self.file.written.get(i).map_or(&[][..], Vec::as_slice);
            if let Some((key, owner)) = t.misplaced_key(written) {
                return Err(at(&format!(
                    "`{key}` is a parameter of {owner}; this test does not use it (remove it, \
                     or move it to a test that does)"
                )));
            }
            let first_of_entry = out.len();
            for model in &models {
                let group = format!("{}::{}", self.name, name_part(model));
                if let Some(attacks) = &t.attack {
                    let eps = t
                        .eps
                        .as_ref()
                        .ok_or_else(|| at("an attack test needs `eps`"))?
                        .to_vec();
                    for attack in attacks.to_vec() {
                        for &e in &eps {
                            let name = format!(
                                "{group}::{}_eps_{}",
                                name_part(&attack),
                                name_part(&e.to_string())
                            );
                            let spec =
                                self.attack_spec(t, leak(&name), leak(&attack), e, &eps, dir);
                            out.push((name, model.clone(), Runnable::Attack(spec), t.ignore));
                        }
                    }
                } else if let Some(certifiers) = &t.certify {
                    for certifier in certifiers.to_vec() {
                        if !CERTIFIERS.contains(&certifier.as_str()) {
                            return Err(at(&format!(
                                "unknown certifier `{certifier}`; expected one of {}",
                                CERTIFIERS.join(", ")
                            )));
                        }
                        let (key, radii) = if certifier == "smoothing" {
                            ("radius", t.radius.as_ref())
                        } else {
                            ("eps", t.eps.as_ref())
                        };
                        let radii = radii
                            .ok_or_else(|| at(&format!("`{certifier}` needs `{key}`")))?
                            .to_vec();
                        for &r in &radii {
                            let name =
                                format!("{group}::{certifier}_{key}_{}", name_part(&r.to_string()));
                            let spec =
                                self.certify_spec(t, leak(&name), leak(&certifier), r, &radii, dir);
                            out.push((name, model.clone(), Runnable::Certify(spec), t.ignore));
                        }
                    }
                } else if let Some(perturbations) = &t.perturbation {
                    for p in perturbations.to_vec() {
                        let name = format!("{group}::{}", name_part(&p));
                        let spec = self.perturbation_spec(t, leak(&name), leak(&p), dir);
                        out.push((name, model.clone(), Runnable::Perturbation(spec), t.ignore));
                    }
                }
            }
            // Every value is checked now, so that a mistake in the last test stops the suite
            // before the first one runs, not when its trial comes up.
            for (k, (name, _, runnable, _)) in out.iter().enumerate().skip(first_of_entry) {
                if out[..k].iter().any(|(other, ..)| other == name) {
                    return Err(at(&format!(
                        "it names trial `{name}` a second time (two values that print alike, \
                         such as eps = [0.1, 0.10], or a repeated name?); expected distinct \
                         trial names"
                    )));
                }
                runnable
                    .check()
                    .map_err(|e| at(&format!("`{name}`: {e}")))?;
            }
        }
        Ok(out)
    }

    fn attack_spec(
        &self,
        t: &TestEntry,
        name: &'static str,
        attack: &'static str,
        eps: f64,
        sweep: &[f64],
        dir: &'static str,
    ) -> TestSpec {
        let mut s = TestSpec::new(name, attack, eps).manifest_dir(dir);
        if sweep.len() > 1 {
            s = s.sweep(Box::leak(sweep.to_vec().into_boxed_slice()));
        }
        macro_rules! set {
            ($($key:ident),*) => {$(if let Some(v) = t.$key.clone() { s = s.$key(v); })*};
        }
        macro_rules! set_str {
            ($($key:ident),*) => {$(if let Some(v) = &t.$key { s = s.$key(leak(v)); })*};
        }
        set!(min_acc, max_drop, confidence, baseline, tolerance, samples, batch_size, seed);
        set!(
            steps,
            step_size,
            restarts,
            random_start,
            target_classes,
            queries,
            kappa,
            overshoot
        );
        set_str!(device, norm, loss, masking_checks);
        if let Some(v) = t.targeted {
            s = s.targeted(v);
        }
        s
    }

    fn certify_spec(
        &self,
        t: &TestEntry,
        name: &'static str,
        certifier: &'static str,
        radius: f64,
        radii: &[f64],
        dir: &'static str,
    ) -> CertifySpec {
        let mut s = CertifySpec::new(name, certifier, radius)
            .manifest_dir(dir)
            .curve(Box::leak(radii.to_vec().into_boxed_slice()));
        macro_rules! set {
            ($($key:ident),*) => {$(if let Some(v) = t.$key.clone() { s = s.$key(v); })*};
        }
        set!(
            min_certified_acc,
            confidence,
            baseline,
            tolerance,
            samples,
            batch_size,
            seed
        );
        set!(sigma, n0, n, alpha);
        if let Some(v) = &t.device {
            s = s.device(leak(v));
        }
        s
    }

    fn perturbation_spec(
        &self,
        t: &TestEntry,
        name: &'static str,
        perturbation: &'static str,
        dir: &'static str,
    ) -> InvarianceSpec {
        let mut s = InvarianceSpec::new(name, perturbation).manifest_dir(dir);
        macro_rules! set {
            ($($key:ident),*) => {$(if let Some(v) = t.$key.clone() { s = s.$key(v); })*};
        }
        set!(
            min_invariance,
            confidence,
            baseline,
            tolerance,
            samples,
            batch_size,
            seed
        );
        set!(
            sigma,
            cases,
            pixels,
            max_brightness,
            max_contrast,
            max_shift,
            max_degrees,
            patch
        );
        if let Some(v) = t.eps.as_ref().map(OneOrMany::to_vec) {
            if let Some(&e) = v.first() {
                s = s.eps(e);
            }
        }
        if let Some(v) = &t.device {
            s = s.device(leak(v));
        }
        s
    }
}
