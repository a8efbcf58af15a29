use robust_runtime::prelude::*;

// `n = 50` alone leaves `n0` at its default of 100, more than `n`.
#[robustness_test(certify = "smoothing", radius = 0.25, sigma = 0.25, n = 50, min_certified_acc = 0.5)]
fn model() -> robust_runtime::Result<RobustnessCase> {
    unreachable!()
}

fn main() {}
