//! IBP and CROWN bounds against auto_LiRPA's on the committed models:
//! `tests/reference/bounds_lirpa.json`, produced by `tests/reference/bounds_lirpa.py` (auto_LiRPA
//! 0.7.1 from source; semantics in `tests/reference/LIRPA.md`). Every logit bound and margin
//! lower bound must agree to `1e-4·max(1, |bound|)`, and so must the certified flags.

mod common;

use candle_core::Tensor;
use robust_runtime::certify::crown::{self, Intermediate};
use robust_runtime::certify::{self, ibp};
use robust_runtime::nn::Sequential;
use robust_runtime::prelude::*;
use serde_json::Value;

fn reference() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/reference/bounds_lirpa.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("reference file")).expect("JSON")
}

fn matrix(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .expect("rows")
        .iter()
        .map(|row| {
            row.as_array()
                .expect("row")
                .iter()
                .map(|x| x.as_f64().expect("number"))
                .collect()
        })
        .collect()
}

fn net(model: &str) -> robust_runtime::Result<Sequential> {
    match model {
        "mnist_mlp" => common::mlp_net(),
        "mnist_cnn" => common::cnn_net(),
        "mnist_ibp" => common::ibp_net(),
        other => panic!("unknown model {other} in the reference"),
    }
}

/// Asserts `ours` (`N × k`) equals `theirs` (`n ≤ N` rows) to `tol·max(1, |theirs|)`; returns
/// the largest relative difference.
fn assert_agree(
    ours: &Tensor,
    theirs: &[Vec<f64>],
    tol: f64,
    what: &str,
) -> robust_runtime::Result<f64> {
    let ours = ours.to_vec2::<f32>()?;
    let mut worst = 0f64;
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert_eq!(
            a.len(),
            b.len(),
            "{what}: sample {i} has {} bounds, the reference {}",
            a.len(),
            b.len()
        );
        for (k, (&a, &b)) in a.iter().zip(b).enumerate() {
            let rel = (a as f64 - b).abs() / b.abs().max(1.0);
            assert!(
                rel <= tol,
                "{what}: sample {i}, entry {k}: ours {a}, auto_LiRPA {b}"
            );
            worst = worst.max(rel);
        }
    }
    Ok(worst)
}

/// Our margin bounds (`+∞` at the label) as auto_LiRPA lists them: the 9 others, in order.
fn drop_label(margins: &Tensor, labels: &[u32]) -> robust_runtime::Result<Tensor> {
    let rows = margins.to_vec2::<f32>()?;
    let kept: Vec<f32> = rows
        .iter()
        .zip(labels)
        .flat_map(|(row, &y)| {
            row.iter()
                .enumerate()
                .filter(move |(j, _)| *j != y as usize)
                .map(|(_, v)| *v)
        })
        .collect();
    Ok(Tensor::from_vec(
        kept,
        (rows.len(), rows[0].len() - 1),
        &Device::Cpu,
    )?)
}

/// How many samples of each variant to check, and to what relative tolerance.
struct Limits {
    ibp: usize,
    full: usize,
    default: usize,
    /// Tolerance for `auto_lirpa_default` against our `UnstableOnly`.
    default_tol: f64,
}

const ALL: Limits = Limits {
    ibp: usize::MAX,
    full: usize::MAX,
    default: usize::MAX,
    default_tol: 1e-4,
};

