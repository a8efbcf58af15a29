//! The Square Attack (Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient
//! black-box adversarial attack via random search", ECCV 2020): score-based and black-box. It
//! calls the model's forward pass only, never a gradient, and does random search on the
//! margin `z_y − max_{j≠y} z_j` (targeted: `max_{j≠t} z_j − z_t`): each query changes one random
//! square window of the current best point and is kept if the margin decreases.
//!
//! - L∞ (Algorithm 1): initialised with vertical stripes of ±ε (one sign per column and
//!   channel); a proposal sets the window to `x ± ε`, one random sign per channel.
//! - L2 (Algorithm 3): initialised with a grid of 5 × 5 "pseudo-Gaussian" tiles (two nested-
//!   rectangle patterns of opposite sign) of random sign, scaled to norm ε; a proposal moves
//!   the perturbation mass of a second random window into the first and adds a fresh
//!   pseudo-Gaussian pattern there, keeping the norm at ε.
//!
//! The side of the square follows the schedule of `p`, the fraction of the pixels it covers:
//! `p_init` halved at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of a
//! 10,000-query run, rescaled to the query budget by default (the reference code's
//! `resc_schedule`, torchattacks' default). AutoAttack's standard version runs Square with the
//! schedule *not* rescaled (`rescale_schedule: false`): at 5,000 queries `p` then stops at
//! `p_init/128`, and the squares stay larger. Each sample draws its own windows and signs (the authors' code); one restart.
//!
//! Samples that are misclassified before the attack are returned unchanged. The initialisation
//! costs one query; a sample stops consuming queries as soon as it is misclassified, and only
//! the still-active samples go through the model. Randomness comes from the run's [`Rng`].

use candle_core::{DType, Device, Tensor, D};

use super::loss::Objective;
use super::ThreatModel;
use super::{check_at_least_one, check_positive, kernel, Attack, AttackBatch, Loss, Norm};
use crate::model::{InputDomain, Model};
use crate::rng::Rng;
use crate::{Error, Result};

/// Added to norms before dividing (AutoAttack's value).
const DIV_EPS: f64 = 1e-12;

/// Hyper-parameters of [`Square`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SquareConfig {
    /// Radius of the threat model, in input units (default 0.1; finite and > 0).
    pub eps: f64,
    /// Norm of the threat model (default L∞).
    pub norm: Norm,
    /// Forward passes per sample, the initialisation included (default 5000, as AutoAttack's
    /// standard version; ≥ 1).
    pub queries: usize,
    /// Initial fraction of the pixels a square covers (default 0.8, AutoAttack's value for
    /// L∞ and L2; in (0, 1]).
    pub p_init: f64,
    /// Fit the schedule of `p` to `queries` (default true). False: the iteration numbers of a
    /// 10,000-query run, as AutoAttack's standard version.
    pub rescale_schedule: bool,
}

impl Default for SquareConfig {
    fn default() -> Self {
        SquareConfig {
            eps: 0.1,
            norm: Norm::Linf,
            queries: 5000,
            p_init: 0.8,
            rescale_schedule: true,
        }
    }
}

/// The Square Attack, validated.
#[derive(Debug, Clone)]
pub struct Square {
    cfg: SquareConfig,
}

impl Square {
    /// Checks the configuration before any tensor work.
    pub fn new(cfg: SquareConfig) -> Result<Self> {
        check_positive("eps", cfg.eps)?;
        check_at_least_one("queries", cfg.queries)?;
        if !(cfg.p_init > 0.0 && cfg.p_init <= 1.0) {
            return Err(Error::param("p_init", cfg.p_init, "a fraction in (0, 1]"));
        }
        Ok(Square { cfg })
    }

    /// The fraction of pixels covered at iteration `it` (0-based, after the initialisation).
    fn p_selection(&self, it: usize) -> f64 {
        let it = if self.cfg.rescale_schedule {
            (it as u128 * 10_000 / self.cfg.queries as u128) as usize
        } else {
            it
        };
        let halvings = match it {
            0..=10 => 0,
            11..=50 => 1,
            51..=200 => 2,
            201..=500 => 3,
            501..=1000 => 4,
            1001..=2000 => 5,
            2001..=4000 => 6,
            4001..=6000 => 7,
            6001..=8000 => 8,
            _ => 9,
        };
        self.cfg.p_init / f64::from(1u32 << halvings)
    }

