//! `cargo robust`: review and bless baselines, run a suite, write the report page. See
//! [`robust_runtime::cli`].

fn main() -> std::process::ExitCode {
    robust_runtime::cli::main(std::env::args().skip(1))
}
