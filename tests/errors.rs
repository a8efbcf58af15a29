//! Bad input gets a typed error that says what was found and what was expected — never a panic.

mod common;

use candle_core::{DType, Tensor};
use robust_runtime::attack::{self, AttackParams, Pgd, PgdConfig};
use robust_runtime::eval::{evaluate, RunConfig, TestSpec};
use robust_runtime::prelude::*;
use robust_runtime::Error;

fn attack_with(
    model: Model,
    data: Dataset,
) -> robust_runtime::Result<robust_runtime::RobustnessReport> {
    let pgd = Pgd::new(PgdConfig {
        steps: 2,
        ..PgdConfig::default()
    })?;
    evaluate(
        &RobustnessCase::from_model(model, data),
        &pgd,
        &RunConfig::default(),
    )
}

fn zeros(shape: &[usize]) -> Tensor {
    Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap()
}

#[test]
fn a_model_that_does_not_return_n_by_classes_logits() {
    let model = Model::new(|x: &Tensor| x.flatten_from(1)?.unsqueeze(2));
    let err = attack_with(model, Dataset::new(zeros(&[4, 3]), vec![0; 4]).unwrap()).unwrap_err();
    assert!(
        matches!(err, Error::LogitsShape { ref found, batch: 4 } if found == &[4, 3, 1]),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "model output has shape [4, 3, 1], expected [4, classes] logits for a batch of 4 inputs"
    );
}

#[test]
fn data_of_another_shape_than_the_model_takes() {
    // CIFAR-shaped inputs for the MNIST MLP, whose layers declare their input: refused before
    // any attack runs, saying both shapes.
    let err = attack_with(
        common::mlp().unwrap(),
        Dataset::new(zeros(&[2, 3, 32, 32]), vec![0, 1]).unwrap(),
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::DataShape { ref data, ref expected, .. }
            if data == &[3, 32, 32] && expected == &[1, 28, 28]),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "the data's samples have shape [3, 32, 32] (3072 values) but model `mnist_mlp` takes inputs \
         of shape [1, 28, 28] (784 values); expected data of the model's input shape"
    );
    // The same data is refused by certification too.
    let case = RobustnessCase::from_model(
        common::mlp().unwrap(),
        Dataset::new(zeros(&[2, 3, 32, 32]), vec![0, 1]).unwrap(),
    );
    let err =
        robust_runtime::certify::bound_case(&case, robust_runtime::certify::Method::Ibp, 0.1, 2)
            .unwrap_err();
    assert!(matches!(err, Error::DataShape { .. }), "{err}");

    // An opaque candle module declares nothing: candle's own refusal, typed, with the shape.
    let opaque = Model::new(|x: &Tensor| x.flatten_from(1)?.matmul(&zeros(&[784, 10])));
    let err = attack_with(
        opaque,
        Dataset::new(zeros(&[2, 3, 32, 32]), vec![0, 1]).unwrap(),
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::ModelInput { ref input, .. } if input == &[2, 3, 32, 32]),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with("model rejected inputs of shape [2, 3, 32, 32]"),
        "{err}"
    );
}

#[test]
fn labels_beyond_the_models_classes() {
    let data = common::test_digits(5).unwrap();
    let mut labels = data.labels().to_vec();
    labels[3] = 12;
    let err = attack_with(
        common::mlp().unwrap(),
        Dataset::new(data.inputs().clone(), labels).unwrap(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "label 12 at index 3 is out of range for a model with 10 classes (expected 0..10)"
    );
}

#[test]
fn nan_and_infinite_logits() {
    let model = Model::new(|x: &Tensor| x.flatten_from(1)? * f64::NAN);
    let err = attack_with(model, Dataset::new(zeros(&[3, 2]), vec![0; 3]).unwrap()).unwrap_err();
    assert!(
        matches!(err, Error::NonFiniteLogits { count: 6, batch: 3 }),
        "{err}"
    );
    let model = Model::new(|x: &Tensor| x.flatten_from(1)?.log());
    let err = attack_with(model, Dataset::new(zeros(&[3, 2]), vec![0; 3]).unwrap()).unwrap_err();
    assert!(matches!(err, Error::NonFiniteLogits { .. }), "{err}");
}

#[test]
fn empty_data_and_mismatched_labels() {
    let err = Dataset::new(zeros(&[0, 784]), vec![]).unwrap_err();
    assert!(
        matches!(err, Error::Data(_)) && err.to_string().contains("empty"),
        "{err}"
    );
    let err = Dataset::new(zeros(&[500, 784]), vec![0; 499]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid dataset: labels has 499 rows but inputs has 500; expected one label per input"
    );
}

#[test]
fn bad_hyper_parameters_are_rejected_before_any_tensor_work() {
    let bad = [
        (f64::NAN, AttackParams::default(), "eps"),
        (f64::INFINITY, AttackParams::default(), "eps"),
        (-0.1, AttackParams::default(), "eps"),
        (
            0.1,
            AttackParams {
                steps: Some(0),
                ..AttackParams::default()
            },
            "steps",
        ),
        (
            0.1,
            AttackParams {
                restarts: Some(0),
                ..AttackParams::default()
            },
            "restarts",
        ),
        (
            0.1,
            AttackParams {
                step_size: Some(0.0),
                ..AttackParams::default()
            },
            "step_size",
        ),
        (
            0.1,
            AttackParams {
                step_size: Some(f64::NAN),
                ..AttackParams::default()
            },
            "step_size",
        ),
    ];
    for (eps, params, key) in bad {
        let err = attack::build("pgd", eps, &params).err().expect("rejected");
        assert!(
            matches!(err, Error::InvalidParameter { name, .. } if name == key),
            "{key}: {err}"
        );
    }
    let err = attack::build("fgsm", 0.0, &AttackParams::default())
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        "invalid value for `eps`: 0; expected a finite number > 0"
    );
}

