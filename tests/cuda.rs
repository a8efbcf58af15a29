//! CUDA agrees with the CPU: every attack, certifier, smoothing, invariance runs and training,
//! run through the same entry points the macro uses, once on the CPU and once on the first
//! CUDA device, on the committed fixtures.
//!
//! Built only with `--features cuda`, and run on a machine with a GPU:
//!
//! ```text
//! cargo test --features cuda --test cuda -- --nocapture --test-threads 1
//! ```
//!
//! Robust accuracy must agree within 0.5 percentage points (one sample for the slow attacks run
//! on 100 digits), bound certificates within 1e-4 (of
//! the bound's magnitude, at least 1), smoothing and invariance within one sample. Inputs,
//! noise, random starts and shuffles come from the same seeded host RNG on both devices, so
//! what differs is only the floating-point order of the GPU's kernels.
#![cfg(feature = "cuda")]

mod common;

use std::time::Instant;

use candle_core::Tensor;

use robust_runtime::certify::{self, Method};
use robust_runtime::defense::{self, Regime, TrainConfig};
use robust_runtime::device::{self, DeviceChoice, Precision};
use robust_runtime::eval::{CertifySpec, InvarianceSpec, TestSpec};
use robust_runtime::prelude::*;

/// The MNIST CNN or MLP fixture on the device the spec selected, with the first `n` digits.
fn case(model: &str, n: usize) -> robust_runtime::Result<RobustnessCase> {
    let dev = device::current();
    let model = match model {
        "mnist_cnn" => Model::new(zoo::MnistCnn::load(common::CNN, &dev)?),
        "mnist_mlp" => Model::new(zoo::MnistMlp::load(common::MLP, &dev)?),
        "mnist_ibp" => Model::new(zoo::layers::mnist_small_cnn().load(common::IBP, &dev)?),
        "mnist_noise" => Model::new(zoo::layers::mnist_small_cnn().load(common::NOISE, &dev)?),
        other => panic!("no fixture {other}"),
    };
    Ok(RobustnessCase::from_model(model, common::test_digits(n)?))
}

/// Runs `spec` on the CPU and as its CUDA variant; returns both results and prints the line.
fn both<R>(
    what: &str,
    cpu: impl FnOnce() -> robust_runtime::Result<R>,
    gpu: impl FnOnce() -> robust_runtime::Result<R>,
) -> (R, R) {
    let t = Instant::now();
    let a = cpu().unwrap_or_else(|e| panic!("{what} on the CPU: {e}"));
    let cpu_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let b = gpu().unwrap_or_else(|e| panic!("{what} on CUDA: {e}"));
    println!(
        "{what}: CPU {cpu_s:.2} s, CUDA {:.2} s",
        t.elapsed().as_secs_f64()
    );
    (a, b)
}

/// One attack on both devices; robust accuracy within 0.5 pp. Returns the GPU's report.
fn attack(
    name: &'static str,
    model: &'static str,
    spec: TestSpec,
    n: usize,
) -> robust_runtime::RobustnessReport {
    let spec = spec.samples(n).min_acc(0.0).masking_checks("off");
    let (cpu, gpu) = both(
        name,
        || spec.clone().device("cpu").run(|| case(model, n)),
        || spec.clone().cuda_variant().run(|| case(model, n)),
    );
    assert_eq!(gpu.device, "cuda:0", "{name} ran on {}", gpu.device);
    assert_eq!(
        cpu.clean_accuracy, gpu.clean_accuracy,
        "{name}: clean accuracy"
    );
    let diff = (cpu.robust_accuracy - gpu.robust_accuracy).abs();
    // 0.5 pp, or one sample where fewer than 200 are attacked.
    let allowed = (0.005f64).max(1.0 / n as f64);
    println!(
        "  {name} on {n} digits of {model}: robust accuracy CPU {:.2} %, CUDA {:.2} %",
        100.0 * cpu.robust_accuracy,
        100.0 * gpu.robust_accuracy
    );
    assert!(
        diff <= allowed + 1e-9,
        "{name}: CPU {} vs CUDA {} robust accuracy",
        cpu.robust_accuracy,
        gpu.robust_accuracy
    );
    assert_eq!(cpu.precision, Precision::F32, "{name}: the CPU has no TF32");
    gpu
}

