//! Preprocessing defences: input transformations in front of a model, and the adaptive
//! (BPDA) twin every evaluation attacks through.
//!
//! - [`Preprocessor::MedianFilter`]: spatial smoothing (Xu et al. 2018, "Feature Squeezing"),
//!   a `k × k` median per channel with scipy's `reflect` border (`d c b a | a b c d | d c b a`),
//!   as ART's `SpatialSmoothing`.
//! - [`Preprocessor::BitDepth`]: feature squeezing by bit-depth reduction (Xu et al. 2018),
//!   `round(x · (2^b − 1)) / (2^b − 1)` on `[0, 1]` inputs.
//! - [`Preprocessor::GaussianBlur`]: a separable Gaussian kernel of standard deviation σ
//!   (radius ⌈3σ⌉, same `reflect` border), as a convolution, so it is differentiable.
//!
//! The median filter and the bit-depth reduction are computed on the host: their true gradient
//! is zero almost everywhere, and a plain gradient attack through them sees nothing, which is
//! exactly how such defences looked robust (Athalye et al. 2018, "Obfuscated Gradients Give a
//! False Sense of Security"). [`Preprocessed::bpda`] is the Backward Pass Differentiable
//! Approximation: the forward pass is unchanged and the backward pass treats the preprocessing
//! as the identity (`x + (g(x) − x).detach()`). [`crate::eval::evaluate`] runs every attack on
//! a [`Preprocessed`] model twice, plainly and through its BPDA twin, and counts a sample
//! robust only if both fail; the report shows both numbers.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Module, Tensor};

use crate::model::{Model, Twin};
use crate::{Error, Result, Rng};

/// One input transformation.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Preprocessor {
    /// Median over `kernel × kernel` windows (odd, ≥ 3), per channel.
    MedianFilter {
        /// Window side.
        kernel: usize,
    },
    /// Rounds `[0, 1]` inputs to `bits` bits (1 to 16).
    BitDepth {
        /// Bits kept.
        bits: u32,
    },
    /// Gaussian blur of standard deviation `sigma` pixels (> 0).
    GaussianBlur {
        /// Standard deviation, in pixels.
        sigma: f64,
    },
    /// Randomized: adds fresh `N(0, σ²)` noise to every input on every forward pass (a
    /// randomized defence; evaluated with EOT).
    GaussianNoise {
        /// Standard deviation, in input units.
        sigma: f64,
    },
}

/// Gradient draws EOT averages for a randomized defence (Athalye et al. 2018, §4.3).
pub const EOT_DRAWS: usize = 16;

impl Preprocessor {
    /// Rejects parameters no defence can use.
    pub fn check(&self) -> Result<()> {
        match *self {
            Preprocessor::MedianFilter { kernel } if kernel < 3 || kernel % 2 == 0 => Err(
                Error::param("kernel", kernel, "an odd window side ≥ 3 (3, 5, 7, …)"),
            ),
            Preprocessor::BitDepth { bits } if !(1..=16).contains(&bits) => {
                Err(Error::param("bits", bits, "a bit depth from 1 to 16"))
            }
            Preprocessor::GaussianBlur { sigma } => crate::check::check_positive_as(
                "sigma",
                sigma,
                "a finite standard deviation > 0, in pixels",
            ),
            Preprocessor::GaussianNoise { sigma } => crate::check::check_positive_as(
                "sigma",
                sigma,
                "a finite noise level > 0, in input units",
            ),
            _ => Ok(()),
        }
    }

    /// Whether candle can differentiate through it (the blur and the noise).
    pub fn is_differentiable(&self) -> bool {
        matches!(
            self,
            Preprocessor::GaussianBlur { .. } | Preprocessor::GaussianNoise { .. }
        )
    }

    /// Whether it is random (a new draw on every forward pass).
    pub fn is_randomized(&self) -> bool {
        matches!(self, Preprocessor::GaussianNoise { .. })
    }