    /// The side of the square for iteration `it` on `h × w` images.
    fn side(&self, it: usize, h: usize, w: usize) -> usize {
        let s = (self.p_selection(it) * (h * w) as f64).sqrt().round() as usize;
        let s = match self.cfg.norm {
            Norm::Linf => s.max(1),
            // L2 windows hold a pattern with a positive and a negative half: odd, ≥ 3.
            _ => {
                let s = s.max(3);
                s + 1 - s % 2
            }
        };
        // At most h − 1 so that a window has a position to be drawn at (the authors' code).
        s.min(h.min(w) - 1).max(1)
    }

    /// The first point: stripes (L∞) or pseudo-Gaussian tiles (L2) in the ball and the domain.
    fn init(&self, x: &Tensor, domain: InputDomain, rng: &mut Rng) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let eps = self.cfg.eps;
        match self.cfg.norm {
            Norm::Linf => {
                let signs = random_signs(rng, n * c * w);
                let stripes = Tensor::from_vec(signs, (n, c, 1, w), x.device())?;
                domain.clamp(&x.broadcast_add(&(stripes * eps)?)?)
            }
            _ => {
                let s = (h.min(w) / 5).max(1);
                let (start_h, start_w) =
                    ((h.saturating_sub(5 * s)) / 2, (w.saturating_sub(5 * s)) / 2);
                let mut delta = vec![0f32; n * c * h * w];
                let eta = pseudo_gaussian(s);
                for img in 0..n {
                    for th in 0..((h - start_h) / s) {
                        for tw in 0..((w - start_w) / s) {
                            let transposed = rng.below(2) == 1;
                            for ch in 0..c {
                                let sign = if rng.below(2) == 1 { 1.0 } else { -1.0 };
                                let base = (img * c + ch) * h * w;
                                paint(
                                    &mut delta[base..base + h * w],
                                    w,
                                    (start_h + th * s, start_w + tw * s),
                                    s,
                                    &eta,
                                    transposed,
                                    sign,
                                );
                            }
                        }
                    }
                }
                let delta = Tensor::from_vec(delta, (n, c, h, w), x.device())?;
                domain.clamp(&(x + scale_to(&delta, eps)?)?)
            }
        }
    }

    /// One proposal for every sample of `x` (clean) at `best` (current best point).
    fn propose(
        &self,
        x: &Tensor,
        best: &Tensor,
        it: usize,
        domain: InputDomain,
        rng: &mut Rng,
    ) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let s = self.side(it, h, w);
        let eps = self.cfg.eps;
        let corners: Vec<(usize, usize)> = (0..n)
            .map(|_| (rng.below(h - s), rng.below(w - s)))
            .collect();
        let window = window_mask(&corners, s, h, w, x.device())?;
        match self.cfg.norm {
            Norm::Linf => {
                let signs = Tensor::from_vec(random_signs(rng, n * c), (n, c, 1, 1), x.device())?;
                let moved = x.broadcast_add(&(signs * eps)?)?;
                let window = window.broadcast_as(x.shape())?.to_dtype(DType::U8)?;
                domain.clamp(&window.where_cond(&moved, best)?)
            }
            _ => {
                let corners2: Vec<(usize, usize)> = (0..n)
                    .map(|_| (rng.below(h - s), rng.below(w - s)))
                    .collect();
                let window2 = window_mask(&corners2, s, h, w, x.device())?;
                let both = window.maximum(&window2)?;
                let delta = (best - x)?;
                let hw_norm = |t: &Tensor| -> Result<Tensor> {
                    Ok(t.sqr()?
                        .sum_keepdim(D::Minus1)?
                        .sum_keepdim(D::Minus2)?
                        .sqrt()?)
                };
                // Per channel: the mass already in window 1, and in windows 1 ∪ 2.
                let in_window = delta.broadcast_mul(&window)?;
                let norm_window = hw_norm(&in_window)?;
                let norm_both = hw_norm(&delta.broadcast_mul(&both)?)?;
                let norm_image = kernel::per_sample_l2(&delta)?.reshape((n, 1, 1, 1))?;
                // A fresh pattern of random sign in window 1, plus the old content of window 1
                // normalised, rescaled to the mass of both windows plus the budget left over.
                let eta = pseudo_gaussian(s);
                let mut fresh = vec![0f32; n * c * h * w];
                for (img, &corner) in corners.iter().enumerate() {
                    let transposed = rng.below(2) == 1;
                    for ch in 0..c {
                        let sign = if rng.below(2) == 1 { 1.0 } else { -1.0 };
                        let base = (img * c + ch) * h * w;
                        paint(
                            &mut fresh[base..base + h * w],
                            w,
                            corner,
                            s,
                            &eta,
                            transposed,
                            sign,
                        );
                    }
                }
                let fresh = Tensor::from_vec(fresh, (n, c, h, w), x.device())?;
                let proposal = (fresh + in_window.broadcast_div(&(norm_window + DIV_EPS)?)?)?;
                let left = ((norm_image.sqr()?.neg()? + eps * eps)?.relu()? / c as f64)?;
                let target = left.broadcast_add(&norm_both.sqr()?)?.sqrt()?;
                let proposal = proposal
                    .broadcast_div(&(hw_norm(&proposal)? + DIV_EPS)?)?
                    .broadcast_mul(&target)?;
                let keep = (both.neg()? + 1.0)?;
                let delta = (delta.broadcast_mul(&keep)? + proposal)?;
                domain.clamp(&(x + scale_to(&delta, eps)?)?)
            }
        }
    }
}

