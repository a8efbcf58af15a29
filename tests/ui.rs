//! Compile-fail tests of `#[robustness_test]`: each `ui/<case>.rs` makes one kind of mistake and
//! `ui/<case>.stderr` holds exactly what the user sees. Regenerate with
//! `TRYBUILD=overwrite cargo test --test ui`, then read every changed `.stderr`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