/// Runs every case of `model` in the reference on its first samples.
fn check_model(model: &str, limits: Limits) -> robust_runtime::Result<()> {
    let r = reference();
    let cases: Vec<&Value> = r["cases"]
        .as_array()
        .expect("cases")
        .iter()
        // float32 cases: the precision we compute in (a float64 run, if present, is the
        // reference's own check of its float32 noise).
        .filter(|c| c["model"] == model && c["dtype"].as_str().unwrap_or("float32") == "float32")
        .collect();
    assert!(
        cases.len() >= 4,
        "{model}: only {} cases in the reference",
        cases.len()
    );
    let net = net(model)?;
    for case in cases {
        let eps = case["eps"].as_f64().expect("eps");
        let variant = case["variant"].as_str().expect("variant");
        let (limit, tol) = match variant {
            "ibp" => (limits.ibp, 1e-4),
            "full" => (limits.full, 1e-4),
            _ => (limits.default, limits.default_tol),
        };
        let n = (case["samples"].as_u64().expect("samples") as usize).min(limit);
        if n == 0 {
            continue;
        }
        let started = std::time::Instant::now();
        let data = common::test_digits(n)?;
        let (l, u) = certify::input_box(data.inputs(), eps, InputDomain::default())?;
        let labels = data.labels();
        let ((lb, ub), margins) = match variant {
            "ibp" => (
                ibp::output_bounds(&net, &l, &u)?,
                ibp::margin_lower_bounds(&net, &l, &u, labels)?,
            ),
            "full" | "auto_lirpa_default" => {
                let intermediate = if variant == "full" {
                    Intermediate::Full
                } else {
                    Intermediate::UnstableOnly
                };
                (
                    crown::output_bounds_with(&net, &l, &u, intermediate)?,
                    crown::margin_lower_bounds_with(&net, &l, &u, labels, intermediate)?,
                )
            }
            other => panic!("unknown variant {other}"),
        };
        let what = format!("{model} {variant} ε = {eps}");
        let mut worst = assert_agree(
            &lb,
            &matrix(&case["logit_lb"]),
            tol,
            &format!("{what} logit lower"),
        )?;
        worst = worst.max(assert_agree(
            &ub,
            &matrix(&case["logit_ub"]),
            tol,
            &format!("{what} logit upper"),
        )?);
        let ours = drop_label(&margins, labels)?;
        worst = worst.max(assert_agree(
            &ours,
            &matrix(&case["margin_lb"]),
            tol,
            &format!("{what} margins"),
        )?);
        // Certified: correct and every margin bound positive.
        let predictions = Model::new(net.clone()).predict(data.inputs())?;
        let min_margins = margins.min(1)?.to_vec1::<f32>()?;
        for (i, flag) in case["certified"]
            .as_array()
            .expect("certified")
            .iter()
            .take(n)
            .enumerate()
        {
            let ours = predictions[i] == labels[i] && min_margins[i] > 0.0;
            assert_eq!(
                ours,
                flag.as_bool().expect("bool"),
                "{what}: certified flag of sample {i}"
            );
        }
        println!(
            "{what}: {n} samples agree, largest relative difference {worst:.1e} ({:.1} s)",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

#[test]
fn mlp_bounds_equal_auto_lirpa() -> robust_runtime::Result<()> {
    check_model("mnist_mlp", ALL)
}

/// Textbook CROWN on 20 of the 50 samples (it takes about a second per sample here).
#[test]
fn ibp_trained_cnn_bounds_equal_auto_lirpa() -> robust_runtime::Result<()> {
    check_model("mnist_ibp", Limits { full: 20, ..ALL })
}

/// The large CNN, max-pooling relaxation included. Textbook CROWN over all of its 12,544
/// second-layer neurons costs about a minute per sample here, so CI checks IBP and our default
/// CROWN; the ignored test below checks textbook CROWN on all 50 samples. auto_LiRPA's default sparse bounds choose which neurons get CROWN
/// differently from ours on convolutions, and the bound values of stable neurons enter the
/// max-pool relaxation: there the two agree to 1e-3 relative, not 1e-4 (LIRPA.md, section 4).
#[test]
fn cnn_bounds_equal_auto_lirpa() -> robust_runtime::Result<()> {
    check_model(
        "mnist_cnn",
        Limits {
            ibp: usize::MAX,
            full: 0,
            default: 1,
            default_tol: 1e-3,
        },
    )
}

#[test]
#[ignore = "about an hour on 2 cores: textbook CROWN on every CNN sample of the reference"]
fn cnn_bounds_equal_auto_lirpa_on_every_sample() -> robust_runtime::Result<()> {
    check_model(
        "mnist_cnn",
        Limits {
            default_tol: 1e-3,
            ..ALL
        },
    )
}