impl Attack for Square {
    fn is_black_box(&self) -> bool {
        true
    }

    fn id(&self) -> &'static str {
        "square"
    }

    fn describe(&self) -> String {
        format!(
            "Square-{} (ε = {}, {} queries, p_init = {}{})",
            self.cfg.norm.symbol(),
            self.cfg.eps,
            self.cfg.queries,
            self.cfg.p_init,
            if self.cfg.rescale_schedule {
                ""
            } else {
                ", schedule of 10,000 queries"
            }
        )
    }

    fn threat(&self) -> ThreatModel {
        ThreatModel {
            norm: self.cfg.norm,
            eps: self.cfg.eps,
        }
    }

    fn perturb(&self, model: &Model, batch: &AttackBatch<'_>, rng: &mut Rng) -> Result<Tensor> {
        let x_in = batch.inputs;
        let x = as_images(x_in)?;
        let n = x.dim(0)?;
        let device = x.device();
        let domain = model.domain();
        // The margin is the negated CW objective: below 0, the sample is misclassified.
        let margin_at = |xs: &Tensor, objective: &Objective| -> Result<Vec<f32>> {
            let logits = model.logits(&xs.reshape(reshaped(x_in, xs.dim(0)?))?)?;
            Ok(objective.per_sample(&logits)?.neg()?.to_vec1::<f32>()?)
        };
        let broken = batch.successes(&model.predict(x_in)?)?;
        let mut active: Vec<u32> = (0..n as u32).filter(|&i| !broken[i as usize]).collect();
        if active.is_empty() {
            return Ok(x_in.clone());
        }

        let mut best = x.clone();
        let mut margin = vec![f32::INFINITY; n];
        let mut queries = 0;
        while !active.is_empty() && queries < self.cfg.queries {
            let idx = Tensor::from_slice(&active, active.len(), device)?;
            let x_act = x.index_select(&idx, 0)?;
            let candidate = if queries == 0 {
                self.init(&x_act, domain, rng)?
            } else {
                let best_act = best.index_select(&idx, 0)?;
                self.propose(&x_act, &best_act, queries - 1, domain, rng)?
            };
            let targets_act = batch.targets.map(|t| t.index_select(&idx, 0)).transpose()?;
            let sub = Objective::new(
                Loss::CwMargin,
                &batch.labels.index_select(&idx, 0)?,
                targets_act.as_ref(),
                batch.num_classes,
            )?;
            let new_margin = margin_at(&candidate, &sub)?;
            queries += 1;
            // The initialisation is always taken; later proposals when the margin drops.
            let mut take = vec![0u8; n];
            for (k, &i) in active.iter().enumerate() {
                let i = i as usize;
                if queries == 1 || new_margin[k] < margin[i] {
                    margin[i] = new_margin[k];
                    take[i] = 1;
                }
            }
            // Scatter the active rows back: adding into zeros is exact.
            let full = best.zeros_like()?.index_add(&idx, &candidate, 0)?;
            let take = Tensor::from_slice(&take, n, device)?;
            best = kernel::select_samples(&take, &full, &best)?;
            active.retain(|&i| margin[i as usize] >= 0.0);
        }
        // Rounding in the L2 rescaling may overshoot ε by an ulp: project to be sure.
        let best = kernel::project(&best, &x, &self.threat(), domain)?;
        Ok(best.reshape(x_in.shape())?.to_dtype(x_in.dtype())?)
    }
}

