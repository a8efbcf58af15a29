//! Complete verification ([`robust_runtime::verify`]): its verdicts against exhaustive search on
//! small random networks, its α-CROWN bounds against sampled outputs and CROWN's, its verdicts
//! on VNN-COMP 2021 `mnistfc` properties against the published ones, and bad input.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use robust_runtime::certify::{self, Method};
use robust_runtime::nn::{Graph, Sequential};
use robust_runtime::prelude::*;
use robust_runtime::verify::{self, Options, Verdict};
use robust_runtime::vnnlib::Property;
use robust_runtime::Error;

/// A random `2 → 8 → 8 → 3` ReLU network (two hidden layers of 8 ReLUs).
fn small_net(rng: &mut Rng) -> robust_runtime::Result<Sequential> {
    let dev = Device::Cpu;
    let mut tensors = HashMap::new();
    for (name, shape, scale) in [
        ("0.weight", vec![8, 2], 1.0),
        ("0.bias", vec![8], 0.5),
        ("2.weight", vec![8, 8], 0.5),
        ("2.bias", vec![8], 0.3),
        ("4.weight", vec![3, 8], 0.5),
        ("4.bias", vec![3], 0.3),
    ] {
        let n = shape.iter().product();
        let values: Vec<f32> = rng.normal_vec(n).iter().map(|v| v * scale).collect();
        tensors.insert(name.to_string(), Tensor::from_vec(values, shape, &dev)?);
    }
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
    Sequential::builder(&[2])
        .linear(8)
        .relu()
        .linear(8)
        .relu()
        .linear(3)
        .build(vb)
}

/// The logits of `points` (each 2 values) on `model`.
fn logits(model: &Model, points: &[[f32; 2]]) -> Vec<Vec<f32>> {
    let flat: Vec<f32> = points.iter().flatten().copied().collect();
    let x = Tensor::from_vec(flat, (points.len(), 2), &Device::Cpu).unwrap();
    model.checked_logits(&x).unwrap()
}

/// Exhaustive search on a `GRID × GRID` grid of the box (edges included): per disjunct `j` of
/// "class `j` reaches the label's logit", the smallest `z_label − z_j` seen.
fn grid_margins(model: &Model, p: &Property, label: usize) -> Vec<f64> {
    const GRID: usize = 301;
    let at =
        |k: usize, d: usize| p.lower[d] + (p.upper[d] - p.lower[d]) * k as f64 / (GRID - 1) as f64;
    let points: Vec<[f32; 2]> = (0..GRID * GRID)
        .map(|i| [at(i / GRID, 0) as f32, at(i % GRID, 1) as f32])
        .collect();
    let mut best = vec![f64::INFINITY; 3];
    for z in logits(model, &points) {
        for j in 0..3 {
            best[j] = best[j].min(f64::from(z[label] - z[j]));
        }
    }
    best.remove(label);
    best
}

