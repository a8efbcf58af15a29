use robust_runtime::prelude::*;

#[robustness_test(attack = "pgd", eps = 0.1, perturbation = "rotation", min_invariance = 0.99)]
fn case() -> robust_runtime::Result<RobustnessCase> {
    unimplemented!()
}

fn main() {}
