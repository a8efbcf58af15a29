use robust_runtime::prelude::*;

// smoothing needs `radius` and `sigma`; `eps` belongs to ibp/crown; every test needs its threshold.
#[robustness_test(certify = "smoothing", eps = 0.1, n0 = 1000, n = 100)]
fn model() -> robust_runtime::Result<RobustnessCase> {
    unreachable!()
}

fn main() {}