    /// `name(parameter)`, for reports.
    pub fn describe(&self) -> String {
        match self {
            Preprocessor::MedianFilter { kernel } => format!("median filter {kernel}×{kernel}"),
            Preprocessor::BitDepth { bits } => format!("bit depth {bits}"),
            Preprocessor::GaussianBlur { sigma } => format!("Gaussian blur σ = {sigma}"),
            Preprocessor::GaussianNoise { sigma } => format!("Gaussian noise σ = {sigma}"),
        }
    }

    /// Applies it to a batch `N × C × H × W` (or `N × H × W`); random steps draw from `rng`.
    pub fn apply(&self, x: &Tensor, rng: &mut Rng) -> Result<Tensor> {
        self.check()?;
        if let Preprocessor::GaussianNoise { sigma } = *self {
            let noise = Tensor::from_vec(rng.normal_vec(x.elem_count()), x.shape(), x.device())?
                .to_dtype(x.dtype())?;
            return Ok((x + (noise * sigma)?)?);
        }
        let dims = x.dims().to_vec();
        let (n, c, h, w) = match dims.as_slice() {
            [n, c, h, w] => (*n, *c, *h, *w),
            [n, h, w] => (*n, 1, *h, *w),
            _ if matches!(self, Preprocessor::BitDepth { .. }) => {
                (dims[0], 1, 1, x.elem_count() / dims[0].max(1))
            }
            found => {
                return Err(Error::param(
                    "input",
                    format!("{found:?}"),
                    "images N × C × H × W or N × H × W for spatial preprocessing",
                ))
            }
        };
        match *self {
            Preprocessor::GaussianNoise { .. } => unreachable!("handled above"),
            Preprocessor::BitDepth { bits } => {
                let levels = ((1u32 << bits) - 1) as f32;
                let values: Vec<f32> = x
                    .to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?
                    .into_iter()
                    // Ties round half to even, as numpy's `np.round` in ART's FeatureSqueezing.
                    .map(|v| (v * levels).round_ties_even() / levels)
                    .collect();
                Ok(Tensor::from_vec(values, dims, x.device())?.to_dtype(x.dtype())?)
            }
            Preprocessor::MedianFilter { kernel } => {
                let values = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let mut out = vec![0f32; values.len()];
                let r = (kernel / 2) as isize;
                let mut window = Vec::with_capacity(kernel * kernel);
                for plane in 0..n * c {
                    let src = &values[plane * h * w..(plane + 1) * h * w];
                    let dst = &mut out[plane * h * w..(plane + 1) * h * w];
                    for i in 0..h as isize {
                        for j in 0..w as isize {
                            window.clear();
                            for di in -r..=r {
                                for dj in -r..=r {
                                    let (y, x) = (reflect(i + di, h), reflect(j + dj, w));
                                    window.push(src[y * w + x]);
                                }
                            }
                            let mid = window.len() / 2;
                            let (_, m, _) = window.select_nth_unstable_by(mid, f32::total_cmp);
                            dst[i as usize * w + j as usize] = *m;
                        }
                    }
                }
                Ok(Tensor::from_vec(out, dims, x.device())?.to_dtype(x.dtype())?)
            }
            Preprocessor::GaussianBlur { sigma } => {
                let radius = (3.0 * sigma).ceil() as usize;
                let taps: Vec<f32> = (0..=2 * radius)
                    .map(|i| {
                        let d = i as f64 - radius as f64;
                        (-d * d / (2.0 * sigma * sigma)).exp() as f32
                    })
                    .collect();
                let total: f32 = taps.iter().sum();
                let taps: Vec<f32> = taps.iter().map(|t| t / total).collect();
                let len = taps.len();
                // Reflect-pad with gathers (differentiable), then one depthwise pass per axis.
                let x4 = x.reshape((n * c, 1, h, w))?;
                let rows: Vec<u32> = (-(radius as isize)..(h + radius) as isize)
                    .map(|i| reflect(i, h) as u32)
                    .collect();
                let cols: Vec<u32> = (-(radius as isize)..(w + radius) as isize)
                    .map(|j| reflect(j, w) as u32)
                    .collect();
                let rows = Tensor::from_vec(rows, h + 2 * radius, x.device())?;
                let cols = Tensor::from_vec(cols, w + 2 * radius, x.device())?;
                let padded = x4.index_select(&rows, 2)?.index_select(&cols, 3)?;
                let kv = Tensor::from_vec(taps.clone(), (1, 1, len, 1), x.device())?
                    .to_dtype(x.dtype())?;
                let kh = Tensor::from_vec(taps, (1, 1, 1, len), x.device())?.to_dtype(x.dtype())?;
                let blurred = padded.conv2d(&kv, 0, 1, 1, 1)?.conv2d(&kh, 0, 1, 1, 1)?;
                Ok(blurred.reshape(dims)?)
            }
        }
    }
}

