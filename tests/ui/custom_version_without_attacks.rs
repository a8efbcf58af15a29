use robust_runtime::prelude::*;

#[robustness_test(attack = "autoattack", eps = 0.1, min_acc = 0.6, version = "custom")]
fn case() -> robust_runtime::Result<RobustnessCase> {
    unimplemented!()
}

fn main() {}
