use robust_runtime::prelude::*;

#[robustness_test(attack = "pgd", eps = 0.1, min_acc = 0.6, version = "rand")]
fn case() -> robust_runtime::Result<RobustnessCase> {
    unimplemented!()
}

fn main() {}
