use robust_runtime::prelude::*;

#[robustness_test(attack = ["pgd", "cw"], eps = 0.5, min_acc = 0.6, norm = "linf")]
fn case() -> robust_runtime::Result<RobustnessCase> {
    unimplemented!()
}

fn main() {}
