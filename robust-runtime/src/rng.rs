//! The one source of randomness of a run.
//!
//! candle cannot seed its CPU random number generator, so nothing in this crate calls
//! `Tensor::rand`/`randn`: every random number is drawn here, on the host, from a ChaCha8 stream
//! seeded by the run, and uploaded as a tensor. Only the raw `next_u64` stream of ChaCha8 is
//! used (not `rand`'s distribution code, whose algorithms change between versions), so the same
//! seed gives the same numbers, bit for bit, on every platform and release.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::nn::simd::wide;

/// A generator's position, as JSON can hold it (the 128-bit word position as a decimal string).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RngState {
    /// The 32-byte ChaCha key, in hex.
    pub seed: String,
    /// The stream number.
    pub stream: u64,
    /// The position in the stream, in 32-bit words.
    pub word_pos: String,
}

/// A seeded random number generator (ChaCha8).
#[derive(Debug, Clone)]
pub struct Rng(ChaCha8Rng);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn seed_from_u64(seed: u64) -> Self {
        Rng(ChaCha8Rng::seed_from_u64(seed))
    }

    /// An independent generator for a sub-task (a batch, a restart), derived from this one.
    pub fn fork(&mut self) -> Self {
        Rng::seed_from_u64(self.next_u64())
    }

    /// The generator's exact position, to save in a checkpoint (seed, stream, word position).
    pub fn state(&self) -> RngState {
        RngState {
            seed: self
                .0
                .get_seed()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            stream: self.0.get_stream(),
            word_pos: self.0.get_word_pos().to_string(),
        }
    }

    /// A generator at a saved position; `None` for a state no [`Rng::state`] wrote.
    pub fn from_state(state: &RngState) -> Option<Self> {
        if state.seed.len() != 64 {
            return None;
        }
        let mut seed = [0u8; 32];
        for (i, byte) in seed.iter_mut().enumerate() {
            *byte = u8::from_str_radix(state.seed.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        let mut inner = ChaCha8Rng::from_seed(seed);
        inner.set_stream(state.stream);
        inner.set_word_pos(state.word_pos.parse().ok()?);
        Some(Rng(inner))
    }

    /// The next raw 64-bit value.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `[0, n)` for `n > 0`, by Lemire's multiply-shift (bias below 2⁻⁶⁴·n).
    pub fn below(&mut self, n: usize) -> usize {
        debug_assert!(n > 0);
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit_f64()
    }

    /// Standard normal, by the Box–Muller transform.
    pub fn normal(&mut self) -> f64 {
        let (a, b) = (self.next_u64(), self.next_u64());
        box_muller(a, b)
    }

    /// A Fisher–Yates shuffle of `items`.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }

    /// `n` values uniform in `[lo, hi)`, as `f32`.
    pub fn uniform_vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi) as f32).collect()
    }

    /// `n` standard normal values, as `f32`.
    pub fn normal_vec(&mut self, n: usize) -> Vec<f32> {
        // The same values as `n` calls of `normal`: the raw draws are sequential, the transform
        // (a logarithm, a square root and a cosine each) runs on every core.
        use rayon::prelude::*;
        let raw: Vec<u64> = (0..2 * n).map(|_| self.next_u64()).collect();
        raw.par_chunks(2)
            .map(|pair| box_muller(pair[0], pair[1]) as f32)
            .collect()
    }

    /// `n` standard normal values drawn in f32, for bulk noise (randomized smoothing): the
    /// values come in blocks of [`NORMAL_BLOCK`], each from its own ChaCha8 stream seeded by one
    /// draw of this generator, and each raw 64-bit draw gives two values by the polar form of
    /// Box–Muller (`√(−2 ln u₁)·(cos, sin)(2π u₂)`, 24-bit `u₁ ∈ (0, 1]` and `u₂ ∈ [0, 1)`).
    /// The blocks run on every core; the values depend on the seed only, never on the number
    /// of threads. A different stream from [`Rng::normal_vec`] (which spends two draws and
    /// three f64 functions per value): about 4× fewer draws and transcendental calls, and those
    /// are f32 series of this module's own (`ln_unit`, `sin_cos_turns`): vectorised, and the
    /// same values on every platform, where libm's may differ. The 24-bit `u₁` truncates the
    /// tails at 5.77σ (probability 8·10⁻⁹).
    pub fn normal_vec_f32(&mut self, n: usize) -> Vec<f32> {
        use rayon::prelude::*;
        let seeds: Vec<u64> = (0..n.div_ceil(NORMAL_BLOCK))
            .map(|_| self.next_u64())
            .collect();
        let mut out = vec![0f32; n];
        out.par_chunks_mut(NORMAL_BLOCK)
            .zip(seeds)
            .for_each(|(block, seed)| normal_block(block, seed));
        out
    }
}