#[test]
fn gradient_attacks_agree_with_the_cpu() {
    attack(
        "fgsm",
        "mnist_cnn",
        TestSpec::new("cuda::fgsm_cnn", "fgsm", 0.1),
        1000,
    );
    attack(
        "pgd",
        "mnist_cnn",
        TestSpec::new("cuda::pgd_cnn", "pgd", 0.1)
            .steps(40)
            .random_start(true),
        1000,
    );
    attack(
        "pgd",
        "mnist_mlp",
        TestSpec::new("cuda::pgd_mlp", "pgd", 0.1)
            .steps(40)
            .random_start(true),
        1000,
    );
    attack(
        "pgd-l2",
        "mnist_cnn",
        TestSpec::new("cuda::pgd_l2_cnn", "pgd", 1.5)
            .norm("l2")
            .steps(20),
        500,
    );
    attack(
        "apgd-ce",
        "mnist_cnn",
        TestSpec::new("cuda::apgd_cnn", "apgd", 0.1),
        400,
    );
    attack(
        "apgd-t",
        "mnist_cnn",
        TestSpec::new("cuda::apgd_t_cnn", "apgd-t", 0.1)
            .target_classes(3)
            .steps(50),
        200,
    );
}

/// `precision = "tf32"`: inside the run cuBLAS is in TF32 mode and a product shows TF32's
/// rounding (so the switch reaches the GPU), after it strict f32 again; PGD in TF32 still agrees
/// with the CPU's f32 within 0.5 pp, and its report says TF32.
#[test]
fn tf32_attacks_agree_with_the_cpu_and_the_switch_is_scoped() {
    let gpu = device::cuda_device().unwrap();
    let mut rng = Rng::seed_from_u64(32);
    let a = Tensor::from_vec(
        rng.uniform_vec(512 * 512, -1.0, 1.0),
        (512, 512),
        &Device::Cpu,
    )
    .unwrap();
    let exact = a.matmul(&a).unwrap();
    let on_gpu = a.to_device(&gpu).unwrap();
    let error = |precision: Precision| -> f32 {
        device::with_precision(&gpu, precision, || {
            assert_eq!(device::cuda_precision(), precision);
            let product = on_gpu.matmul(&on_gpu)?.to_device(&Device::Cpu)?;
            Ok((product - &exact)?.abs()?.max_all()?.to_scalar::<f32>()?)
        })
        .unwrap()
    };
    let (strict, tf32) = (error(Precision::F32), error(Precision::Tf32));
    assert_eq!(
        device::cuda_precision(),
        Precision::F32,
        "the switch is left on"
    );
    println!("512×512 product, largest error against the CPU: f32 {strict:.2e}, TF32 {tf32:.2e}");
    assert!(strict < 1e-3, "strict f32 is off by {strict}");
    assert!(
        tf32 > 10.0 * strict,
        "TF32 ({tf32}) rounds no more than f32 ({strict})"
    );
    let report = attack(
        "pgd tf32",
        "mnist_cnn",
        TestSpec::new("cuda::pgd_cnn_tf32", "pgd", 0.1)
            .steps(40)
            .random_start(true)
            .precision("tf32"),
        1000,
    );
    assert_eq!(report.precision, Precision::Tf32);
    assert_eq!(device::cuda_precision(), Precision::F32);
}

#[test]
fn minimal_and_score_based_attacks_agree_with_the_cpu() {
    attack(
        "deepfool",
        "mnist_cnn",
        TestSpec::new("cuda::deepfool_cnn", "deepfool", 1.5).norm("l2"),
        1000,
    );
    attack(
        "cw",
        "mnist_cnn",
        TestSpec::new("cuda::cw_cnn", "cw", 1.5)
            .norm("l2")
            .binary_search_steps(5)
            .steps(50),
        100,
    );
    attack(
        "square",
        "mnist_cnn",
        TestSpec::new("cuda::square_cnn", "square", 0.1).queries(500),
        100,
    );
}

