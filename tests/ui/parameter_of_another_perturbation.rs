use robust_runtime::prelude::*;

#[robustness_test(perturbation = "rotation", max_degrees = 15.0, sigma = 0.1, min_invariance = 0.99)]
fn case() -> robust_runtime::Result<RobustnessCase> {
    unimplemented!()
}

fn main() {}