#[test]
fn unknown_names_list_what_is_known() {
    let err = attack::build("deepfool2", 0.1, &AttackParams::default())
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        "unknown attack `deepfool2`; expected one of: fgsm, pgd, apgd, apgd-t, autoattack, square, cw, deepfool, fab, fab-t"
    );
    let spec = TestSpec::new("t", "pgd", 0.1).norm("l3").min_acc(0.5);
    let err = spec
        .run(|| unreachable!("the spec is checked before the case is built"))
        .unwrap_err();
    // The attribute's message for `norm = "l3"`: a spec built by hand is checked by the same code.
    assert_eq!(
        err.to_string(),
        "unknown norm `l3`; expected one of `linf`, `l2`"
    );
}

#[test]
fn more_samples_than_the_data_has() {
    let spec = TestSpec::new("t", "fgsm", 0.1).min_acc(0.5).samples(5000);
    let err = spec
        .run(|| {
            Ok(RobustnessCase::from_model(
                common::mlp()?,
                common::test_digits(10)?,
            ))
        })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid value for `samples`: 5000; expected 1..=10 (the size of the data set)"
    );
}

#[test]
fn thresholds_outside_zero_one_and_specs_without_one() {
    let err = TestSpec::new("t", "fgsm", 0.1)
        .min_acc(1.5)
        .run(|| unreachable!())
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("`min_acc` must be between 0 and 1, found `1.5`"),
        "{err}"
    );
    let err = TestSpec::new("t", "fgsm", 0.1)
        .run(|| unreachable!())
        .unwrap_err();
    assert!(
        err.to_string().contains(
            "missing `min_acc` or `max_drop`: a robustness test needs something to assert"
        ),
        "{err}"
    );
}

