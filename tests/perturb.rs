//! Perturbation tests: the macro on the fixtures, shrinking against a brute-force scan,
//! counterexamples that replay, determinism, the domain, the regressions file, and the
//! strategies in a plain `proptest!` block.

mod common;

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use proptest::strategy::ValueTree;
use robust_runtime::eval::{
    evaluate_invariance, evaluate_strategy, InvarianceConfig, InvarianceReport, InvarianceSpec,
};
use robust_runtime::perturb::{self, ImageShape, PerturbParams, Perturbation, PerturbationConfig};
use robust_runtime::prelude::*;

// ---- the macro ---------------------------------------------------------------------------

/// The CNN keeps most digits under rotations of up to 15° and under 10 salt-and-pepper pixels
/// (on 1,000 digits × 64 cases: 90.6 % and 96.3 %, README).
#[robustness_test(
    perturbation = ["rotation", "salt_pepper"],
    max_degrees = 15.0,
    pixels = 10,
    cases = 16,
    samples = 40,
    min_invariance = 0.85
)]
fn mnist_cnn() -> robust_runtime::Result<RobustnessCase> {
    Ok(RobustnessCase::from_model(
        common::cnn()?,
        Dataset::mnist_sample()?.test_split(),
    ))
}

/// The MLP under mild photometric changes and noise, and a composition.
#[robustness_test(
    perturbation = ["contrast", "gaussian", "rotation+brightness"],
    max_contrast = 0.2,
    sigma = 0.05,
    max_degrees = 5,
    max_brightness = 0.05,
    cases = 32,
    samples = 100,
    min_invariance = 0.8
)]
fn mnist_mlp() -> robust_runtime::Result<RobustnessCase> {
    Ok(RobustnessCase::from_model(
        common::mlp()?,
        Dataset::mnist_sample()?.test_split(),
    ))
}

/// The failure path: an MLP is not shift-invariant (9.8 % of 1,000 digits survive ±2 px). Its
/// failing seeds are in `robust-regressions/perturb/mnist_mlp_shifted/shift.txt`.
#[robustness_test(
    perturbation = "shift",
    max_shift = 2.0,
    cases = 16,
    samples = 30,
    min_invariance = 0.9
)]
#[should_panic(expected = "perturbation test `perturb::mnist_mlp_shifted::shift` failed")]
fn mnist_mlp_shifted() -> robust_runtime::Result<RobustnessCase> {
    Ok(RobustnessCase::from_model(
        common::mlp()?,
        Dataset::mnist_sample()?.test_split(),
    ))
}

// ---- shrinking reaches the minimal flip ---------------------------------------------------

/// A constructed two-class model on one-channel images whose class-1 logit is a fixed
/// threshold: class 0 while `score(x)` stays above it.
fn threshold_model(score: fn(&Tensor) -> candle_core::Result<Tensor>, threshold: f32) -> Model {
    Model::new(move |x: &Tensor| {
        let s = score(x)?;
        let t = (s.ones_like()? * threshold as f64)?;
        Tensor::stack(&[s, t], 1)
    })
}

/// The smallest |parameter| in `[−max, max]` (scanned every `step`) whose perturbation flips
/// `x` from class 0.
fn brute_force(
    model: &Model,
    x: &[f32],
    shape: ImageShape,
    max: f32,
    step: f32,
    make: fn(f32) -> Perturbation,
) -> f32 {
    let steps = (max / step).round() as usize;
    let values: Vec<f32> = (1..=steps)
        .flat_map(|i| [i as f32 * step, -(i as f32) * step])
        .collect();
    let images: Vec<f32> = values
        .iter()
        .flat_map(|&v| make(v).apply(x, shape, InputDomain::default()).unwrap())
        .collect();
    let batch = Tensor::from_vec(
        images,
        (values.len(), 1, shape.height, shape.width),
        &Device::Cpu,
    )
    .unwrap();
    let preds = model.predict(&batch).unwrap();
    values
        .iter()
        .zip(preds)
        .filter(|(_, p)| *p != 0)
        .map(|(v, _)| v.abs())
        .fold(f32::INFINITY, f32::min)
}

fn images(data: Vec<Vec<f32>>, shape: ImageShape) -> Dataset {
    let n = data.len();
    let x = Tensor::from_vec(
        data.concat(),
        (n, 1, shape.height, shape.width),
        &Device::Cpu,
    )
    .unwrap();
    Dataset::new(x, vec![0; n]).unwrap()
}