/// The inputs as `N × C × H × W` (an `N × H × W` batch gets one channel).
fn as_images(x: &Tensor) -> Result<Tensor> {
    match x.rank() {
        4 => Ok(x.to_dtype(DType::F32)?),
        3 => Ok(x.unsqueeze(1)?.to_dtype(DType::F32)?),
        _ => Err(Error::Data(format!(
            "the Square Attack needs image batches N × C × H × W or N × H × W; found shape {:?}",
            x.dims()
        ))),
    }
    .and_then(|x| {
        let (_, _, h, w) = x.dims4()?;
        if h < 2 || w < 2 {
            return Err(Error::Data(format!(
                "the Square Attack needs images of at least 2 × 2 pixels; found shape {:?}",
                x.dims()
            )));
        }
        Ok(x)
    })
}

/// The input shape with `n` samples, to hand image batches back to the model as it expects.
fn reshaped(x_in: &Tensor, n: usize) -> Vec<usize> {
    let mut shape = x_in.dims().to_vec();
    shape[0] = n;
    shape
}

/// `n` values ±1.
fn random_signs(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| if rng.below(2) == 1 { 1.0 } else { -1.0 })
        .collect()
}

/// `N × 1 × H × W` f32 masks of the `s × s` windows with top-left corners `corners`, built by
/// comparing coordinates with the corners on the device.
fn window_mask(
    corners: &[(usize, usize)],
    s: usize,
    h: usize,
    w: usize,
    device: &Device,
) -> Result<Tensor> {
    let n = corners.len();
    let along = |starts: Vec<f32>, len: usize| -> Result<Tensor> {
        let coord = Tensor::arange(0f32, len as f32, device)?.unsqueeze(0)?;
        let start = Tensor::from_vec(starts, (n, 1), device)?;
        let inside = coord
            .broadcast_ge(&start)?
            .mul(&coord.broadcast_lt(&(start + s as f64)?)?)?;
        Ok(inside.to_dtype(DType::F32)?)
    };
    let rows = along(corners.iter().map(|c| c.0 as f32).collect(), h)?;
    let cols = along(corners.iter().map(|c| c.1 as f32).collect(), w)?;
    Ok(rows
        .reshape((n, 1, h, 1))?
        .broadcast_mul(&cols.reshape((n, 1, 1, w))?)?)
}

/// `delta` rescaled to L2 norm `eps` per sample.
fn scale_to(delta: &Tensor, eps: f64) -> Result<Tensor> {
    let norms = (kernel::per_sample_l2(delta)? + DIV_EPS)?;
    Ok((delta.broadcast_div(&norms.reshape(kernel::batch_shape(delta))?)? * eps)?)
}

/// Nested centred rectangles of weight 1/(k+1)², unit L2 norm, `rows × cols` row-major.
fn rectangles(rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f64; rows * cols];
    let (ch, cw) = (rows / 2 + 1, cols / 2 + 1);
    let (mut r0, mut c0) = (ch as i64 - 1, cw as i64 - 1);
    for k in 0..ch.max(cw) as i64 {
        let weight = 1.0 / ((k + 1) * (k + 1)) as f64;
        let (r_lo, r_hi) = (
            r0.max(0) as usize,
            ((r0 + 2 * k + 1).max(0) as usize).min(rows),
        );
        let (c_lo, c_hi) = (
            c0.max(0) as usize,
            ((c0 + 2 * k + 1).max(0) as usize).min(cols),
        );
        for r in r_lo..r_hi {
            for c in c_lo..c_hi {
                out[r * cols + c] += weight;
            }
        }
        r0 -= 1;
        c0 -= 1;
    }
    let norm = out.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-300);
    out.iter().map(|v| (v / norm) as f32).collect()
}

/// The `s × s` pseudo-Gaussian pattern: rectangles on the top half, their negation on the
/// bottom half, unit L2 norm (the paper's η).
fn pseudo_gaussian(s: usize) -> Vec<f32> {
    let top = rectangles(s / 2, s);
    let bottom = rectangles(s - s / 2, s);
    let mut eta: Vec<f32> = top
        .into_iter()
        .chain(bottom.into_iter().map(|v| -v))
        .collect();
    let norm = eta
        .iter()
        .map(|v| v * v)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    eta.iter_mut().for_each(|v| *v /= norm);
    eta
}

/// Writes `sign·η` (or its transpose) into the `s × s` window at `corner` of a row-major image
/// plane of width `w`.
fn paint(
    plane: &mut [f32],
    w: usize,
    corner: (usize, usize),
    s: usize,
    eta: &[f32],
    transposed: bool,
    sign: f32,
) {
    for i in 0..s {
        for j in 0..s {
            let v = if transposed {
                eta[j * s + i]
            } else {
                eta[i * s + j]
            };
            plane[(corner.0 + i) * w + corner.1 + j] = sign * v;
        }
    }
}