#[test]
fn malformed_and_missing_files() {
    let dir = std::env::temp_dir().join(format!("robust-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.bin");
    std::fs::write(&junk, b"this is not a data file").unwrap();

    let err = Dataset::from_idx(&junk, &junk).unwrap_err();
    assert!(matches!(err, Error::Format { format: "IDX", .. }), "{err}");
    let err = Dataset::from_npy(&junk, &junk).unwrap_err();
    assert!(matches!(err, Error::Format { format: "npy", .. }), "{err}");
    let err = Dataset::from_safetensors(&junk, "images", "labels").unwrap_err();
    assert!(
        matches!(
            err,
            Error::Format {
                format: "safetensors",
                ..
            }
        ),
        "{err}"
    );
    let err = Dataset::from_idx(dir.join("missing"), &junk).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");

    let reference = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/reference/mnist_test.safetensors"
    );
    let err = Dataset::from_safetensors(reference, "inputs", "labels").unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{reference} has no tensor named `inputs` (found: images, labels)")
    );

    // The MLP's file for the CNN: the error names the missing tensor and lists what is there.
    let err = zoo::MnistCnn::load(common::MLP, &Device::Cpu).unwrap_err();
    let Error::MissingWeight {
        model: "MnistCnn",
        name,
        has,
        ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(name, "0.weight", "{err}");
    assert_eq!(
        has,
        "`1.bias` [256], `1.weight` [256, 784], `3.bias` [256], `3.weight` [256, 256], \
         `5.bias` [10], `5.weight` [10, 256]"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_cuda_device_without_the_cuda_feature() {
    if candle_core::utils::cuda_is_available() {
        return; // a CUDA build: the device exists
    }
    let spec = TestSpec::new("t", "fgsm", 0.1).min_acc(0.5).device("cuda");
    let err = spec.run(|| unreachable!()).unwrap_err();
    assert!(matches!(err, Error::DeviceUnavailable { .. }), "{err}");
    assert!(
        err.to_string().contains("--features robust-runtime/cuda"),
        "{err}"
    );
}

#[test]
fn inputs_outside_the_models_domain_unless_allowed() -> robust_runtime::Result<()> {
    // The test digits scaled ×255 for a [0, 1] model: PGD at ε 0.1 used to "succeed" with
    // perturbations of L∞ 254, every iterate clamped into [0, 1].
    let digits = common::test_digits(20)?;
    let scaled = Dataset::new(
        digits.inputs().affine(255.0, 0.0)?,
        digits.labels().to_vec(),
    )?;
    let case = RobustnessCase::from_model(common::mlp()?, scaled.clone());
    let err = case.check_domain().unwrap_err();
    assert!(
        matches!(err, Error::InputsOutsideDomain { found_lo, found_hi, lo, hi }
            if (found_lo, found_hi, lo, hi) == (0.0, 255.0, 0.0, 1.0)),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("the inputs range over [0, 255] but the model's input domain is [0, 1]"),
        "{err}"
    );
    // Every run refuses it before attacking.
    let err = attack_with(common::mlp()?, scaled.clone()).unwrap_err();
    assert!(matches!(err, Error::InputsOutsideDomain { .. }), "{err}");
    // With the domain that fits the data, or the explicit opt-out, it runs.
    let fitted = RobustnessCase::from_model(common::mlp()?, scaled.clone())
        .with_domain(InputDomain::new(0.0, 255.0)?);
    fitted.check_domain()?;
    let pgd = Pgd::new(PgdConfig {
        steps: 2,
        ..PgdConfig::default()
    })?;
    let allowed = RobustnessCase::from_model(common::mlp()?, scaled).allow_inputs_outside_domain();
    evaluate(&allowed, &pgd, &RunConfig::default())?;
    Ok(())
}

/// `precision = "tf32"` asks for TF32 products on CUDA. The CPU has none: a run there is the
/// f32 run, sample for sample, and its report says f32. Certification refuses TF32 (a bound
/// from rounded products need not hold), and an unknown precision names the known ones.
#[test]
fn tf32_on_the_cpu_is_f32_and_certification_refuses_it() -> robust_runtime::Result<()> {
    use robust_runtime::device::Precision;
    use robust_runtime::eval::CertifySpec;
    let build = || {
        Ok(RobustnessCase::from_model(
            common::mlp()?,
            common::test_digits(64)?,
        ))
    };
    let spec = TestSpec::new("precision::fgsm_eps_0_1", "fgsm", 0.1)
        .min_acc(0.0)
        .masking_checks("off")
        .device("cpu");
    let strict = spec.clone().run(build)?;
    let tf32 = spec.clone().precision("tf32").run(build)?;
    assert_eq!(tf32.precision, Precision::F32);
    assert_eq!(tf32.per_sample, strict.per_sample);
    assert_eq!(
        (tf32.robust_correct, tf32.clean_correct),
        (strict.robust_correct, strict.clean_correct)
    );
    assert!(
        strict.robust_correct < strict.clean_correct,
        "FGSM broke nothing"
    );
    let json = serde_json::to_string(&tf32).expect("a report serialises");
    assert!(
        !json.contains("\"precision\":"),
        "f32 is left out of the JSON: {json}"
    );

    let err = spec.precision("fp16").run(build).unwrap_err();
    assert!(matches!(err, Error::Spec { .. }), "{err}");
    assert!(
        err.to_string().contains("fp16") && err.to_string().contains("tf32"),
        "{err}"
    );

    let err = CertifySpec::new("precision::ibp_eps_0_1", "ibp", 0.1)
        .min_certified_acc(0.0)
        .precision("tf32")
        .run(build)
        .unwrap_err();
    assert!(matches!(err, Error::Spec { .. }), "{err}");
    assert!(
        err.to_string().contains("certification runs in strict f32"),
        "{err}"
    );
    // `"f32"` is what certification runs in anyway: allowed.
    CertifySpec::new("precision::ibp_eps_0_1", "ibp", 0.1)
        .min_certified_acc(0.0)
        .precision("f32")
        .samples(8)
        .device("cpu")
        .run(|| {
            let model = Model::new(common::mlp_net()?);
            Ok(RobustnessCase::from_model(model, common::test_digits(8)?))
        })?;
    Ok(())
}
