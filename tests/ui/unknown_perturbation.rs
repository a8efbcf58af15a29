use robust_runtime::prelude::*;

#[robustness_test(perturbation = ["rotation", "shfit"], min_invariance = 0.99)]
fn case() -> robust_runtime::Result<RobustnessCase> {
    unimplemented!()
}

fn main() {}