#[cfg(test)]
mod should {
    use super::*;

    fn rejects(cfg: SquareConfig, message: &str) {
        let err = Square::new(cfg).unwrap_err();
        assert_eq!(err.to_string(), message);
    }

    #[test]
    fn reject_zero_queries() {
        rejects(
            SquareConfig {
                queries: 0,
                ..SquareConfig::default()
            },
            "invalid value for `queries`: 0; expected an integer ≥ 1",
        );
    }

    #[test]
    fn reject_p_init_outside_the_unit_interval() {
        for p in [0.0, -0.5, 1.5, f64::NAN] {
            rejects(
                SquareConfig {
                    p_init: p,
                    ..SquareConfig::default()
                },
                &format!("invalid value for `p_init`: {p}; expected a fraction in (0, 1]"),
            );
        }
        assert!(Square::new(SquareConfig {
            p_init: 1.0,
            ..SquareConfig::default()
        })
        .is_ok());
    }

    #[test]
    fn reject_a_negative_eps() {
        rejects(
            SquareConfig {
                eps: -0.1,
                ..SquareConfig::default()
            },
            "invalid value for `eps`: -0.1; expected a finite number > 0",
        );
    }

    #[test]
    fn halve_p_on_autoattacks_schedule_rescaled_to_the_budget() -> Result<()> {
        let at = |queries, it| {
            Square::new(SquareConfig {
                queries,
                ..SquareConfig::default()
            })
            .map(|s| s.p_selection(it) / 0.8)
        };
        // 10,000 queries: the paper's iteration numbers.
        assert_eq!(at(10_000, 10)?, 1.0);
        assert_eq!(at(10_000, 11)?, 0.5);
        assert_eq!(at(10_000, 200)?, 0.25);
        assert_eq!(at(10_000, 201)?, 0.125);
        assert_eq!(at(10_000, 8001)?, 1.0 / 512.0);
        // 1,000 queries: ten times faster.
        assert_eq!(at(1_000, 1)?, 1.0);
        assert_eq!(at(1_000, 2)?, 0.5);
        assert_eq!(at(1_000, 999)?, 1.0 / 512.0);
        // Not rescaled (AutoAttack's standard version): the 10,000-query numbers at any budget.
        let fixed = |it| {
            Square::new(SquareConfig {
                rescale_schedule: false,
                ..SquareConfig::default()
            })
            .map(|s| s.p_selection(it) / 0.8)
        };
        assert_eq!(fixed(11)?, 0.5);
        assert_eq!(fixed(4001)?, 1.0 / 128.0);
        assert_eq!(fixed(4999)?, 1.0 / 128.0);
        Ok(())
    }

    #[test]
    fn draw_square_windows_at_their_corners() -> Result<()> {
        let m = window_mask(&[(0, 0), (2, 3)], 2, 5, 6, &Device::Cpu)?;
        let m = m.to_vec3::<f32>().ok();
        assert!(m.is_none(), "the mask is N × 1 × H × W");
        let m = window_mask(&[(0, 0), (2, 3)], 2, 5, 6, &Device::Cpu)?.squeeze(1)?;
        let m = m.to_vec3::<f32>()?;
        let ones = |img: &Vec<Vec<f32>>| -> Vec<(usize, usize)> {
            (0..5)
                .flat_map(|r| (0..6).map(move |c| (r, c)))
                .filter(|&(r, c)| img[r][c] == 1.0)
                .collect()
        };
        assert_eq!(ones(&m[0]), vec![(0, 0), (0, 1), (1, 0), (1, 1)]);
        assert_eq!(ones(&m[1]), vec![(2, 3), (2, 4), (3, 3), (3, 4)]);
        Ok(())
    }

    #[test]
    fn build_pseudo_gaussian_patterns_of_unit_norm_and_opposite_halves() {
        for s in [1, 3, 5, 25] {
            let eta = pseudo_gaussian(s);
            let norm: f32 = eta.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "s = {s}: norm {norm}");
            let (top, bottom) = eta.split_at((s / 2) * s);
            assert!(top.iter().all(|&v| v >= 0.0) && bottom.iter().all(|&v| v < 0.0));
        }
        // The nested rectangles peak in the centre: 1 + 1/4 + 1/9 there, 1/9 in the corner.
        let r = rectangles(5, 5);
        assert!((r[12] / r[0] - (1.0 + 0.25 + 1.0 / 9.0) * 9.0).abs() < 1e-4);
    }
}
