//! Wide vector code for the engine's own loops, chosen at run time.
//!
//! The crate is built for the baseline x86-64 target (SSE2), so that one binary runs on any
//! x86-64 CPU; the matrix products reach AVX-512 through the `gemm` crate's own dispatch. The
//! engine's element-wise and scatter loops get the same through [`wide!`]: the function's body
//! is compiled twice, once as it is and once with AVX-512 enabled, and the second runs where the
//! CPU has it. The arithmetic is the same in both (no fused multiply–add is introduced: Rust
//! never contracts `a * b + c`), so both give the same bits.

use std::sync::OnceLock;

/// Whether this CPU runs the AVX-512 copies (checked once).
pub(crate) fn avx512() -> bool {
    #[cfg(test)]
    if BASELINE.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512vl")
                && std::is_x86_feature_detected!("avx2")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// Set while [`on_baseline`] runs: every thread then takes the baseline copies.
#[cfg(test)]
static BASELINE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `f` with the baseline copies on every thread, for tests that both copies give the same
/// bits. Other tests running meanwhile take the baseline copies too, which by that property
/// changes none of their numbers.
#[cfg(test)]
pub(crate) fn on_baseline<R>(f: impl FnOnce() -> R) -> R {
    use std::sync::atomic::Ordering;
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    BASELINE.store(true, Ordering::Relaxed);
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    BASELINE.store(false, Ordering::Relaxed);
    out.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// A function whose body also has an AVX-512 copy, called where the CPU runs it (see the
/// module docs). The body must not depend on which copy runs.
macro_rules! wide {
    ($(#[$meta:meta])* $vis:vis fn $name:ident $(<$($g:tt),*>)? ($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name $(<$($g),*>)? ($($arg: $ty),*) {
            #[inline(always)]
            fn body $(<$($g),*>)? ($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
                fn avx512 $(<$($g),*>)? ($($arg: $ty),*) {
                    body($($arg),*)
                }
                if $crate::nn::simd::avx512() {
                    // SAFETY: the CPU has the features `avx512` was compiled for (checked above).
                    return unsafe { avx512($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use wide;
