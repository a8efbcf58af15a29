use robust_runtime::prelude::*;

#[robustness_test(certify = "crown", eps = 0.1, min_certified_acc = 0.8, precision = "tf32")]
fn model() -> robust_runtime::Result<RobustnessCase> {
    unreachable!()
}

fn main() {}