#[test]
fn bound_certificates_agree_with_the_cpu() {
    let n = 200;
    let digits = common::test_digits(n).unwrap();
    for method in [Method::Ibp, Method::Crown] {
        let (cpu, gpu) = both(
            method.label(),
            || {
                let net = zoo::layers::mnist_small_cnn().load(common::IBP, &Device::Cpu)?;
                bounds(&net, &digits, method)
            },
            || {
                let net =
                    zoo::layers::mnist_small_cnn().load(common::IBP, &device::cuda_device()?)?;
                bounds(&net, &digits, method)
            },
        );
        let worst = cpu
            .iter()
            .zip(&gpu)
            .map(|(a, b)| (a - b).abs() / a.abs().max(1.0))
            .fold(0.0f32, f32::max);
        // A digit is certified when all of its margins (one per class) are positive.
        let certified = |m: &[f32]| m.chunks(10).filter(|m| m.iter().all(|&v| v > 0.0)).count();
        println!(
            "  {}: {} of {n} certified on the CPU, {} on CUDA; largest bound difference {worst:e}",
            method.label(),
            certified(&cpu),
            certified(&gpu)
        );
        assert!(
            worst <= 1e-4,
            "{}: bounds differ by {worst}",
            method.label()
        );
    }
    // The whole certification path, as a test runs it.
    let spec = CertifySpec::new("cuda::crown", "crown", 0.1)
        .samples(n)
        .min_certified_acc(0.0);
    let (cpu, gpu) = both(
        "crown spec",
        || spec.clone().device("cpu").run(|| case("mnist_ibp", n)),
        || spec.clone().cuda_variant().run(|| case("mnist_ibp", n)),
    );
    assert_eq!(cpu.certified(), gpu.certified());
}

/// Every margin lower bound `lb(z_y − z_j)` of the first digits at ε = 0.1, flattened.
fn bounds(
    net: &robust_runtime::nn::Sequential,
    digits: &Dataset,
    method: Method,
) -> robust_runtime::Result<Vec<f32>> {
    let x = digits.inputs().to_device(&net.device())?;
    let (lower, upper) = certify::input_box(&x, 0.1, InputDomain::default())?;
    let m = certify::margin_lower_bounds(net, &lower, &upper, digits.labels(), method)?;
    Ok(m.flatten_all()?.to_vec1::<f32>()?)
}

#[test]
fn smoothing_agrees_with_the_cpu() {
    let n = 50;
    let spec = CertifySpec::new("cuda::smoothing", "smoothing", 0.5)
        .sigma(0.25)
        .n0(100)
        .n(2000)
        .samples(n)
        .min_certified_acc(0.0);
    let (cpu, gpu) = both(
        "smoothing",
        || spec.clone().device("cpu").run(|| case("mnist_noise", n)),
        || spec.clone().cuda_variant().run(|| case("mnist_noise", n)),
    );
    let differing = cpu
        .per_sample
        .iter()
        .zip(&gpu.per_sample)
        .filter(|(a, b)| a.prediction != b.prediction)
        .count();
    println!(
        "  smoothing on {n} digits: certified CPU {}, CUDA {}; {differing} predictions differ",
        cpu.certified(),
        gpu.certified()
    );
    assert!(differing <= 1);
    assert!(cpu.certified().abs_diff(gpu.certified()) <= 1);
    for (a, b) in cpu.per_sample.iter().zip(&gpu.per_sample) {
        if let (Some(ra), Some(rb)) = (a.radius, b.radius) {
            assert!(
                (ra - rb).abs() <= 0.05,
                "sample {}: radius {ra} vs {rb}",
                a.index
            );
        }
    }
}

#[test]
fn invariance_runs_agree_with_the_cpu() {
    let n = 100;
    for (name, spec) in [
        (
            "gaussian",
            InvarianceSpec::new("cuda::gaussian", "gaussian").sigma(0.3),
        ),
        (
            "rotation",
            InvarianceSpec::new("cuda::rotation", "rotation").max_degrees(20.0),
        ),
    ] {
        let spec = spec.cases(32).samples(n).min_invariance(0.0);
        let (cpu, gpu) = both(
            name,
            || spec.clone().device("cpu").run(|| case("mnist_cnn", n)),
            || spec.clone().cuda_variant().run(|| case("mnist_cnn", n)),
        );
        println!(
            "  {name} invariance on {n} digits: CPU {:.2} %, CUDA {:.2} %",
            100.0 * cpu.invariance,
            100.0 * gpu.invariance
        );
        assert!((cpu.invariance - gpu.invariance).abs() <= 1.0 / n as f64 + 1e-9);
    }
}

