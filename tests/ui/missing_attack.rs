use robust_runtime::prelude::*;

#[robustness_test(eps = 0.1, min_acc = 0.6)]
fn case() -> robust_runtime::Result<RobustnessCase> {
    unimplemented!()
}

fn main() {}
