use robust_runtime::prelude::*;

#[robustness_test(certify = "crown", attack = "pgd", eps = 0.1, steps = 10, sigma = 0.25, min_certified_acc = 0.8)]
fn model() -> robust_runtime::Result<RobustnessCase> {
    unreachable!()
}

fn main() {}
