//! A declarative suite: a TOML file of models and tests, one libtest trial per case.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use libtest_mimic::{Arguments, Trial};
use serde::Deserialize;

use robust_spec::{identifier_chars, CaseKind, Entry};
use toml::de::{DeTable, DeValue};

use crate::eval::{CertifySpec, InvarianceSpec, TestSpec};
use crate::{device, zoo, Dataset, Error, Model, Result, RobustnessCase};

/// Builds a case: what a suite file's model names resolve to.
pub type CaseBuilder = Arc<dyn Fn() -> Result<RobustnessCase> + Send + Sync>;

/// A suite read from a file: see the [module documentation](super).
pub struct Suite {
    name: String,
    manifest_dir: PathBuf,
    file: SuiteFile,
    tests: Vec<TestEntry>,
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

/// `[models.<name>]`: a zoo architecture with its weights, or an ONNX file, on a shipped data
/// set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelEntry {
    /// `mnist_mlp`, `mnist_cnn` or `mnist_small_cnn` (with `weights`).
    #[serde(default)]
    zoo: Option<String>,
    /// Safetensors file, relative to the crate's folder.
    #[serde(default)]
    weights: Option<String>,
    /// An ONNX file instead of `zoo` and `weights`, relative to the crate's folder
    /// (`nn::Graph::from_onnx`).
    #[serde(default)]
    onnx: Option<String>,
    /// `mnist_sample` (the shipped sample's test split; the default).
    #[serde(default)]
    data: Option<String>,
}

/// `[[test]]`: the suite's own keys, `model` and `ignore`, and the entries of the key table,
/// which `robust_spec` reads as it reads `#[robustness_test(...)]`: the same keys, checks,
/// messages and test names.
#[derive(Debug, Clone)]
struct TestEntry {
    /// `model = "m"` or a list.
    models: Vec<String>,
    /// `ignore = true`.
    ignore: bool,
    /// Every other key, in the file's order, numbers with their digits as written.
    entries: Vec<Entry>,
}

/// The suite's own keys of a `[[test]]`.
const SUITE_KEYS: &[&str] = &["model", "ignore"];