#[test]
fn training_agrees_with_the_cpu() {
    let data = Dataset::mnist_sample().unwrap();
    let (train, test) = (
        data.clone().train_split().take(1000).unwrap(),
        data.test_split(),
    );
    for regime in [
        Regime::Standard,
        Regime::Pgd {
            eps: 0.1,
            steps: 5,
            step_size: None,
        },
    ] {
        let run = |device: DeviceChoice| {
            let config = TrainConfig {
                epochs: 2,
                batch_size: 50,
                learning_rate: 1e-3,
                seed: 3,
                regime,
                device,
            };
            let mut losses = Vec::new();
            let (_, net) = defense::train(
                zoo::layers::mnist_mlp(),
                &train,
                InputDomain::default(),
                &config,
                |_, stats| {
                    losses.push(stats.loss);
                    Ok(())
                },
            )?;
            let dev = net.device();
            let acc = robust_runtime::eval::clean_accuracy(&Model::new(net.detach()), &test, &dev)?;
            Ok((losses, acc, device::name(&dev)))
        };
        let ((cpu_loss, cpu_acc, _), (gpu_loss, gpu_acc, gpu_dev)) = both(
            &format!("training {regime:?}"),
            || run(DeviceChoice::Cpu),
            || run(DeviceChoice::Cuda),
        );
        println!(
            "  {regime:?}: losses CPU {cpu_loss:?}, CUDA {gpu_loss:?} ({gpu_dev}); test accuracy \
             CPU {:.2} %, CUDA {:.2} %",
            100.0 * cpu_acc,
            100.0 * gpu_acc
        );
        assert_eq!(gpu_dev, "cuda:0");
        for (a, b) in cpu_loss.iter().zip(&gpu_loss) {
            assert!(
                (a - b).abs() <= 0.02 * a.abs().max(0.1),
                "losses {a} vs {b}"
            );
        }
        assert!((cpu_acc - gpu_acc).abs() <= 0.01, "{cpu_acc} vs {gpu_acc}");
    }
}

#[test]
fn adaptive_evaluation_of_a_preprocessing_defence_runs_on_cuda() {
    use robust_runtime::defense::{Preprocessed, Preprocessor};
    let n = 100;
    let build = |n| -> robust_runtime::Result<RobustnessCase> {
        let dev = device::current();
        let cnn = zoo::MnistCnn::load(common::CNN, &dev)?;
        let defended = Preprocessed::new(
            vec![Preprocessor::MedianFilter { kernel: 3 }],
            Model::new(cnn),
        )?;
        Ok(RobustnessCase::from_model(
            Model::from(defended),
            common::test_digits(n)?,
        ))
    };
    let spec = TestSpec::new("cuda::median", "pgd", 0.1)
        .steps(20)
        .samples(n)
        .min_acc(0.0)
        .masking_checks("off");
    let (cpu, gpu) = both(
        "median filter + BPDA",
        || spec.clone().device("cpu").run(|| build(n)),
        || spec.clone().cuda_variant().run(|| build(n)),
    );
    let (a, b) = (cpu.adaptive.unwrap(), gpu.adaptive.unwrap());
    println!(
        "  median filter, PGD-20: plain CPU {:.0} % / CUDA {:.0} %, BPDA CPU {:.0} % / CUDA {:.0} %",
        100.0 * a.plain_robust_accuracy,
        100.0 * b.plain_robust_accuracy,
        100.0 * a.adaptive_robust_accuracy,
        100.0 * b.adaptive_robust_accuracy
    );
    assert!((a.adaptive_robust_accuracy - b.adaptive_robust_accuracy).abs() <= 0.01 + 1e-9);
}

#[test]
fn a_model_left_on_the_cpu_is_a_typed_error_naming_the_fix() {
    let spec = TestSpec::new("cuda::wrong_device", "fgsm", 0.1)
        .samples(10)
        .min_acc(0.0);
    let e = spec
        .cuda_variant()
        .run(|| {
            let cnn = zoo::MnistCnn::load(common::CNN, &Device::Cpu)?;
            Ok(RobustnessCase::new(cnn, common::test_digits(10)?))
        })
        .unwrap_err();
    assert!(
        matches!(e, robust_runtime::Error::ModelDevice { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("device::current()"), "{e}");
}