wide! {
    /// One block of [`Rng::normal_vec_f32`] from its seed.
    fn normal_block(block: &mut [f32], seed: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        const UNIT: f32 = 1.0 / (1u32 << 24) as f32;
        // The raw draws in one fill (the little-endian bytes of successive `next_u64`s), then
        // the arithmetic in loops without branches or calls, which the compiler vectorises.
        let pairs = block.len().div_ceil(2);
        let mut raw = [0u8; NORMAL_BLOCK * 4];
        rng.fill_bytes(&mut raw[..pairs * 8]);
        let mut u = [(0f32, 0f32); NORMAL_BLOCK / 2];
        for (u, bytes) in u[..pairs].iter_mut().zip(raw.chunks_exact(8)) {
            let bits = u64::from_le_bytes(bytes.try_into().unwrap_or_default());
            *u = (
                (((bits >> 40) as u32) as f32 + 1.0) * UNIT,
                ((bits as u32) & 0xFF_FFFF) as f32 * UNIT,
            );
        }
        let mut z = [0f32; NORMAL_BLOCK];
        for (z, &(u1, u2)) in z.chunks_exact_mut(2).zip(&u[..pairs]) {
            let radius = (-2.0 * ln_unit(u1)).sqrt();
            let (sin, cos) = sin_cos_turns(u2);
            z[0] = radius * cos;
            z[1] = radius * sin;
        }
        block.copy_from_slice(&z[..block.len()]);
    }
}

/// `ln u` for a normal positive f32 `u` (here `u ∈ [2⁻²⁴, 1]`), within 2 ulp of `ln`: `u =
/// m·2ᵉ` with `m ∈ [√½, √2)`, `ln m = 2·atanh(t)`, `t = (m − 1)/(m + 1)`, by its odd series to
/// `t⁹` (`|t| ≤ 0.172`, the next term below 3·10⁻¹⁰). Plain f32 arithmetic, no libm: the same
/// value on every platform.
#[inline(always)]
fn ln_unit(u: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75; // ln 2 rounded to 16 significant bits: e·LN2_HI is exact
    const LN2_LO: f32 = 1.428_606_8e-6;
    let bits = u.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 127;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let big = m > std::f32::consts::SQRT_2;
    m = if big { m * 0.5 } else { m };
    e += big as i32;
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    let series = 2.0 / 9.0;
    let series = series * t2 + 2.0 / 7.0;
    let series = series * t2 + 2.0 / 5.0;
    let series = series * t2 + 2.0 / 3.0;
    let series = series * t2 + 2.0;
    let e = e as f32;
    e * LN2_HI + (e * LN2_LO + t * series)
}

