//! Randomized smoothing (Cohen, Rosenfeld & Kolter 2019, "Certified Adversarial Robustness via
//! Randomized Smoothing").
//!
//! The smoothed classifier `g(x) = argmax_c P(f(x + δ) = c)`, `δ ~ N(0, σ²I)`, is robust at `x`
//! within L2 radius `σ·Φ⁻¹(p_A)` whenever the top class has probability `p_A > 1/2`. Both
//! procedures of the paper are here, step for step:
//!
//! - [`Smoothing::predict`] (PREDICT): `n` noisy copies; return the top class if the two-sided
//!   binomial test of its count against the runner-up's rejects `p = 1/2` at level `alpha`,
//!   else abstain.
//! - [`Smoothing::certify`] (CERTIFY): guess the top class from `n0` copies, count it in `n`
//!   fresh copies, take the one-sided Clopper–Pearson lower bound `p̲_A` at level `alpha`; abstain
//!   if `p̲_A < 1/2`, else certify radius `σ·Φ⁻¹(p̲_A)`.
//!
//! Noise is drawn from the run's seeded [`Rng`] on the host and added in input units, before
//! the model's normalisation (as the paper does, with its normalisation layer inside the model),
//! without clamping to the input domain. Copies go through the model in batches of
//! `batch_size`.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::stats;
use crate::{Error, Model, Result, Rng};

/// Randomized-smoothing parameters. Defaults are the paper's: `n0 = 100`, `n = 100,000`,
/// `alpha = 0.001`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Smoothing {
    /// Standard deviation of the Gaussian noise, in input units.
    pub sigma: f64,
    /// Copies used to guess the top class.
    pub n0: usize,
    /// Copies used to estimate its probability.
    pub n: usize,
    /// Failure probability of the certificate (and level of PREDICT's test).
    pub alpha: f64,
    /// Noisy copies per forward pass.
    pub batch_size: usize,
}

/// What CERTIFY says about one input.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SmoothedCertificate {
    /// The smoothed prediction, `None` when CERTIFY abstains.
    pub prediction: Option<u32>,
    /// Count of the guessed class among the `n` copies.
    pub count: u64,
    /// The Clopper–Pearson lower bound of its probability.
    pub p_a_lower: f64,
    /// The certified L2 radius `σ·Φ⁻¹(p̲_A)` (0 when abstaining).
    pub radius: f64,
}

impl Smoothing {
    /// σ with the paper's defaults for everything else. Checked by [`Smoothing::check`] before use.
    pub fn new(sigma: f64) -> Self {
        Smoothing {
            sigma,
            n0: robust_spec::names::SMOOTHING_N0,
            n: robust_spec::names::SMOOTHING_N,
            alpha: 0.001,
            batch_size: 1_000,
        }
    }

    /// Rejects values the procedure is undefined for.
    pub fn check(&self) -> Result<()> {
        crate::check::check_positive_as("sigma", self.sigma, "a finite noise level > 0")?;
        if self.n0 == 0 {
            return Err(Error::param("n0", self.n0, "at least 1 noisy copy"));
        }
        if self.n == 0 {
            return Err(Error::param("n", self.n, "at least 1 noisy copy"));
        }
        if self.n0 > self.n {
            return Err(Error::param(
                "n0",
                self.n0,
                format!(
                    "at most n = {} (the selection sample is the smaller one)",
                    self.n
                ),
            ));
        }
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(Error::param("alpha", self.alpha, "a probability in (0, 1)"));
        }
        if self.batch_size == 0 {
            return Err(Error::param("batch_size", self.batch_size, "at least 1"));
        }
        Ok(())
    }

    /// How often the base classifier predicts each class on `num` noisy copies of `x` (one
    /// sample, without the batch dimension).
    pub fn counts(&self, model: &Model, x: &Tensor, num: usize, rng: &mut Rng) -> Result<Vec<u64>> {
        let dims = x.dims().to_vec();
        let size = x.elem_count();
        let x = x.to_dtype(DType::F32)?.unsqueeze(0)?;
        // On the CPU the noise is added in place, in parallel (the same f32 sums).
        let host = match x.device() {
            Device::Cpu => Some(x.flatten_all()?.to_vec1::<f32>()?),
            _ => None,
        };
        let mut counts: Vec<u64> = Vec::new();
        let mut left = num;
        while left > 0 {
            let m = left.min(self.batch_size);
            left -= m;
            let sigma = self.sigma as f32;
            let mut noise = rng.normal_vec_f32(m * size);
            let mut shape = vec![m];
            shape.extend(&dims);
            let noisy = match &host {
                Some(x) => {
                    noise.par_chunks_mut(size).for_each(|copy| {
                        for (v, &x) in copy.iter_mut().zip(x) {
                            *v = x + *v * sigma;
                        }
                    });
                    Tensor::from_vec(noise, shape.as_slice(), &Device::Cpu)?
                }
                None => {
                    noise.iter_mut().for_each(|v| *v *= sigma);
                    Tensor::from_vec(noise, shape.as_slice(), x.device())?.broadcast_add(&x)?
                }
            };
            let predictions = model.predict(&noisy)?;
            for p in predictions {
                let p = p as usize;
                if counts.len() <= p {
                    counts.resize(p + 1, 0);
                }
                counts[p] += 1;
            }
        }
        Ok(counts)
    }

    /// PREDICT: the smoothed class of `x`, or `None` (abstain) when the top two counts of `n`
    /// copies are not significantly different at level `alpha`.
    pub fn predict(&self, model: &Model, x: &Tensor, rng: &mut Rng) -> Result<Option<u32>> {
        self.check()?;
        let counts = self.counts(model, x, self.n, rng)?;
        let (top, second) = top_two(&counts);
        let (n_a, n_b) = (counts[top], second.map_or(0, |c| counts[c]));
        Ok(predict_from_counts(top as u32, n_a, n_b, self.alpha))
    }

    /// CERTIFY: the smoothed class of `x` and the L2 radius it is certified within, with
    /// probability at least `1 − alpha` over the noise.
    pub fn certify(&self, model: &Model, x: &Tensor, rng: &mut Rng) -> Result<SmoothedCertificate> {
        self.check()?;
        let selection = self.counts(model, x, self.n0, rng)?;
        let (guess, _) = top_two(&selection);
        let estimation = self.counts(model, x, self.n, rng)?;
        let count = estimation.get(guess).copied().unwrap_or(0);
        Ok(certify_from_counts(
            guess as u32,
            count,
            self.n as u64,
            self.alpha,
            self.sigma,
        ))
    }
}

