use robust_runtime::prelude::*;

#[robustness_test(attack = "pgdd", eps = 0.1, min_acc = 1.5)]
fn case(_seed: u64) -> robust_runtime::Result<RobustnessCase> {
    unimplemented!()
}

fn main() {}