/// scipy's `reflect` border: `d c b a | a b c d | d c b a`.
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    if n == 1 {
        return 0;
    }
    let period = 2 * n;
    let m = i.rem_euclid(period);
    (if m < n { m } else { period - 1 - m }) as usize
}

/// A model behind preprocessing defences. `Model::from(preprocessed)` makes it the model under
/// test: evaluations then attack it plainly and through its BPDA/EOT twin
/// ([`Preprocessed::bpda`]). It is not a candle `Module` itself, so that it cannot be wrapped
/// by `Model::new` and attacked without the twin, which would overstate its robustness.
#[derive(Clone)]
pub struct Preprocessed {
    steps: Vec<Preprocessor>,
    model: Arc<Model>,
    straight_through: bool,
    eot: usize,
    /// The stream random steps draw from, shared with the adaptive twin so a run's draws
    /// follow one seeded sequence.
    rng: Arc<Mutex<Rng>>,
}

impl std::fmt::Debug for Preprocessed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preprocessed")
            .field("steps", &self.steps)
            .field("model", &self.model.name())
            .field("straight_through", &self.straight_through)
            .field("eot", &self.eot)
            .finish()
    }
}

impl Preprocessed {
    /// `model` behind `steps`, applied in order. Checks every step's parameters.
    pub fn new(steps: Vec<Preprocessor>, model: Model) -> Result<Self> {
        if steps.is_empty() {
            return Err(Error::param(
                "preprocessors",
                "none",
                "at least one preprocessing step",
            ));
        }
        for step in &steps {
            step.check()?;
        }
        Ok(Preprocessed {
            steps,
            model: Arc::new(model),
            straight_through: false,
            eot: 1,
            rng: Arc::new(Mutex::new(Rng::seed_from_u64(0))),
        })
    }

    /// Seeds the random steps (default 0).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = Arc::new(Mutex::new(Rng::seed_from_u64(seed)));
        self
    }

    /// The adaptive twin: the same forward pass, with the identity as the backward pass of every
    /// non-differentiable step (BPDA; differentiable steps keep their true gradient), and, when
    /// a step is random, gradients averaged over [`EOT_DRAWS`] draws (EOT).
    pub fn bpda(&self) -> Self {
        Preprocessed {
            straight_through: true,
            eot: if self.is_randomized() { EOT_DRAWS } else { 1 },
            ..self.clone()
        }
    }

    /// Whether this is the adaptive twin.
    pub fn is_bpda(&self) -> bool {
        self.straight_through
    }

    /// Whether some step blocks gradients (so a BPDA evaluation is needed).
    pub fn masks_gradients(&self) -> bool {
        self.steps.iter().any(|s| !s.is_differentiable())
    }

    /// Whether some step is random (so an EOT evaluation is needed).
    pub fn is_randomized(&self) -> bool {
        self.steps.iter().any(Preprocessor::is_randomized)
    }

    /// Gradient draws an attack should average over (1 unless this is the twin of a randomized
    /// defence).
    pub fn eot_draws(&self) -> usize {
        self.eot
    }

    /// How the twin's gradients are obtained, for reports.
    pub fn adaptive_method(&self) -> &'static str {
        match (self.masks_gradients(), self.is_randomized()) {
            (true, true) => "BPDA + EOT",
            (true, false) => "BPDA (straight-through)",
            (false, true) => "EOT",
            (false, false) => "exact gradients",
        }
    }

    /// The steps, in order.
    pub fn steps(&self) -> &[Preprocessor] {
        &self.steps
    }

    /// `median filter 3×3 → bit depth 4`.
    pub fn describe(&self) -> String {
        let steps: Vec<String> = self.steps.iter().map(Preprocessor::describe).collect();
        steps.join(" → ")
    }

    fn preprocess(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = x.clone();
        for step in &self.steps {
            let next = {
                let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
                step.apply(&y, &mut rng)?
            };
            y = if self.straight_through && !step.is_differentiable() {
                // Forward: next. Backward: identity.
                (&y + (next - &y)?.detach())?
            } else {
                next
            };
        }
        Ok(y)
    }
}

