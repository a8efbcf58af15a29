use robust_runtime::prelude::*;

#[robustness_test(attack = "pgd", eps = [0.1, 0.10], min_acc = 0.6)]
fn case() -> robust_runtime::Result<RobustnessCase> {
    unimplemented!()
}

fn main() {}