/// `(sin 2πu, cos 2πu)` for `u ∈ [0, 1)`: the quarter turn `q` nearest `4u` taken out exactly,
/// the rest `θ ∈ [−π/4, π/4]` by Taylor series (to `θ⁹` and `θ¹⁰`, the next terms below 2·10⁻⁹),
/// then rotated by `q` quarter turns. Plain f32 arithmetic, no libm, no branches.
#[inline(always)]
fn sin_cos_turns(u: f32) -> (f32, f32) {
    let x = 4.0 * u;
    let q = (x + 0.5).floor();
    let theta = (x - q) * std::f32::consts::FRAC_PI_2;
    let t2 = theta * theta;
    let sin = -1.0 / 362_880.0;
    let sin = sin * t2 + 1.0 / 5_040.0;
    let sin = sin * t2 - 1.0 / 120.0;
    let sin = sin * t2 + 1.0 / 6.0;
    let sin = theta - theta * t2 * sin;
    let cos = 1.0 / 3_628_800.0;
    let cos = cos * t2 - 1.0 / 40_320.0;
    let cos = cos * t2 + 1.0 / 720.0;
    let cos = cos * t2 - 1.0 / 24.0;
    let cos = cos * t2 + 0.5;
    let cos = 1.0 - t2 * cos;
    let q = q as u32 & 3;
    let (s, c) = if q & 1 == 1 { (cos, -sin) } else { (sin, cos) };
    if q & 2 == 2 {
        (-s, -c)
    } else {
        (s, c)
    }
}

/// Values per independently seeded block of [`Rng::normal_vec_f32`].
pub const NORMAL_BLOCK: usize = 4096;