/// Verdicts on 100 random networks and boxes against a 301 × 301 grid: a proof is never given
/// where some grid point violates the property, a counterexample always violates it on the
/// model, each verdict is the grid's wherever the grid's margin is clear of 0, with and without
/// the PGD stage (branch and bound alone must find the counterexamples then); α-CROWN's bound
/// of every disjunct lies below the grid's smallest margin and at or above CROWN's.
#[test]
fn decide_small_random_networks_as_exhaustive_search_does() -> robust_runtime::Result<()> {
    let mut rng = Rng::seed_from_u64(7);
    let (mut proved, mut falsified, mut branched) = (0, 0, 0);
    // Counterexamples branch and bound found without PGD, without and with refined bounds.
    let mut falsified_by_bab = [0, 0];
    for case in 0..100 {
        let net = small_net(&mut rng)?;
        let model = Model::new(net);
        let centre = [rng.uniform(-1.0, 1.0) as f32, rng.uniform(-1.0, 1.0) as f32];
        let radius = [0.05, 0.2, 0.5, 1.0, 2.0][case % 5];
        let z = &logits(&model, &[centre])[0];
        let label = (0..3).max_by(|&a, &b| z[a].total_cmp(&z[b])).unwrap();
        let centre64: Vec<f64> = centre.iter().map(|&v| f64::from(v)).collect();
        let p = Property::misclassified(&centre64, radius, (-10.0, 10.0), label, 3)?;
        let grid = grid_margins(&model, &p, label);
        let grid_min = grid.iter().copied().fold(f64::INFINITY, f64::min);
        // Branch and bound on its own, with each branch's layer bounds inherited or refined.
        for (attack, refine) in [(true, false), (false, false), (false, true)] {
            let options = Options {
                timeout: Duration::from_secs(60),
                restarts: if attack { 10 } else { 0 },
                refine,
                seed: case as u64,
                ..Options::default()
            };
            let out = verify::verify(&model, &p, &options)?;
            let what = format!(
                "case {case} (radius {radius}, attack {attack}, refine {refine}): grid margins {grid:?}, {:?} by {}",
                out.verdict, out.stage
            );
            match &out.verdict {
                Verdict::Verified => {
                    assert!(grid_min >= 0.0, "proved a false property: {what}");
                    proved += usize::from(attack);
                    branched += usize::from(attack && out.branches > 0);
                }
                Verdict::Falsified(x) => {
                    assert!(p.contains(x), "{what}: counterexample out of the box");
                    let y: Vec<f64> = logits(&model, &[[x[0] as f32, x[1] as f32]])[0]
                        .iter()
                        .map(|&v| f64::from(v))
                        .collect();
                    assert!(p.violated(&y), "{what}: counterexample {x:?} gives {y:?}");
                    falsified += usize::from(attack);
                    falsified_by_bab[usize::from(refine)] +=
                        usize::from(!attack && out.stage == "bab");
                }
                Verdict::Unknown => panic!("{what}: undecided in 60 s"),
            }
            // Where the grid is clear, the verdict is its verdict.
            if grid_min > 1e-3 {
                assert_eq!(out.verdict, Verdict::Verified, "{what}");
            }
            if grid_min < 0.0 {
                assert!(matches!(out.verdict, Verdict::Falsified(_)), "{what}");
            }
            // α-CROWN's bounds enclose the grid, and are no looser than CROWN's.
            if !out.root_bounds.is_empty() {
                for (b, g) in out.root_bounds.iter().zip(&grid) {
                    assert!(
                        *b <= g + 1e-5,
                        "{what}: α-CROWN bound {b} above the grid's {g}"
                    );
                }
                let lo: Vec<f32> = p.lower.iter().map(|&v| v as f32).collect();
                let hi: Vec<f32> = p.upper.iter().map(|&v| v as f32).collect();
                let lo = Tensor::from_vec(lo, (1, 2), &Device::Cpu)?;
                let hi = Tensor::from_vec(hi, (1, 2), &Device::Cpu)?;
                let crown = certify::model_margin_lower_bounds(
                    &model,
                    &lo,
                    &hi,
                    &[label as u32],
                    Method::Crown,
                )?;
                let crown: Vec<f32> = crown.flatten_all()?.to_vec1()?;
                let others: Vec<f32> = (0..3).filter(|&j| j != label).map(|j| crown[j]).collect();
                let ibp = certify::model_margin_lower_bounds(
                    &model,
                    &lo,
                    &hi,
                    &[label as u32],
                    Method::Ibp,
                )?;
                let ibp: Vec<f32> = ibp.flatten_all()?.to_vec1()?;
                let what = format!("{what} ibp {ibp:?} crown {crown:?} label {label}");
                for (b, c) in out.root_bounds.iter().zip(&others) {
                    assert!(
                        *b >= f64::from(*c) - 1e-4,
                        "{what}: α-CROWN {b} below CROWN {c}"
                    );
                }
            }
        }
    }
    eprintln!("proved {proved} ({branched} by branch and bound), falsified {falsified} ({falsified_by_bab:?} by branch and bound without PGD, without and with refine)");
    // Not a vacuous run: both verdicts, proofs that needed branching, counterexamples that only
    // branch and bound found.
    assert!(
        proved >= 8 && falsified >= 8,
        "proved {proved}, falsified {falsified}"
    );
    assert!(
        branched >= 5,
        "only {branched} proofs needed branch and bound"
    );
    assert!(
        falsified_by_bab.iter().all(|&f| f >= 10),
        "branch and bound alone falsified {falsified_by_bab:?}"
    );
    Ok(())
}