/// The forward pass of a [`Preprocessed`] model: its steps, then its model's logits.
struct Forward(Preprocessed);

impl Module for Forward {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.0.preprocess(x).map_err(candle_core::Error::wrap)?;
        self.0.model.logits(&y).map_err(candle_core::Error::wrap)
    }
}

impl From<Preprocessed> for Model {
    /// The defended model under test. Preprocessing that blocks gradients or is random gets its
    /// BPDA/EOT twin, which evaluations attack besides the plain model.
    fn from(p: Preprocessed) -> Model {
        let adaptive = !p.is_bpda() && (p.masks_gradients() || p.is_randomized());
        let twin = adaptive.then(|| {
            let twin = p.bpda();
            Twin {
                method: twin.adaptive_method(),
                eot: twin.eot_draws(),
                module: Arc::new(Forward(twin)),
            }
        });
        let eot = p.eot_draws();
        Model::new(Forward(p)).defended(twin, eot)
    }
}

#[cfg(test)]
mod should {
    use super::*;
    use candle_core::{Device, Var};

    fn image(values: &[f32], h: usize, w: usize) -> Tensor {
        Tensor::from_slice(values, (1, 1, h, w), &Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn median_filter_like_scipy_with_reflected_borders() {
        // scipy.ndimage.median_filter(np.arange(16.).reshape(4, 4), size=3, mode="reflect")
        let x = image(&(0..16).map(|v| v as f32).collect::<Vec<_>>(), 4, 4);
        let y = Preprocessor::MedianFilter { kernel: 3 }
            .apply(&x, &mut Rng::seed_from_u64(0))
            .unwrap();
        assert_eq!(
            values(&y),
            [1., 2., 3., 3., 4., 5., 6., 7., 8., 9., 10., 11., 12., 12., 13., 14.]
        );
        // A lone bright pixel disappears.
        let mut spike = vec![0.0f32; 25];
        spike[12] = 1.0;
        let y = Preprocessor::MedianFilter { kernel: 3 }
            .apply(&image(&spike, 5, 5), &mut Rng::seed_from_u64(0))
            .unwrap();
        assert!(values(&y).iter().all(|&v| v == 0.0));
    }

    #[test]
    fn bit_depth_rounds_to_the_levels_half_to_even() {
        let x = image(&[0.0, 0.1, 0.5, 0.74, 0.76, 1.0], 2, 3);
        let y = Preprocessor::BitDepth { bits: 1 }
            .apply(&x, &mut Rng::seed_from_u64(0))
            .unwrap();
        assert_eq!(values(&y), [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
        let y = Preprocessor::BitDepth { bits: 2 }
            .apply(&x, &mut Rng::seed_from_u64(0))
            .unwrap();
        assert_eq!(values(&y), [0.0, 0.0, 2.0 / 3.0, 2.0 / 3.0, 2.0 / 3.0, 1.0]);
    }

    #[test]
    fn gaussian_blur_keeps_constants_and_spreads_a_spike_symmetrically() {
        let flat = image(&[0.5; 25], 5, 5);
        let y = Preprocessor::GaussianBlur { sigma: 1.0 }
            .apply(&flat, &mut Rng::seed_from_u64(0))
            .unwrap();
        assert!(values(&y).iter().all(|v| (v - 0.5).abs() < 1e-6));
        let mut spike = vec![0.0f32; 49];
        spike[24] = 1.0;
        let y = values(
            &Preprocessor::GaussianBlur { sigma: 1.0 }
                .apply(&image(&spike, 7, 7), &mut Rng::seed_from_u64(0))
                .unwrap(),
        );
        // Separable weights: centre g(0)², neighbour g(0)·g(1), with g normalised over ±3.
        let g: Vec<f64> = (-3..=3)
            .map(|d: i32| (-(d * d) as f64 / 2.0).exp())
            .collect();
        let s: f64 = g.iter().sum();
        assert!((y[24] as f64 - (g[3] / s).powi(2)).abs() < 1e-6);
        assert!((y[23] as f64 - g[3] * g[2] / (s * s)).abs() < 1e-6);
        assert_eq!(y[23], y[25]);
        assert_eq!(y[17], y[31]);
    }

    #[test]
    fn reflect_like_scipy() {
        let idx: Vec<usize> = (-3..7).map(|i| reflect(i, 4)).collect();
        assert_eq!(idx, [2, 1, 0, 0, 1, 2, 3, 3, 2, 1]);
    }

    #[test]
    fn bpda_keeps_the_forward_pass_and_passes_gradients_straight_through() {
        let w = Tensor::ones((1, 1, 2, 2), DType::F32, &Device::Cpu).unwrap();
        let sum = candle_nn::Linear::new(w.reshape((1, 4)).unwrap(), None);
        let net = Model::new(FlattenThen(sum));
        let defended = Preprocessed::new(vec![Preprocessor::BitDepth { bits: 1 }], net).unwrap();
        let x = Var::from_tensor(&image(&[0.2, 0.4, 0.6, 0.8], 2, 2)).unwrap();
        let plain = Forward(defended.clone()).forward(x.as_tensor()).unwrap();
        let twin = Forward(defended.bpda()).forward(x.as_tensor()).unwrap();
        assert_eq!(values(&plain), [2.0]);
        assert_eq!(values(&twin), [2.0]);
        // The plain forward pass is cut from x; the twin's gradient is the identity's.
        assert!(plain
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
            .get(x.as_tensor())
            .is_none());
        let g = twin.sum_all().unwrap().backward().unwrap();
        assert_eq!(values(g.get(x.as_tensor()).unwrap()), [1.0; 4]);
    }

    struct FlattenThen(candle_nn::Linear);
    impl Module for FlattenThen {
        fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
            self.0.forward(&x.flatten_from(1)?)
        }
    }

    #[test]
    fn reject_bad_parameters() {
        for (p, msg) in [
            (
                Preprocessor::MedianFilter { kernel: 4 },
                "odd window side ≥ 3",
            ),
            (
                Preprocessor::MedianFilter { kernel: 1 },
                "odd window side ≥ 3",
            ),
            (Preprocessor::BitDepth { bits: 0 }, "bit depth from 1 to 16"),
            (
                Preprocessor::BitDepth { bits: 17 },
                "bit depth from 1 to 16",
            ),
            (
                Preprocessor::GaussianBlur { sigma: 0.0 },
                "standard deviation > 0",
            ),
            (
                Preprocessor::GaussianBlur { sigma: f64::NAN },
                "standard deviation > 0",
            ),
        ] {
            let e = p.check().unwrap_err().to_string();
            assert!(e.contains(msg), "{e}");
        }
        let net = Model::new(FlattenThen(candle_nn::Linear::new(
            Tensor::ones((1, 4), DType::F32, &Device::Cpu).unwrap(),
            None,
        )));
        assert!(Preprocessed::new(vec![], net).is_err());
    }
}
