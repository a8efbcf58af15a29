use robust_runtime::prelude::*;

#[robustness_test(perturbation = "shift", steps = 10, min_acc = 0.9, min_invariance = 0.99)]
fn case() -> robust_runtime::Result<RobustnessCase> {
    unimplemented!()
}

fn main() {}