impl TestEntry {
    fn read(table: &DeTable<'_>) -> std::result::Result<TestEntry, String> {
        let models = match table.get("model").map(|v| v.get_ref()) {
            None => Vec::new(),
            Some(DeValue::String(m)) => vec![m.to_string()],
            Some(DeValue::Array(list)) => list
                .iter()
                .map(|v| match v.get_ref() {
                    DeValue::String(m) => Ok(m.to_string()),
                    other => Err(format!(
                        "expected a model name for `model`, found a {}",
                        other.type_str()
                    )),
                })
                .collect::<std::result::Result<_, _>>()?,
            Some(other) => {
                return Err(format!(
                    "expected model = \"<name>\" or a list of names, found a {}",
                    other.type_str()
                ))
            }
        };
        let ignore = match table.get("ignore").map(|v| v.get_ref()) {
            None => false,
            Some(DeValue::Boolean(b)) => *b,
            Some(other) => {
                return Err(format!(
                    "expected `true` or `false` for `ignore`, found a {}",
                    other.type_str()
                ))
            }
        };
        Ok(TestEntry {
            models,
            ignore,
            entries: robust_spec::toml::entries(table, SUITE_KEYS),
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuiteFile {
    #[serde(default)]
    models: BTreeMap<String, ModelEntry>,
    /// The `[[test]]` tables; read again by [`TestEntry::read`], which keeps each number's
    /// digits (serde would make `8e-3` a bare `0.008`).
    #[serde(default, rename = "test")]
    _tests: Vec<toml::Table>,
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
    /// The spec of one generated test, as `#[robustness_test]` expands it: the same builder
    /// values, the same ε sweep and smoothing curve.
    fn from_case(
        case: &robust_spec::Case<'_>,
        spec: &robust_spec::Spec,
        name: String,
        dir: &str,
    ) -> Runnable {
        let options = spec.options_for(case);
        match &case.test {
            CaseKind::Attack { attack, eps } => {
                let mut s = TestSpec::new(name, attack, eps.value)
                    .manifest_dir(dir)
                    .with_options(options);
                if spec.eps.len() > 1 {
                    let all: Vec<f64> = spec.eps.iter().map(|e| e.value).collect();
                    s = s.sweep(&all);
                }
                Runnable::Attack(s)
            }
            CaseKind::Certify {
                certifier,
                radius,
                all,
            } => {
                let mut s = CertifySpec::new(name, certifier, radius.value)
                    .manifest_dir(dir)
                    .with_options(options);
                if *certifier == "smoothing" && all.len() > 1 {
                    let all: Vec<f64> = all.iter().map(|r| r.value).collect();
                    s = s.curve(&all);
                }
                Runnable::Certify(s)
            }
            CaseKind::Perturbation { perturbation } => {
                let mut s = InvarianceSpec::new(name, perturbation.name.clone())
                    .manifest_dir(dir)
                    .with_options(options);
                if let Some(eps) = spec.eps_for(case) {
                    s = s.eps(eps.value);
                }
                Runnable::Perturbation(s)
            }
        }
    }

    /// Runs the spec on the case `build` returns (see [`super::judge`]).
    fn judge(&self, build: impl FnOnce() -> Result<RobustnessCase>) -> super::Verdict {
        match self {
            Runnable::Attack(spec) => super::judge(spec, build),
            Runnable::Certify(spec) => super::judge(spec, build),
            Runnable::Perturbation(spec) => super::judge(spec, build),
        }
    }

    /// Whether the case asks for `device = "cpu"`.
    fn cpu_only(&self) -> bool {
        let options = match self {
            Runnable::Attack(s) => s.options(),
            Runnable::Certify(s) => s.options(),
            Runnable::Perturbation(s) => s.options(),
        };
        options.device == Some("cpu")
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
    fn cuda_variant(&self, name: String) -> Runnable {
        match self {
            Runnable::Attack(s) => Runnable::Attack(s.clone().renamed(name).cuda_variant()),
            Runnable::Certify(s) => Runnable::Certify(s.clone().renamed(name).cuda_variant()),
            Runnable::Perturbation(s) => {
                Runnable::Perturbation(s.clone().renamed(name).cuda_variant())
            }
        }
    }
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
        let file: SuiteFile = toml::from_str(text).map_err(bad)?;
        let raw = DeTable::parse(text).map_err(bad)?;
        let mut tests = Vec::new();
        if let Some(DeValue::Array(list)) = raw.get_ref().get("test").map(|v| v.get_ref()) {
            for (i, item) in list.iter().enumerate() {
                let DeValue::Table(table) = item.get_ref() else {
                    continue;
                };
                let entry = TestEntry::read(table).map_err(|detail| {
                    Error::format(
                        "suite",
                        Path::new(name),
                        format!("[[test]] number {}: {detail}", i + 1),
                    )
                })?;
                tests.push(entry);
            }
        }
        let suite = Suite {
            name: name.to_string(),
            manifest_dir: manifest_dir.as_ref().to_path_buf(),
            file,
            tests,
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
                match runnable.judge(|| build()).into_result() {
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

    /// Runs every case whose name contains `filter` in order, in this process (what `cargo
    /// robust run` does, with no test target): `starting` is told each name, `ended` each
    /// result. Ignored cases are listed with no verdict unless `include_ignored`.
    pub fn run_each(
        &self,
        filter: Option<&str>,
        include_ignored: bool,
        mut starting: impl FnMut(&str),
        mut ended: impl FnMut(&super::TrialResult),
    ) -> Result<Vec<super::TrialResult>> {
        let mut results = Vec::new();
        for (name, model, runnable, ignored) in self.runnables()? {
            if filter.is_some_and(|f| !name.contains(f)) {
                continue;
            }
            starting(&name);
            let started = std::time::Instant::now();
            let verdict = (include_ignored || !ignored).then(|| match self.builder(&model) {
                Err(e) => super::Verdict::Error(e.to_string()),
                Ok(build) => runnable.judge(|| build()),
            });
            results.push(super::TrialResult {
                name,
                seconds: verdict
                    .as_ref()
                    .map_or(0.0, |_| started.elapsed().as_secs_f64()),
                verdict,
            });
            ended(results.last().expect("just pushed"));
        }
        Ok(results)
    }

    /// Runs the suite with the process's command line (`cargo test` / `cargo nextest` flags).
    pub fn run(self) -> Result<ExitCode> {
        self.run_with(Arguments::from_args())
    }

    /// Runs the suite with the given libtest arguments.
    pub fn run_with(self, args: Arguments) -> Result<ExitCode> {
        crate::__private::warn_if_unoptimised();
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
        let file = |f: &String| self.manifest_dir.join(f);
        let (zoo, path) =
            match (&entry.onnx, &entry.zoo, &entry.weights) {
                (Some(onnx), None, None) => (None, file(onnx)),
                (None, Some(zoo), Some(weights)) => (Some(zoo.clone()), file(weights)),
                _ => return Err(Error::param(
                    "models",
                    name,
                    "a table with `onnx = \"<file>.onnx\"`, or with `zoo` and `weights` together",
                )),
            };
        let model_name = name.to_string();
        Ok(Arc::new(move || {
            let dev = device::current();
            let model = match zoo.as_deref() {
                None => Model::new(crate::nn::Graph::from_onnx(&path, &dev)?),
                Some("mnist_mlp") => Model::new(zoo::MnistMlp::load(&path, &dev)?),
                Some("mnist_cnn") => Model::new(zoo::MnistCnn::load(&path, &dev)?),
                Some("mnist_small_cnn") => {
                    Model::new(zoo::layers::mnist_small_cnn().load(&path, &dev)?)
                }
                Some(other) => {
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
                let spec = runnable.cuda_variant(name.clone());
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
        let dir = self.manifest_dir.to_string_lossy().into_owned();
        for (i, t) in self.tests.iter().enumerate() {
            let at = |detail: &str| {
                Error::format(
                    "suite",
                    Path::new(&self.name),
                    format!("[[test]] number {}: {detail}", i + 1),
                )
            };
            if t.models.is_empty() {
                return Err(at("no `model`; expected model = \"<name>\" or a list"));
            }
            if t.entries.iter().any(|e| e.key == "crate") {
                return Err(at(
                    "`crate` is where `#[robustness_test]` finds the runtime; a suite file has no \
                     use for it (remove it)",
                ));
            }
            // The attribute's reading and checks, every mistake of the entry at once.
            let spec = robust_spec::parse(&t.entries).map_err(|issues| {
                let messages: Vec<String> = issues.into_iter().map(|i| i.message).collect();
                at(&messages.join("; "))
            })?;
            let first_of_entry = out.len();
            for model in &t.models {
                let group = format!("{}::{}", self.name, identifier_chars(model));
                for case in spec.cases() {
                    let name = format!("{group}::{}", case.name);
                    let runnable = Runnable::from_case(&case, &spec, name.clone(), &dir);
                    out.push((name, model.clone(), runnable, t.ignore));
                }
            }
            // Every value is checked now, so that a mistake in the last test stops the suite
            // before the first one runs, not when its trial comes up.
            for (k, (name, _, runnable, _)) in out.iter().enumerate().skip(first_of_entry) {
                if out[..k].iter().any(|(other, ..)| other == name) {
                    return Err(at(&format!(
                        "it names trial `{name}` a second time (a repeated model, or the same \
                         test in two entries?); expected distinct trial names"
                    )));
                }
                runnable
                    .check()
                    .map_err(|e| at(&format!("`{name}`: {e}")))?;
            }
        }
        Ok(out)
    }
}
