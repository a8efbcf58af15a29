//! VNN-LIB properties of VNN-COMP 2021's `mnistfc` benchmark (`tests/fixtures/vnncomp2021-mnistfc`,
//! see its PROVENANCE.md), read with `vnnlib::Property`, on the benchmark's own ONNX network.

use candle_core::Tensor;
use robust_runtime::nn::Graph;
use robust_runtime::prelude::*;
use robust_runtime::vnnlib::Property;

fn fixture(file: &str) -> String {
    format!(
        "{}/tests/fixtures/vnncomp2021-mnistfc/{file}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// The label a property file names in its first comment (`; Mnist property with label: 8.`).
fn label(file: &str) -> usize {
    let text = std::fs::read_to_string(fixture(file)).expect("a fixture");
    let line = text.lines().next().expect("a first line");
    let digits: String = line.chars().filter(char::is_ascii_digit).collect();
    digits.parse().expect("a label")
}

#[test]
fn read_the_benchmarks_properties_on_its_network() -> robust_runtime::Result<()> {
    let graph = Graph::from_onnx(fixture("mnist-net_256x2.onnx"), &Device::Cpu)?;
    let model = Model::new(graph);
    for (file, eps) in [
        ("prop_0_0.03.vnnlib", 0.03),
        ("prop_0_0.05.vnnlib", 0.05),
        ("prop_1_0.03.vnnlib", 0.03),
    ] {
        let p = Property::from_file(fixture(file))?;
        let y = label(file);
        assert_eq!((p.lower.len(), p.outputs), (784, 10), "{file}");
        // A box of radius ε around a digit, clipped to [0, 1] (the file rounds ε to f32).
        for (&l, &u) in p.lower.iter().zip(&p.upper) {
            assert!(0.0 <= l && l <= u && u <= 1.0, "{file}: [{l}, {u}]");
            assert!(u - l <= 2.0 * eps + 1e-6, "{file}: [{l}, {u}]");
        }
        let widest = (p.lower.iter().zip(&p.upper)).fold(0f64, |w, (l, u)| w.max(u - l));
        assert!((widest - 2.0 * eps).abs() < 1e-6, "{file}: widest {widest}");
        // The violation: some other logit at least the label's, nine ways.
        assert_eq!(p.violation.len(), 9, "{file}");
        for (conj, j) in p.violation.iter().zip((0..10).filter(|&j| j != y)) {
            let mut want = vec![0.0; 10];
            (want[j], want[y]) = (1.0, -1.0);
            assert_eq!(conj.len(), 1);
            assert_eq!(
                (&conj[0].coefficients, conj[0].constant),
                (&want, 0.0),
                "{file}"
            );
        }
        // The network classifies the box's centre as the label: no violation there.
        let centre: Vec<f32> = (p.lower.iter().zip(&p.upper))
            .map(|(l, u)| ((l + u) / 2.0) as f32)
            .collect();
        let x = Tensor::from_vec(centre, (1, 784, 1), &Device::Cpu)?;
        let z = model.checked_logits(&x)?;
        let z: Vec<f64> = z[0].iter().map(|&v| v as f64).collect();
        assert_eq!(model.predict(&x)?, vec![y as u32], "{file}");
        assert!(!p.violated(&z), "{file}: {z:?}");
    }
    Ok(())
}