fn fixture(file: &str) -> String {
    format!(
        "{}/tests/fixtures/vnncomp2021-mnistfc/{file}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Three `mnistfc` instances on the 256×2 network, decided as every tool that decided them did
/// in VNN-COMP 2021 (`published_results.csv`): two proofs, one of them needing branch and bound
/// (CROWN alone leaves it unknown), and a counterexample checked on the model.
#[test]
fn decide_mnistfc_instances_as_published() -> robust_runtime::Result<()> {
    let model = Model::new(Graph::from_onnx(
        fixture("mnist-net_256x2.onnx"),
        &Device::Cpu,
    )?);
    let published = std::fs::read_to_string(fixture("published_results.csv")).expect("the results");
    for (prop, want) in [
        ("prop_0_0.03", "unsat"),
        ("prop_1_0.03", "unsat"),
        ("prop_0_0.05", "sat"),
    ] {
        let row = (published.lines())
            .find(|l| l.starts_with(&format!("mnist-net_256x2,{prop},")))
            .expect("a published row");
        assert_eq!(row.split(',').nth(2), Some(want), "{row}");
        let p = Property::from_file(fixture(&format!("{prop}.vnnlib")))?;
        let options = Options {
            timeout: Duration::from_secs(120),
            ..Options::default()
        };
        let out = verify::verify(&model, &p, &options)?;
        assert_eq!(out.verdict.vnncomp(), want, "{prop}: {out:?}");
        if want == "unsat" {
            // α-CROWN on the root's own layer bounds leaves a disjunct open: the proof is
            // branch and bound's.
            assert_eq!(out.stage, "bab", "{prop}");
            assert!(out.branches > 0, "{prop}");
            let alone = Options {
                max_branches: Some(0),
                ..options.clone()
            };
            let out = verify::verify(&model, &p, &alone)?;
            assert_eq!(out.verdict, Verdict::Unknown, "{prop}: {out:?}");
            assert!(
                out.root_bounds.iter().any(|&b| b <= 0.0),
                "{prop}: {:?}",
                out.root_bounds
            );
        }
        if let Verdict::Falsified(x) = &out.verdict {
            let y = verify::outputs(&model, x)?;
            assert!(p.contains(x) && p.violated(&y), "{prop}: {y:?}");
        }
    }
    Ok(())
}

/// On the IBP-trained CNN (convolutions lowered to dense layers): α-CROWN's margins enclose
/// sampled points' margins and are no looser than CROWN's; the certifiers `alpha-crown` and
/// `bab` certify at least what CROWN does.
#[test]
fn bound_the_ibp_cnn_no_looser_than_crown() -> robust_runtime::Result<()> {
    let data = common::test_digits(6)?;
    let case = RobustnessCase::new(common::ibp_net()?, data).named("mnist_ibp");
    let eps = 0.1;
    let crown = certify::bound_case(&case, Method::Crown, eps, 10)?;
    let alpha = certify::verify_case(
        &case,
        eps,
        &Options {
            max_branches: Some(0),
            restarts: 0,
            alpha_iterations: 20,
            ..Options::default()
        },
    )?;
    let bab = certify::verify_case(
        &case,
        eps,
        &Options {
            timeout: Duration::from_secs(5),
            alpha_iterations: 20,
            ..Options::default()
        },
    )?;
    let mut rng = Rng::seed_from_u64(3);
    for ((c, a), b) in crown
        .per_sample
        .iter()
        .zip(&alpha.per_sample)
        .zip(&bab.per_sample)
    {
        assert!(
            !c.certified || a.certified,
            "sample {}: CROWN certifies, α-CROWN not",
            c.index
        );
        assert!(
            !a.certified || b.certified,
            "sample {}: α-CROWN certifies, BaB not",
            c.index
        );
        let (Some(cm), Some(am)) = (c.margin, a.margin) else {
            continue;
        };
        assert!(
            am >= cm - 1e-3,
            "sample {}: α-CROWN margin {am} below CROWN's {cm}",
            c.index
        );
        // Sampled points of the ball never have a smaller margin than the bound.
        let x = case.data().inputs().get(c.index)?.unsqueeze(0)?;
        let noise: Vec<f32> = (0..784).map(|_| rng.uniform(-eps, eps) as f32).collect();
        let noise = Tensor::from_vec(noise, (1, 1, 28, 28), &Device::Cpu)?;
        let xs = (x + noise)?.clamp(0f32, 1f32)?;
        let z = case.model().checked_logits(&xs)?;
        let y = c.label as usize;
        let margin = (0..10)
            .filter(|&j| j != y)
            .map(|j| z[0][y] - z[0][j])
            .fold(f32::INFINITY, f32::min);
        assert!(
            am <= margin + 1e-4,
            "sample {}: bound {am} above a sampled margin {margin}",
            c.index
        );
    }
    assert!(alpha.certified_accuracy >= crown.certified_accuracy);
    assert!(bab.certified_accuracy >= alpha.certified_accuracy);
    Ok(())
}

/// Bad input: a max-pooling network is not verifiable (typed, saying why), and a property with
/// the wrong number of inputs is a parameter error naming both sizes.
#[test]
fn refuse_what_verification_cannot_take() -> robust_runtime::Result<()> {
    let p = Property::misclassified(&[0.5; 784], 0.01, (0.0, 1.0), 3, 10)?;
    let cnn = common::cnn()?;
    match verify::verify(&cnn, &p, &Options::default()) {
        Err(Error::NotCertifiable { reason, .. }) => {
            assert!(reason.contains("max-pool"), "{reason}")
        }
        other => panic!("expected NotCertifiable, got {other:?}"),
    }
    let mlp = common::mlp()?;
    let short = Property::misclassified(&[0.5; 10], 0.01, (0.0, 1.0), 3, 10)?;
    match verify::verify(&mlp, &short, &Options::default()) {
        Err(e @ Error::InvalidParameter { .. }) => assert!(e.to_string().contains("784"), "{e}"),
        other => panic!("expected a parameter error, got {other:?}"),
    }
    assert!(Property::misclassified(&[0.5], -1.0, (0.0, 1.0), 0, 2).is_err());
    assert!(Property::misclassified(&[0.5], 0.1, (0.0, 1.0), 2, 2).is_err());
    Ok(())
}

/// The attribute's way in: `certify = ["alpha-crown", "bab"]` on the shipped MLP, `bab` with
/// its per-sample `timeout` (two tests: `alpha_crown_eps_0_03` and `bab_eps_0_03`).
#[robustness_test(
    certify = ["alpha-crown", "bab"],
    eps = 0.03,
    min_certified_acc = 0.7,
    samples = 10,
    timeout = 1.0
)]
fn mnist_mlp_verified() -> robust_runtime::Result<RobustnessCase> {
    Ok(RobustnessCase::from_model(
        common::mlp()?,
        common::test_digits(10)?,
    ))
}