/// PREDICT's decision once the copies are counted: `top` if its count `n_a` beats the
/// runner-up's `n_b` at level `alpha` (two-sided binomial test against 1/2), else abstain.
pub fn predict_from_counts(top: u32, n_a: u64, n_b: u64, alpha: f64) -> Option<u32> {
    (stats::binomial_test_half(n_a, n_a + n_b) <= alpha).then_some(top)
}

/// CERTIFY's decision once the copies are counted: `count` of the `n` copies hit `guess`.
pub fn certify_from_counts(
    guess: u32,
    count: u64,
    n: u64,
    alpha: f64,
    sigma: f64,
) -> SmoothedCertificate {
    let p_a_lower = stats::clopper_pearson_lower(count, n, alpha);
    if p_a_lower < 0.5 {
        return SmoothedCertificate {
            prediction: None,
            count,
            p_a_lower,
            radius: 0.0,
        };
    }
    SmoothedCertificate {
        prediction: Some(guess),
        count,
        p_a_lower,
        radius: sigma * stats::normal_ppf(p_a_lower),
    }
}

/// The most and second most frequent class (ties go to the lower class index, as numpy's
/// `argmax`).
fn top_two(counts: &[u64]) -> (usize, Option<usize>) {
    let mut order: Vec<usize> = (0..counts.len()).collect();
    order.sort_by(|&a, &b| counts[b].cmp(&counts[a]).then(a.cmp(&b)));
    (order[0], order.get(1).copied())
}

#[cfg(test)]
mod should {
    use super::*;

    #[test]
    fn reject_a_sigma_that_is_infinite_or_zero_as_f32() {
        for sigma in [1e39, 1e-50] {
            let err = Smoothing::new(sigma).check().unwrap_err().to_string();
            assert!(
                err.contains(&format!(
                    "invalid value for `sigma`: {sigma}; expected a finite noise level > 0 as f32"
                )),
                "{err}"
            );
        }
        assert!(Smoothing::new(0.25).check().is_ok());
    }

    #[test]
    fn reject_each_bad_parameter() {
        let bad = [
            Smoothing::new(0.0),
            Smoothing::new(f64::NAN),
            Smoothing {
                n0: 0,
                ..Smoothing::new(0.25)
            },
            Smoothing {
                n: 10,
                n0: 100,
                ..Smoothing::new(0.25)
            },
            Smoothing {
                alpha: 0.0,
                ..Smoothing::new(0.25)
            },
            Smoothing {
                alpha: 1.0,
                ..Smoothing::new(0.25)
            },
        ];
        for s in bad {
            assert!(
                matches!(s.check(), Err(Error::InvalidParameter { .. })),
                "{s:?}"
            );
        }
        Smoothing::new(0.25).check().unwrap();
    }

    #[test]
    fn rank_classes_like_numpy() {
        assert_eq!(top_two(&[3, 7, 7, 1]), (1, Some(2)));
        assert_eq!(top_two(&[5]), (0, None));
    }
}