#[test]
fn shrinking_finds_the_brightness_that_a_scan_finds() {
    // Score 1.5 − 4·mean(x): brightening by b lowers it linearly (no pixel saturates below
    // 0.6), so only positive b flips, from b* = 0.375 − mean(x) on.
    let shape = ImageShape::new(1, 8, 8);
    let digits: Vec<Vec<f32>> = (0..6)
        .map(|i| {
            (0..64)
                .map(|p| 0.1 + 0.02 * i as f32 + 0.2 * ((p * 7 % 13) as f32 / 13.0))
                .collect()
        })
        .collect();
    let model = threshold_model(|x| (x.flatten_from(1)?.mean(1)? * -4.0)? + 1.5, 0.0);
    let case = RobustnessCase::from_model(model, images(digits.clone(), shape));
    let config = PerturbationConfig::new(
        "brightness",
        PerturbParams {
            max_brightness: 0.2,
            ..PerturbParams::default()
        },
    )
    .unwrap();
    let cfg = InvarianceConfig {
        cases: 64,
        ..InvarianceConfig::default()
    };
    let report = evaluate_invariance(&case, &config, &cfg).unwrap();
    println!("{report}");
    assert_eq!(report.clean_correct, 6);
    let mut compared = 0;
    for c in &report.counterexamples {
        let brute = brute_force(case.model(), &digits[c.sample], shape, 0.2, 1e-4, |b| {
            Perturbation::Brightness { delta: b }
        });
        let Perturbation::Brightness { delta } = c.perturbation else {
            panic!("{}", c.perturbation)
        };
        assert!(delta > 0.0, "only brightening flips: {delta}");
        assert!(
            delta >= brute - 1e-4 && delta <= 1.1 * brute,
            "sample {}: shrunk to {delta}, the scan's minimal flip is {brute}",
            c.sample
        );
        compared += 1;
    }
    // b* = 0.375 − mean ≈ 0.18 − 0.02 i: each digit flips once a case brightens past it.
    assert!(compared >= 5, "{compared} counterexamples");
}

