use robust_runtime::prelude::*;

#[robustness_test(certify = "crwn", eps = 0.1, min_certified_acc = 0.8)]
fn model() -> robust_runtime::Result<RobustnessCase> {
    unreachable!()
}

fn main() {}
