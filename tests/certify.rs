//! Certification: the bounds are sound (sampled outputs never leave them), CROWN is never looser
//! than IBP, certified samples survive PGD, and bad input is a typed error.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;
use robust_runtime::certify::{self, crown, ibp, Method};
use robust_runtime::nn::Sequential;
use robust_runtime::prelude::*;
use robust_runtime::Error;

/// A random network with every layer kind CROWN handles: conv (strided and not), ReLU,
/// average pooling, batch norm, flatten, linear.
fn random_net(rng: &mut Rng) -> robust_runtime::Result<Sequential> {
    let dev = Device::Cpu;
    let mut tensors = HashMap::new();
    let mut put = |name: &str, shape: &[usize], scale: f64, rng: &mut Rng| {
        let n = shape.iter().product();
        let values: Vec<f32> = rng.normal_vec(n).iter().map(|v| v * scale as f32).collect();
        tensors.insert(
            name.to_string(),
            Tensor::from_vec(values, shape, &dev).unwrap(),
        );
    };
    put("0.weight", &[4, 2, 3, 3], 0.5, rng);
    put("0.bias", &[4], 0.1, rng);
    put("3.weight", &[4], 0.5, rng);
    put("3.bias", &[4], 0.1, rng);
    put("3.running_mean", &[4], 0.1, rng);
    put("3.running_var", &[4], 0.2, rng);
    put("4.weight", &[6, 4, 3, 3], 0.4, rng);
    put("4.bias", &[6], 0.1, rng);
    put("7.weight", &[12, 24], 0.4, rng);
    put("7.bias", &[12], 0.1, rng);
    put("9.weight", &[5, 12], 0.4, rng);
    put("9.bias", &[5], 0.1, rng);
    // Variances must be positive.
    let var = tensors["3.running_var"].abs()?.affine(1.0, 0.5)?;
    tensors.insert("3.running_var".into(), var);
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
    Sequential::builder(&[2, 8, 8])
        .conv2d(4, 3, 1, 1)
        .relu()
        .avg_pool2d(2)
        .batch_norm()
        .conv2d(6, 3, 2, 1)
        .relu()
        .flatten()
        .linear(12)
        .relu()
        .linear(5)
        .build(vb)
}

/// `count` points of the box `[lower, upper]` (one sample, batch dimension 1): its corners with
/// random signs, and uniform points inside.
fn points_in_box(lower: &Tensor, upper: &Tensor, count: usize, rng: &mut Rng) -> Tensor {
    let l = lower.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let u = upper.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut values = Vec::with_capacity(count * l.len());
    for k in 0..count {
        for (lo, hi) in l.iter().zip(&u) {
            let t = if k % 2 == 0 {
                (rng.below(2)) as f32
            } else {
                rng.unit_f64() as f32
            };
            values.push(lo + t * (hi - lo));
        }
    }
    let mut shape = vec![count];
    shape.extend(&lower.dims()[1..]);
    Tensor::from_vec(values, shape, lower.device()).unwrap()
}

/// Asserts that the outputs and margins of `count` sampled points of each sample's box lie
/// within the bounds of both certifiers. Returns the number of points checked.
fn assert_sound(
    net: &Sequential,
    x: &Tensor,
    labels: &[u32],
    eps: f64,
    count: usize,
    rng: &mut Rng,
) -> robust_runtime::Result<usize> {
    let (lower, upper) = certify::input_box(x, eps, InputDomain::default())?;
    let tol = 1e-5;
    let bounds = [
        ("IBP", ibp::output_bounds(net, &lower, &upper)?),
        ("CROWN", crown::output_bounds(net, &lower, &upper)?),
    ];
    let margins = [
        (
            "IBP",
            ibp::margin_lower_bounds(net, &lower, &upper, labels)?,
        ),
        (
            "CROWN",
            crown::margin_lower_bounds(net, &lower, &upper, labels)?,
        ),
    ];
    let mut checked = 0;
    for i in 0..x.dim(0)? {
        let (l, u) = (lower.narrow(0, i, 1)?, upper.narrow(0, i, 1)?);
        let points = points_in_box(&l, &u, count, rng);
        let y = net.forward(&points)?.to_vec2::<f32>()?;
        for (name, (bl, bu)) in &bounds {
            let (bl, bu) = (bl.get(i)?.to_vec1::<f32>()?, bu.get(i)?.to_vec1::<f32>()?);
            for row in &y {
                for (c, v) in row.iter().enumerate() {
                    let slack = tol * (1.0 + v.abs());
                    assert!(
                        bl[c] - slack <= *v && *v <= bu[c] + slack,
                        "{name}: output {c} = {v} outside [{}, {}] (sample {i}, ε = {eps})",
                        bl[c],
                        bu[c]
                    );
                }
            }
        }
        let y_label = labels[i] as usize;
        for (name, m) in &margins {
            let m = m.get(i)?.to_vec1::<f32>()?;
            for row in &y {
                for (j, lb) in m.iter().enumerate().filter(|(j, _)| *j != y_label) {
                    let margin = row[y_label] - row[j];
                    let slack = tol * (1.0 + margin.abs());
                    assert!(
                        *lb - slack <= margin,
                        "{name}: margin z_{y_label} − z_{j} = {margin} below its lower bound {lb} (sample {i}, ε = {eps})"
                    );
                }
            }
        }
        checked += count;
    }
    Ok(checked)
}

