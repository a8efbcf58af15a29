//! Tells the crate whether it is being built without optimisation (`OPT_LEVEL` 0, cargo's
//! default for `cargo test` dependencies), so that a generated test can warn: candle's kernels
//! then run about 200× slower.

fn main() {
    println!("cargo:rustc-check-cfg=cfg(robust_unoptimised)");
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("OPT_LEVEL").as_deref() == Ok("0") {
        println!("cargo:rustc-cfg=robust_unoptimised");
    }
}
