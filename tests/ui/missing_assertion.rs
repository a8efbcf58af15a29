use robust_runtime::prelude::*;

#[robustness_test(attack = "pgd", eps = 0.1, samples = 500)]
fn case() -> robust_runtime::Result<RobustnessCase> {
    unimplemented!()
}

fn main() {}
