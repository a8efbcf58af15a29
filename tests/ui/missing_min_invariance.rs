use robust_runtime::prelude::*;

#[robustness_test(perturbation = "rotation", max_degrees = 15.0, cases = 256)]
fn case() -> robust_runtime::Result<RobustnessCase> {
    unimplemented!()
}

fn main() {}