#[test]
fn bounds_enclose_sampled_outputs_of_random_networks() -> robust_runtime::Result<()> {
    let mut rng = Rng::seed_from_u64(7);
    for trial in 0..8 {
        let net = random_net(&mut rng)?;
        let values = rng.uniform_vec(4 * 2 * 8 * 8, 0.0, 1.0);
        let x = Tensor::from_vec(values, (4, 2, 8, 8), &Device::Cpu)?;
        let labels: Vec<u32> = (0..4).map(|_| rng.below(5) as u32).collect();
        let eps = [0.01, 0.05, 0.1, 0.3][trial % 4];
        assert_sound(&net, &x, &labels, eps, 200, &mut rng)?;
    }
    Ok(())
}

#[test]
fn bounds_enclose_sampled_outputs_of_the_mnist_mlp() -> robust_runtime::Result<()> {
    let net = common::mlp_net()?;
    let data = common::test_digits(8)?;
    let mut rng = Rng::seed_from_u64(1);
    for eps in [0.005, 0.02] {
        assert_sound(&net, data.inputs(), data.labels(), eps, 300, &mut rng)?;
    }
    Ok(())
}

#[test]
fn the_sequential_mlp_and_cnn_compute_what_the_zoo_models_compute() -> robust_runtime::Result<()> {
    let x = common::test_digits(16)?.inputs().clone();
    let pairs: [(Tensor, Tensor); 2] = [
        (common::mlp_net()?.forward(&x)?, common::mlp()?.logits(&x)?),
        (common::cnn_net()?.forward(&x)?, common::cnn()?.logits(&x)?),
    ];
    for (a, b) in pairs {
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-4, "logits differ by {diff}");
    }
    Ok(())
}

#[test]
fn crown_is_tighter_than_ibp_on_the_mlp_and_never_looser_as_a_certificate(
) -> robust_runtime::Result<()> {
    let net = common::mlp_net()?;
    let data = common::test_digits(50)?;
    for eps in [0.005, 0.02] {
        let (l, u) = certify::input_box(data.inputs(), eps, InputDomain::default())?;
        let ibp = ibp::margin_lower_bounds(&net, &l, &u, data.labels())?;
        let raw = crown::margin_lower_bounds(&net, &l, &u, data.labels())?;
        let cert = certify::margin_lower_bounds(&net, &l, &u, data.labels(), Method::Crown)?;
        // A correct CROWN is far tighter than IBP on a normally trained MLP: most margins gain.
        let gain = (&raw - &ibp)?.flatten_all()?.to_vec1::<f32>()?;
        let finite: Vec<f32> = gain.into_iter().filter(|g| g.is_finite()).collect();
        let tighter = finite.iter().filter(|g| **g > 0.0).count();
        assert!(
            tighter as f64 >= 0.99 * finite.len() as f64,
            "ε = {eps}: CROWN tighter on only {tighter} of {} margins",
            finite.len()
        );
        let worst = (&cert - &ibp)?.flatten_all()?.to_vec1::<f32>()?;
        assert!(worst.iter().all(|g| g.is_nan() || *g >= 0.0));
    }
    Ok(())
}

#[test]
fn no_sample_certified_at_eps_is_broken_by_pgd_at_eps() -> robust_runtime::Result<()> {
    let data = common::test_digits(200)?;
    let model = Model::new(common::mlp_net()?).named("mnist_mlp");
    let eps = 0.02;
    let case = RobustnessCase::from_model(model, data.clone());
    let report = certify::bound_case(&case, Method::Crown, eps, 100)?;
    let certified: Vec<usize> = report
        .per_sample
        .iter()
        .filter(|s| s.certified)
        .map(|s| s.index)
        .collect();
    assert!(certified.len() >= 40, "only {} certified", certified.len());
    common::assert_pgd_breaks_none(case.model(), &data, &certified, eps)?;
    Ok(())
}

#[test]
fn crown_names_the_layer_it_cannot_bound() -> robust_runtime::Result<()> {
    let net = Sequential::builder(&[1, 28, 28])
        .relu()
        .max_pool2d_with_stride(3, 2)
        .flatten()
        .build(VarBuilder::zeros(DType::F32, &Device::Cpu))?;
    let x = common::test_digits(2)?.inputs().clone();
    let (l, u) = certify::input_box(&x, 0.01, InputDomain::default())?;
    let err = crown::output_bounds(&net, &l, &u).unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnsupportedLayer {
                index: 1,
                layer: "MaxPool2d",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("MaxPool2d"), "{err}");
    // IBP bounds it.
    ibp::output_bounds(&net, &l, &u)?;
    Ok(())
}

#[test]
fn bad_radii_and_opaque_models_are_typed_errors() -> robust_runtime::Result<()> {
    let data = common::test_digits(4)?;
    let case = RobustnessCase::from_model(Model::new(common::mlp_net()?), data.clone());
    for eps in [0.0, -0.1, f64::NAN, f64::INFINITY] {
        let err = certify::bound_case(&case, Method::Ibp, eps, 10).unwrap_err();
        assert!(
            matches!(err, Error::InvalidParameter { name: "eps", .. }),
            "{err}"
        );
    }
    let opaque = RobustnessCase::from_model(common::mlp()?, data);
    let err = certify::bound_case(&opaque, Method::Ibp, 0.1, 10).unwrap_err();
    assert!(matches!(err, Error::NotCertifiable { .. }), "{err}");
    assert!(err.to_string().contains("Sequential"), "{err}");
    Ok(())
}