/// One standard normal value from two raw draws, each mapped to `[0, 1)` with 53 bits.
fn box_muller(a: u64, b: u64) -> f64 {
    let unit = |v: u64| (v >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
    // 1 − u is in (0, 1], so the logarithm is finite.
    let (u1, u2) = (1.0 - unit(a), unit(b));
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod should {
    #[test]
    fn draw_the_same_normals_one_by_one_and_in_bulk() {
        let (mut a, mut b) = (super::Rng::seed_from_u64(9), super::Rng::seed_from_u64(9));
        let one_by_one: Vec<f32> = (0..1001).map(|_| a.normal() as f32).collect();
        assert_eq!(b.normal_vec(1001), one_by_one);
        assert_eq!(a.next_u64(), b.next_u64());
    }

    #[test]
    fn resume_exactly_where_a_saved_state_left_off() {
        let mut a = super::Rng::seed_from_u64(42);
        for _ in 0..37 {
            a.next_u64();
        }
        let state = a.state();
        let mut b = super::Rng::from_state(&state).unwrap();
        let next: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        assert_eq!(next, (0..5).map(|_| b.next_u64()).collect::<Vec<_>>());
        let json = serde_json::to_string(&state).unwrap();
        let back: super::RngState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
        assert!(super::Rng::from_state(&super::RngState {
            seed: "zz".into(),
            ..state
        })
        .is_none());
    }

    use super::*;

    #[test]
    fn repeat_the_same_stream_for_the_same_seed() {
        let a: Vec<u64> = (0..8)
            .scan(Rng::seed_from_u64(7), |r, _| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..8)
            .scan(Rng::seed_from_u64(7), |r, _| Some(r.next_u64()))
            .collect();
        let c: Vec<u64> = (0..8)
            .scan(Rng::seed_from_u64(8), |r, _| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn draw_f32_normals_with_the_moments_and_tails_of_a_standard_normal() {
        let xs = Rng::seed_from_u64(1).normal_vec_f32(400_001);
        let n = xs.len() as f64;
        let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        let kurt = xs.iter().map(|&x| (x as f64 - mean).powi(4)).sum::<f64>() / n / var.powi(2);
        assert!(mean.abs() < 0.005, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "variance {var}");
        assert!((kurt - 3.0).abs() < 0.05, "kurtosis {kurt}");
        // P(|Z| > 2) = 0.0455, P(|Z| > 3) = 0.0027.
        let beyond = |t: f32| xs.iter().filter(|x| x.abs() > t).count() as f64 / n;
        assert!((beyond(2.0) - 0.0455).abs() < 0.002, "{}", beyond(2.0));
        assert!((beyond(3.0) - 0.0027).abs() < 0.0004, "{}", beyond(3.0));
    }

    #[test]
    fn compute_logarithms_and_turns_within_a_few_ulp_of_libm() {
        // Every 24-bit argument the generator can draw, in steps of 7.
        let ulp = |v: f64| (v.abs() as f32).max(f32::MIN_POSITIVE) as f64 * f32::EPSILON as f64;
        for i in (0..1u32 << 24).step_by(7) {
            let u1 = (i as f32 + 1.0) / (1u32 << 24) as f32;
            let exact = (u1 as f64).ln();
            let got = super::ln_unit(u1) as f64;
            assert!(
                (got - exact).abs() <= 2.0 * ulp(exact).max(1e-30),
                "ln {u1}: {got} vs {exact}"
            );
            let u2 = i as f32 / (1u32 << 24) as f32;
            let (s, c) = super::sin_cos_turns(u2);
            let angle = std::f64::consts::TAU * u2 as f64;
            // Absolute error near the zeros (the argument itself carries 2⁻²⁴ of a turn).
            assert!((s as f64 - angle.sin()).abs() <= 3e-7, "sin 2π·{u2}: {s}");
            assert!((c as f64 - angle.cos()).abs() <= 3e-7, "cos 2π·{u2}: {c}");
        }
        assert_eq!(super::ln_unit(1.0), 0.0);
        assert_eq!(super::sin_cos_turns(0.0), (0.0, 1.0));
        assert_eq!(super::sin_cos_turns(0.5), (-0.0, -1.0));
    }

    #[test]
    fn draw_the_same_f32_normals_for_a_seed_on_any_pool_and_either_copy() {
        let a = Rng::seed_from_u64(5).normal_vec_f32(3 * NORMAL_BLOCK + 7);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let b = pool.install(|| Rng::seed_from_u64(5).normal_vec_f32(3 * NORMAL_BLOCK + 7));
        assert_eq!(a, b);
        // The AVX-512 copy of a block and the baseline one give the same bits.
        assert!(!crate::nn::simd::on_baseline(crate::nn::simd::avx512));
        let baseline = crate::nn::simd::on_baseline(|| {
            Rng::seed_from_u64(5).normal_vec_f32(3 * NORMAL_BLOCK + 7)
        });
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&baseline));
        assert_ne!(
            a,
            Rng::seed_from_u64(6).normal_vec_f32(3 * NORMAL_BLOCK + 7)
        );
    }

    #[test]
    fn keep_the_f32_normal_stream_that_smoothing_baselines_were_blessed_with() {
        // Values and a checksum of every value's bits, from the generator as first written
        // (draw by draw, one value at a time): a faster generator must draw the same stream.
        let v = Rng::seed_from_u64(5).normal_vec_f32(3 * NORMAL_BLOCK + 7);
        assert_eq!(
            v[..4],
            [0.501_619_64, 0.469_965_64, 1.298_864_8, -0.564_260_9]
        );
        assert_eq!(
            v[v.len() - 3..],
            [-0.259_445_73, -0.305_850_8, -0.576_686_9]
        );
        let checksum = (v.iter().enumerate())
            .map(|(i, x)| (x.to_bits() as u64).wrapping_mul(i as u64 + 1))
            .fold(0u64, u64::wrapping_add);
        assert_eq!(checksum, 161_094_000_404_921_954);
    }

    #[test]
    fn draw_normals_with_unit_variance() {
        let mut rng = Rng::seed_from_u64(1);
        let xs = rng.normal_vec(100_000);
        let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
    }

    #[test]
    fn shuffle_into_a_permutation_that_moves_items() {
        let mut rng = Rng::seed_from_u64(3);
        let mut v: Vec<usize> = (0..100).collect();
        rng.shuffle(&mut v);
        let moved = v.iter().enumerate().filter(|(i, &x)| *i != x).count();
        assert!(moved > 80, "only {moved} of 100 moved");
        v.sort_unstable();
        assert_eq!(v, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn draw_indices_below_the_bound_and_cover_it() {
        let mut rng = Rng::seed_from_u64(4);
        let mut seen = [0usize; 10];
        for _ in 0..10_000 {
            seen[rng.below(10)] += 1;
        }
        assert!(seen.iter().all(|&c| (900..1100).contains(&c)), "{seen:?}");
    }
}
