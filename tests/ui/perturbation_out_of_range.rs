use robust_runtime::prelude::*;

#[robustness_test(perturbation = ["rotation", "contrast"], max_degrees = 360, max_contrast = 1.5, cases = 0, min_invariance = 0.99)]
fn case() -> robust_runtime::Result<RobustnessCase> {
    unimplemented!()
}

fn main() {}