#[test]
fn shrinking_finds_the_rotation_that_a_scan_finds() {
    // A horizontal bar through the centre; the score is the mass left in the centre row, which
    // falls as the bar turns either way.
    let shape = ImageShape::new(1, 15, 15);
    let bar: Vec<f32> = (0..225)
        .map(|i| {
            let (r, c) = (i / 15, i % 15);
            if r == 7 && (2..=12).contains(&c) {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    let mass_at = |degrees: f32| -> f32 {
        Perturbation::Rotation { degrees }
            .apply(&bar, shape, InputDomain::default())
            .unwrap()[7 * 15..8 * 15]
            .iter()
            .sum()
    };
    let mut compared = 0;
    for flip_near in [3.0f32, 6.0, 11.0] {
        let model = threshold_model(
            |x| x.narrow(2, 7, 1)?.flatten_from(1)?.sum(1),
            mass_at(flip_near),
        );
        let case = RobustnessCase::from_model(model, images(vec![bar.clone()], shape));
        let brute = brute_force(case.model(), &bar, shape, 15.0, 0.01, |degrees| {
            Perturbation::Rotation { degrees }
        });
        assert!((brute - flip_near).abs() < 0.05, "{brute} vs {flip_near}");
        let config = PerturbationConfig::new("rotation", PerturbParams::default()).unwrap();
        let cfg = InvarianceConfig {
            cases: 64,
            ..InvarianceConfig::default()
        };
        let report = evaluate_invariance(&case, &config, &cfg).unwrap();
        let [c] = &report.counterexamples[..] else {
            panic!("expected one counterexample: {report}")
        };
        let found = c.size as f32;
        assert!(
            found >= brute - 0.01 && found <= 1.1 * brute,
            "shrunk to {found}°, the scan's minimal flip is {brute}°"
        );
        compared += 1;
    }
    assert_eq!(compared, 3);
}

// ---- counterexamples replay ---------------------------------------------------------------

fn mlp_case(samples: usize) -> RobustnessCase {
    RobustnessCase::from_model(
        common::mlp().unwrap(),
        common::test_digits(samples).unwrap(),
    )
}

fn run(case: &RobustnessCase, name: &str, params: PerturbParams, seed: u64) -> InvarianceReport {
    let config = PerturbationConfig::new(name, params).unwrap();
    let cfg = InvarianceConfig {
        cases: 16,
        seed,
        ..InvarianceConfig::default()
    };
    evaluate_invariance(case, &config, &cfg).unwrap()
}

/// The sample perturbed by `p`, as a batch of one.
fn perturbed(case: &RobustnessCase, sample: usize, p: &Perturbation) -> Tensor {
    let x = case.data().inputs().get(sample).unwrap();
    let dims = x.dims().to_vec();
    let values = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let shape = ImageShape::from_dims(&dims).unwrap();
    let out = p.apply(&values, shape, case.model().domain()).unwrap();
    let mut batch = vec![1];
    batch.extend(dims);
    Tensor::from_vec(out, batch, &Device::Cpu).unwrap()
}

#[test]
fn every_counterexample_flips_the_prediction_when_replayed() {
    let case = mlp_case(100);
    let shape = ImageShape::new(1, 28, 28);
    let params = PerturbParams {
        max_degrees: 25.0,
        pixels: 20,
        ..PerturbParams::default()
    };
    for name in ["rotation", "salt_pepper", "occlusion+gaussian"] {
        let report = run(&case, name, params.clone(), 0);
        assert!(
            report.counterexamples.len() >= 3,
            "{name}: too few counterexamples to check\n{report}"
        );
        let strategy = PerturbationConfig::new(name, params.clone())
            .unwrap()
            .strategy(shape)
            .unwrap();
        for c in &report.counterexamples {
            let label = case.data().labels()[c.sample];
            assert_eq!(c.label, label);
            // The minimal perturbation itself flips, to the class reported.
            let pred = case
                .model()
                .predict(&perturbed(&case, c.sample, &c.perturbation))
                .unwrap();
            assert_eq!(pred, vec![c.pred], "{name}, sample {}", c.sample);
            assert_ne!(c.pred, label);
            // The seed regenerates the case that failed before shrinking…
            let mut tree = perturb::tree_from_seed(&strategy, c.seed).unwrap();
            let original = tree.current();
            let pred = case
                .model()
                .predict(&perturbed(&case, c.sample, &original))
                .unwrap();
            assert_ne!(pred[0], label, "{name}: seed {:016x} does not fail", c.seed);
            assert!(c.perturbation.size() <= original.size() + 1e-9);
            // …and shrinking it again gives the same minimal perturbation.
            let mut last = original;
            if tree.simplify() {
                for _ in 0..256 {
                    let value = tree.current();
                    let p = case
                        .model()
                        .predict(&perturbed(&case, c.sample, &value))
                        .unwrap();
                    let step = if p[0] != label {
                        last = value;
                        tree.simplify()
                    } else {
                        tree.complicate()
                    };
                    if !step {
                        break;
                    }
                }
            }
            assert_eq!(last, c.perturbation, "{name}, sample {}", c.sample);
        }
    }
}

// ---- determinism ---------------------------------------------------------------------------

#[test]
fn the_same_seed_gives_the_same_report_whatever_the_batch_size() {
    let case = mlp_case(60);
    let params = PerturbParams {
        sigma: 0.2,
        ..PerturbParams::default()
    };
    let config = PerturbationConfig::new("gaussian+shift", params).unwrap();
    let at = |seed: u64, batch_size: usize| {
        let cfg = InvarianceConfig {
            cases: 8,
            seed,
            batch_size,
            ..InvarianceConfig::default()
        };
        let mut report = evaluate_invariance(&case, &config, &cfg).unwrap();
        report.seconds = 0.0;
        report
    };
    let a = at(7, 512);
    assert!(!a.counterexamples.is_empty(), "{a}");
    assert_eq!(a, at(7, 512));
    assert_eq!(a, at(7, 13));
    let b = at(8, 512);
    assert_ne!(
        a.counterexamples.iter().map(|c| c.seed).collect::<Vec<_>>(),
        b.counterexamples.iter().map(|c| c.seed).collect::<Vec<_>>()
    );
}

// ---- the domain --------------------------------------------------------------------------

#[test]
fn counterexamples_stay_in_a_domain_other_than_the_unit_box() {
    // The MLP on digits rescaled to [−1, 1] through a model that maps them back.
    let mlp = zoo::MnistMlp::load(common::MLP, &Device::Cpu).unwrap();
    let model =
        Model::new(move |x: &Tensor| candle_core::Module::forward(&mlp, &((x + 1.0)? * 0.5)?))
            .with_domain(InputDomain::new(-1.0, 1.0).unwrap());
    let digits = common::test_digits(60).unwrap();
    let x = ((digits.inputs() * 2.0).unwrap() - 1.0).unwrap();
    let case =
        RobustnessCase::from_model(model, Dataset::new(x, digits.labels().to_vec()).unwrap());
    let params = PerturbParams {
        max_brightness: 0.6,
        sigma: 0.5,
        pixels: 20,
        ..PerturbParams::default()
    };
    for name in ["brightness", "gaussian", "salt_pepper+rotation"] {
        let report = run(&case, name, params.clone(), 1);
        assert!(!report.counterexamples.is_empty(), "{name}\n{report}");
        for c in &report.counterexamples {
            let out = perturbed(&case, c.sample, &c.perturbation);
            let (lo, hi) = (
                out.min_all().unwrap().to_scalar::<f32>().unwrap(),
                out.max_all().unwrap().to_scalar::<f32>().unwrap(),
            );
            assert!(lo >= -1.0 && hi <= 1.0, "{name}: [{lo}, {hi}]");
        }
    }
}

// ---- the regressions file and the failure output -----------------------------------------

#[test]
fn failing_seeds_are_stored_then_replayed_first() {
    let dir = std::env::temp_dir().join(format!("robust-perturb-{}", std::process::id()));
    let manifest: &'static str = Box::leak(dir.to_string_lossy().into_owned().into_boxed_str());
    let spec = |seed: u64, cases: usize| {
        InvarianceSpec::new("suite::mnist_mlp::rotation", "rotation")
            .manifest_dir(manifest)
            .max_degrees(30.0)
            .cases(cases)
            .samples(40)
            .seed(seed)
            .device("cpu")
            .min_invariance(1.0)
    };
    let build = || Ok(mlp_case(40));
    let first = spec(0, 16).run(build).expect("the test runs");
    assert!(!first.passed(), "a 30° rotation must break the MLP");
    // What the macro's runtime makes of it: the message, and the report files (report.json).
    let message = robust_runtime::harness::conclude(&spec(0, 16), Ok(first.clone())).unwrap_err();
    assert!(message.contains("report.json"), "{message}");
    println!("{message}");
    let file = dir.join("robust-regressions/suite/mnist_mlp/rotation.txt");
    assert_eq!(first.replay.path.as_deref(), Some(file.as_path()));
    assert_eq!(first.replay.written, first.counterexamples.len());
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        text.lines().filter(|l| l.starts_with("cc ")).count(),
        first.replay.written
    );
    // What a developer reads: sample, classes, minimal rotation, norms, seed, the picture.
    let c = &first.counterexamples[0];
    for part in [
        "perturbation test `suite::mnist_mlp::rotation` failed: invariance".to_string(),
        format!(
            "sample {}: {} → {} under rotation by",
            c.sample, c.label, c.pred
        ),
        format!("seed {:016x} (case", c.seed),
        "new written (commit the file)".to_string(),
        "✗ invariance".to_string(),
    ] {
        assert!(message.contains(&part), "missing {part:?} in\n{message}");
    }
    let image: PathBuf = c.image.clone().expect("a PNG for the first counterexample");
    let json = first
        .output
        .clone()
        .expect("an output folder")
        .join("report.json");
    let parsed: InvarianceReport =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    // (serde_json parses floats to within a unit in the last place: compare the exact parts.)
    let key = |r: &InvarianceReport| -> Vec<(usize, u64, Perturbation)> {
        r.counterexamples
            .iter()
            .map(|c| (c.sample, c.seed, c.perturbation.clone()))
            .collect()
    };
    assert_eq!(key(&parsed), key(&first));
    assert!(image.ends_with(
        "robust/suite/mnist_mlp/rotation/".to_string() + &format!("sample_{}.png", c.sample)
    ));
    let bytes = std::fs::read(&image).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");

    // Another seed with a single case: the stored seeds are replayed first and still fail.
    let second = spec(99, 1).run(build).expect("the test runs");
    assert!(!second.passed(), "the stored failures must fail again");
    assert_eq!(second.replay.replayed, first.replay.written);
    assert_eq!(second.replay.still_failing, first.replay.written);
    for c in &first.counterexamples {
        let again = second
            .counterexamples
            .iter()
            .find(|d| d.sample == c.sample)
            .expect("every stored failure found again");
        assert_eq!((again.case, again.seed), (None, c.seed));
        assert_eq!(again.perturbation, c.perturbation);
    }
    // Nothing new to store from a replay.
    assert_eq!(
        second.replay.written,
        second
            .counterexamples
            .iter()
            .filter(|c| c.case.is_some())
            .count()
    );
    std::fs::remove_dir_all(&dir).ok();
}

// ---- strategies in a plain proptest! block -----------------------------------------------

mod plain_proptest {
    //! How a user composes our strategies with their own: any `proptest!` block takes them.

    use proptest::prelude::*;
    use proptest::test_runner::{RngAlgorithm, RngSeed};

    use super::*;

    /// The MLP's confident digits: correct, with a logit margin of at least 5.
    fn confident_digits() -> (Model, Vec<(Vec<f32>, u32)>) {
        let model = common::mlp().unwrap();
        let data = common::test_digits(50).unwrap();
        let logits = model
            .logits(data.inputs())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let x = data
            .inputs()
            .flatten_from(1)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let keep = (0..data.len())
            .filter(|&i| {
                let y = data.labels()[i] as usize;
                let other = (0..10)
                    .filter(|&k| k != y)
                    .map(|k| logits[i][k])
                    .fold(f32::MIN, f32::max);
                logits[i][y] - other >= 5.0
            })
            .map(|i| (x[i].clone(), data.labels()[i]))
            .collect();
        (model, keep)
    }

    thread_local! {
        static CONFIDENT: (Model, Vec<(Vec<f32>, u32)>) = confident_digits();
    }

    proptest! {
        // Deterministic, like everything in robust: a fixed ChaCha seed.
        #![proptest_config(ProptestConfig {
            cases: 64,
            rng_algorithm: RngAlgorithm::ChaCha,
            rng_seed: RngSeed::Fixed(0),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn confident_digits_survive_small_rotations_with_a_little_noise(
            pick in any::<prop::sample::Index>(),
            p in perturb::compose(vec![
                perturb::rotation(5.0).unwrap(),
                perturb::gaussian(0.02).unwrap(),
            ]),
            // A strategy of our own, composed with robust's: a gain on the whole image.
            gain in 0.9f32..=1.0,
        ) {
            CONFIDENT.with(|(model, digits)| {
                let (x, label) = pick.get(digits);
                let shape = ImageShape::new(1, 28, 28);
                let out: Vec<f32> = p
                    .apply(x, shape, InputDomain::default())
                    .unwrap()
                    .iter()
                    .map(|v| v * gain)
                    .collect();
                let batch = Tensor::from_vec(out, (1, 1, 28, 28), &Device::Cpu).unwrap();
                prop_assert_eq!(model.predict(&batch).unwrap()[0], *label, "under {}", p);
                Ok(())
            })?;
        }
    }

    #[test]
    fn strategies_report_a_minimal_failure_through_proptest_itself() {
        // proptest's own runner shrinks our value trees: the failing rotation it reports is the
        // first angle past the property's boundary (7°), not the one it first drew.
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            rng_algorithm: RngAlgorithm::ChaCha,
            rng_seed: RngSeed::Fixed(3),
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        let result = runner.run(&perturb::rotation(15.0).unwrap(), |p| {
            prop_assert!(p.size() < 7.0);
            Ok(())
        });
        let Err(proptest::test_runner::TestError::Fail(_, minimal)) = result else {
            panic!("{result:?}")
        };
        assert!((7.0..7.02).contains(&minimal.size()), "{minimal}");
    }
}

#[test]
fn a_strategy_composed_by_hand_runs_through_the_evaluation() {
    let case = mlp_case(30);
    let strategy = perturb::compose(vec![
        perturb::occlusion(4, ImageShape::new(1, 28, 28)).unwrap(),
        perturb::brightness(0.1).unwrap(),
    ]);
    let cfg = InvarianceConfig {
        cases: 8,
        ..InvarianceConfig::default()
    };
    let report =
        evaluate_strategy(&case, "mine", "occlusion then brightness", &strategy, &cfg).unwrap();
    assert_eq!(report.perturbation, "mine");
    assert!(
        report.invariance > 0.0 && report.invariance <= 1.0,
        "{report}"
    );
}

#[test]
fn a_spec_built_by_hand_is_checked_before_the_case_is_built() {
    let never = || -> robust_runtime::Result<RobustnessCase> { panic!("built the case") };
    let err = |spec: InvarianceSpec| spec.run(never).unwrap_err().to_string();
    assert_eq!(
        err(InvarianceSpec::new("t", "rotaton").min_invariance(0.9)),
        "unknown perturbation `rotaton`; did you mean `rotation`?"
    );
    assert!(err(InvarianceSpec::new("t", "rotation")).starts_with("missing `min_invariance`"));
    assert_eq!(
        err(InvarianceSpec::new("t", "rotation")
            .max_degrees(400.0)
            .min_invariance(0.9)),
        "`max_degrees` must be in (0, 180], found `400`"
    );
    assert_eq!(
        err(InvarianceSpec::new("t", "contrast")
            .max_contrast(1.0)
            .min_invariance(0.9)),
        "`max_contrast` must be in (0, 1), found `1`"
    );
}
