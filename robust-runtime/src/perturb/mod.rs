//! Perturbations a model meets in production, as proptest strategies that shrink to the
//! smallest one that changes a prediction.
//!
//! Gradient attacks ask whether there is a worst case in an ε-ball; this module asks whether a
//! prediction survives noise, brightness and contrast changes, small shifts and rotations,
//! salt-and-pepper pixels and occlusion, and, when it does not, which is the *smallest* such
//! change that flips it. A [`Perturbation`] is a small value (its parameters) whose
//! [`apply`](Perturbation::apply) is deterministic and stays in the model's [`InputDomain`]; a
//! strategy generates perturbations and shrinks a failing one toward the identity (a smaller
//! angle, a smaller ε, fewer pixels, a smaller patch), so a failure shrinks to a minimal flip.
//!
//! | family | perturbation | shrinks toward |
//! |---|---|---|
//! | [`linf`] | `x + ε·u`, `u` uniform in `[−1, 1]ᵈ`: uniform in the L∞ ball | ε → 0 |
//! | [`l2`] | `x + ε·g/‖g‖`, `g` Gaussian: uniform on the L2 sphere, where nearly all of a high-dimensional ball is | ε → 0 |
//! | [`gaussian`] | `x + σ·g` | σ → 0 |
//! | [`salt_pepper`] | `k` pixels (all channels) set to the domain's top or bottom | fewer pixels |
//! | [`brightness`] | `x + b`, `b` uniform in `[−max, max]` | `b` → 0 |
//! | [`contrast`] | `m + c·(x − m)` around each channel's mean `m`, `c` in `[1 − max, 1 + max]` | `c` → 1 |
//! | [`shift`] | translation by `(dx, dy)` pixels, bilinear, each uniform in `[−max, max]` | both → 0 |
//! | [`rotation`] | rotation about the centre by up to `±max` degrees, bilinear | angle → 0 |
//! | [`occlusion`] | a `patch × patch` square at a random place, set to the domain's bottom | smaller patch |
//! | [`compose`] | the parts applied in order | each part |
//!
//! Every result is clamped into the input domain; pixels that geometric transforms bring in
//! from outside the image take the domain's bottom value (black for images in `[0, 1]`).
//! Noise is drawn from a seed carried by the perturbation, so a perturbation is a complete
//! description of what was done: apply it twice, get the same input twice.
//!
//! Use the strategies in a plain `proptest!` block, composed with your own:
//!
//! ```
//! use proptest::prelude::*;
//! use robust_runtime::perturb::{self, ImageShape};
//! use robust_runtime::InputDomain;
//!
//! let shape = ImageShape::new(1, 28, 28);
//! let image = vec![0.5f32; shape.len()];
//! let strategy = perturb::compose(vec![
//!     perturb::rotation(10.0).unwrap(),
//!     perturb::occlusion(4, shape).unwrap(),
//! ]);
//! proptest!(|(p in strategy, gain in 0.5f32..1.0)| {
//!     let out = p.apply(&image, shape, InputDomain::default()).unwrap();
//!     prop_assert!(out.iter().all(|v| (0.0..=1.0).contains(&(v * gain))));
//! });
//! ```
//!
//! [`eval::evaluate_invariance`](crate::eval::evaluate_invariance) runs a strategy over a data
//! set, many cases per sample in batched forward passes, and shrinks every failure;
//! `#[robustness_test(perturbation = "rotation", ...)]` makes it a test.

mod geometric;
mod noise;
mod occlusion;
mod photometric;
pub mod regressions;
mod shrink;

use std::fmt;

use proptest::strategy::{SBoxedStrategy, Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde::{Deserialize, Serialize};

use crate::model::InputDomain;
use crate::rng::Rng;
use crate::{Error, Result};

/// A strategy generating perturbations, shrinking toward the identity.
pub type PerturbationStrategy = SBoxedStrategy<Perturbation>;

/// The shape of one sample: `channels × height × width`. Non-image inputs of `d` features are
/// `1 × 1 × d`; only the noise and photometric families apply to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageShape {
    /// Channels.
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

impl ImageShape {
    /// `channels × height × width`.
    pub fn new(channels: usize, height: usize, width: usize) -> Self {
        ImageShape {
            channels,
            height,
            width,
        }
    }

    /// The shape of a sample from its dimensions (`[C, H, W]`, `[H, W]` or `[D]`).
    pub fn from_dims(dims: &[usize]) -> Result<Self> {
        let shape = match *dims {
            [c, h, w] => ImageShape::new(c, h, w),
            [h, w] => ImageShape::new(1, h, w),
            [d] => ImageShape::new(1, 1, d),
            _ => {
                return Err(Error::Data(format!(
                    "samples of shape {dims:?} cannot be perturbed; expected C × H × W, H × W or D"
                )))
            }
        };
        if shape.is_empty() {
            return Err(Error::Data(format!(
                "samples of shape {dims:?} are empty; expected at least one value"
            )));
        }
        Ok(shape)
    }

    /// Values in one sample.
    pub fn len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Always false for a shape built by [`ImageShape::from_dims`].
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pixels per channel.
    pub fn pixels(&self) -> usize {
        self.height * self.width
    }

    fn is_image(&self) -> bool {
        self.height >= 2 && self.width >= 2
    }
}

/// One salt-and-pepper pixel: every channel at `(row, col)` set to the domain's top (`salt`)
/// or bottom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pixel {
    /// Row.
    pub row: u32,
    /// Column.
    pub col: u32,
    /// Top of the domain (white) if true, bottom (black) otherwise.
    pub salt: bool,
}

/// One perturbation of a sample, by its parameters. See the [module](self) for what each does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Perturbation {
    /// `x + eps·u`, `u` uniform in `[−1, 1]ᵈ` drawn from `noise`.
    Linf {
        /// Radius.
        eps: f32,
        /// Seed of the direction.
        noise: u64,
    },
    /// `x + eps·g/‖g‖`, `g` standard normal drawn from `noise`.
    L2 {
        /// Radius.
        eps: f32,
        /// Seed of the direction.
        noise: u64,
    },
    /// `x + sigma·g`, `g` standard normal drawn from `noise`.
    Gaussian {
        /// Standard deviation.
        sigma: f32,
        /// Seed of the noise.
        noise: u64,
    },
    /// Pixels set to the top or bottom of the domain.
    SaltPepper {
        /// The pixels.
        pixels: Vec<Pixel>,
    },
    /// `x + delta`.
    Brightness {
        /// Added to every value.
        delta: f32,
    },
    /// `m + factor·(x − m)`, `m` the mean of each channel.
    Contrast {
        /// The contrast factor (1 is the identity).
        factor: f32,
    },
    /// Translation by `dx` columns (right) and `dy` rows (down), bilinear.
    Shift {
        /// Columns.
        dx: f32,
        /// Rows.
        dy: f32,
    },
    /// Rotation about the centre, counter-clockwise as displayed, bilinear.
    Rotation {
        /// The angle in degrees.
        degrees: f32,
    },
    /// A square set to the bottom of the domain.
    Occlusion {
        /// Top row.
        row: u32,
        /// Left column.
        col: u32,
        /// Side in pixels (0 is the identity).
        size: u32,
    },
    /// The parts applied in order.
    Compose(Vec<Perturbation>),
}

impl Perturbation {
    /// The perturbed sample: `x` (one sample of `shape`, flattened) perturbed and clamped into
    /// `domain`. Deterministic: the same perturbation gives the same values, bit for bit.
    pub fn apply(&self, x: &[f32], shape: ImageShape, domain: InputDomain) -> Result<Vec<f32>> {
        if x.len() != shape.len() {
            return Err(Error::Data(format!(
                "a sample of {} values cannot be perturbed as {}×{}×{}; expected {} values",
                x.len(),
                shape.channels,
                shape.height,
                shape.width,
                shape.len()
            )));
        }
        let mut out = x.to_vec();
        self.apply_in_place(&mut out, shape, domain);
        Ok(out)
    }

    fn apply_in_place(&self, x: &mut Vec<f32>, shape: ImageShape, domain: InputDomain) {
        match self {
            Perturbation::Linf { eps, noise } => noise::linf(x, *eps, *noise),
            Perturbation::L2 { eps, noise } => noise::l2(x, *eps, *noise),
            Perturbation::Gaussian { sigma, noise } => noise::gaussian(x, *sigma, *noise),
            Perturbation::SaltPepper { pixels } => noise::salt_pepper(x, pixels, shape, domain),
            Perturbation::Brightness { delta } => photometric::brightness(x, *delta),
            Perturbation::Contrast { factor } => photometric::contrast(x, *factor, shape),
            Perturbation::Shift { dx, dy } => *x = geometric::shift(x, *dx, *dy, shape, domain),
            Perturbation::Rotation { degrees } => {
                *x = geometric::rotate(x, *degrees, shape, domain)
            }
            Perturbation::Occlusion { row, col, size } => {
                occlusion::occlude(x, *row, *col, *size, shape, domain)
            }
            Perturbation::Compose(parts) => {
                for part in parts {
                    part.apply_in_place(x, shape, domain);
                }
            }
        }
        for v in x.iter_mut() {
            *v = v.clamp(domain.lo(), domain.hi());
        }
    }

    /// The size that shrinking makes small: ε, σ, the number of pixels, `|b|`, `|c − 1|`, the
    /// length of the shift in pixels, `|angle|` in degrees, the patch side; for a composition,
    /// the sum of its parts' sizes. 0 exactly for the identity.
    pub fn size(&self) -> f64 {
        match self {
            Perturbation::Linf { eps, .. } | Perturbation::L2 { eps, .. } => eps.abs() as f64,
            Perturbation::Gaussian { sigma, .. } => sigma.abs() as f64,
            Perturbation::SaltPepper { pixels } => pixels.len() as f64,
            Perturbation::Brightness { delta } => delta.abs() as f64,
            Perturbation::Contrast { factor } => (*factor as f64 - 1.0).abs(),
            Perturbation::Shift { dx, dy } => (*dx as f64).hypot(*dy as f64),
            Perturbation::Rotation { degrees } => degrees.abs() as f64,
            Perturbation::Occlusion { size, .. } => *size as f64,
            Perturbation::Compose(parts) => parts.iter().map(Perturbation::size).sum(),
        }
    }
}

impl fmt::Display for Perturbation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Perturbation::Linf { eps, noise } => {
                write!(
                    f,
                    "uniform L∞ noise of ε {eps:.4} (noise seed {noise:#018x})"
                )
            }
            Perturbation::L2 { eps, noise } => {
                write!(f, "L2 noise of norm {eps:.4} (noise seed {noise:#018x})")
            }
            Perturbation::Gaussian { sigma, noise } => {
                write!(
                    f,
                    "Gaussian noise of σ {sigma:.4} (noise seed {noise:#018x})"
                )
            }
            Perturbation::SaltPepper { pixels } => {
                let list: Vec<String> = pixels
                    .iter()
                    .map(|p| {
                        format!(
                            "({}, {}) {}",
                            p.row,
                            p.col,
                            if p.salt { "white" } else { "black" }
                        )
                    })
                    .collect();
                write!(
                    f,
                    "{} salt-and-pepper pixel{} at {}",
                    pixels.len(),
                    if pixels.len() == 1 { "" } else { "s" },
                    if list.is_empty() {
                        "none".to_string()
                    } else {
                        list.join(", ")
                    }
                )
            }
            Perturbation::Brightness { delta } => write!(f, "brightness {delta:+.4}"),
            Perturbation::Contrast { factor } => write!(f, "contrast ×{factor:.4}"),
            Perturbation::Shift { dx, dy } => {
                write!(f, "shift by {dx:+.3} px right, {dy:+.3} px down")
            }
            Perturbation::Rotation { degrees } => write!(f, "rotation by {degrees:+.3}°"),
            Perturbation::Occlusion { row, col, size } => {
                write!(f, "occlusion {size}×{size} at row {row}, column {col}")
            }
            Perturbation::Compose(parts) => {
                let parts: Vec<String> = parts.iter().map(ToString::to_string).collect();
                write!(f, "{}", parts.join(", then "))
            }
        }
    }
}

/// A family of perturbations, by the name the macro's `perturbation` key accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Family {
    /// `"linf"`: uniform in the L∞ ball of radius `eps`.
    Linf,
    /// `"l2"`: on the L2 sphere of radius `eps`.
    L2,
    /// `"gaussian"`: Gaussian noise of standard deviation `sigma`.
    Gaussian,
    /// `"salt_pepper"`: `pixels` pixels set to black or white.
    SaltPepper,
    /// `"brightness"`: `x + b`, `|b| ≤ max_brightness`.
    Brightness,
    /// `"contrast"`: contrast factor in `[1 − max_contrast, 1 + max_contrast]`.
    Contrast,
    /// `"shift"`: translation by up to `max_shift` pixels on each axis.
    Shift,
    /// `"rotation"`: rotation by up to `max_degrees`.
    Rotation,
    /// `"occlusion"`: a black `patch × patch` square.
    Occlusion,
}

impl Family {
    /// Every family, in the order of [`Family::NAMES`].
    pub const ALL: &'static [Family] = &[
        Family::Linf,
        Family::L2,
        Family::Gaussian,
        Family::SaltPepper,
        Family::Brightness,
        Family::Contrast,
        Family::Shift,
        Family::Rotation,
        Family::Occlusion,
    ];

    /// The names accepted by [`Family::from_name`], in the order of [`Family::ALL`] (the key
    /// table's list).
    pub const NAMES: &'static [&'static str] = robust_spec::names::PERTURBATIONS;

    /// The family of a name in [`Family::NAMES`].
    pub fn from_name(name: &str) -> Result<Self> {
        Self::NAMES
            .iter()
            .position(|&n| n == name)
            .map(|i| Self::ALL[i])
            .ok_or_else(|| Error::unknown("perturbation", name, Self::NAMES))
    }

    /// The short name.
    pub fn name(&self) -> &'static str {
        Self::NAMES[Self::ALL.iter().position(|f| f == self).unwrap_or(0)]
    }

    fn needs_image(&self) -> bool {
        matches!(
            self,
            Family::SaltPepper | Family::Shift | Family::Rotation | Family::Occlusion
        )
    }
}

/// The parameters of every family, each with its default; a family reads only its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerturbParams {
    /// `linf` and `l2`: radius (default 0.1 for `linf`, 1.0 for `l2`).
    pub eps: Option<f64>,
    /// `gaussian`: standard deviation (default 0.1).
    pub sigma: f64,
    /// `salt_pepper`: pixels set (default 10).
    pub pixels: usize,
    /// `brightness`: largest `|b|` (default 0.2).
    pub max_brightness: f64,
    /// `contrast`: largest `|c − 1|`, below 1 (default 0.2).
    pub max_contrast: f64,
    /// `shift`: largest shift on each axis, in pixels (default 2).
    pub max_shift: f64,
    /// `rotation`: largest angle in degrees, at most 180 (default 15).
    pub max_degrees: f64,
    /// `occlusion`: side of the square in pixels (default 6).
    pub patch: usize,
}

impl Default for PerturbParams {
    fn default() -> Self {
        PerturbParams {
            eps: None,
            sigma: 0.1,
            pixels: 10,
            max_brightness: 0.2,
            max_contrast: 0.2,
            max_shift: 2.0,
            max_degrees: 15.0,
            patch: 6,
        }
    }
}

impl PerturbParams {
    fn eps_for(&self, family: Family) -> f64 {
        self.eps
            .unwrap_or(if family == Family::L2 { 1.0 } else { 0.1 })
    }
}

/// The perturbations of one test: one family, or several composed (`"rotation+brightness"`).
#[derive(Debug, Clone, PartialEq)]
pub struct PerturbationConfig {
    families: Vec<Family>,
    params: PerturbParams,
}

impl PerturbationConfig {
    /// A configuration from its name (families joined by `+`) and parameters, checked.
    pub fn new(name: &str, params: PerturbParams) -> Result<Self> {
        let families = name
            .split('+')
            .map(|part| Family::from_name(part.trim()))
            .collect::<Result<Vec<_>>>()?;
        let config = PerturbationConfig { families, params };
        config.check()?;
        Ok(config)
    }

    /// Checks every parameter the families read (and only those).
    pub fn check(&self) -> Result<()> {
        for (i, family) in self.families.iter().enumerate() {
            if self.families[..i].contains(family) {
                return Err(Error::param(
                    "perturbation",
                    self.name(),
                    "each family at most once",
                ));
            }
            let p = &self.params;
            match family {
                Family::Linf | Family::L2 => positive("eps", p.eps_for(*family))?,
                Family::Gaussian => positive("sigma", p.sigma)?,
                Family::SaltPepper => crate::check::check_at_least_one("pixels", p.pixels)?,
                Family::Brightness => positive("max_brightness", p.max_brightness)?,
                Family::Contrast => {
                    if !(p.max_contrast > 0.0 && p.max_contrast < 1.0) {
                        return Err(Error::param(
                            "max_contrast",
                            p.max_contrast,
                            "a number in (0, 1), so that the contrast factor stays positive",
                        ));
                    }
                }
                Family::Shift => positive("max_shift", p.max_shift)?,
                Family::Rotation => {
                    if !(p.max_degrees > 0.0 && p.max_degrees <= 180.0) {
                        return Err(Error::param(
                            "max_degrees",
                            p.max_degrees,
                            "an angle in (0, 180]",
                        ));
                    }
                }
                Family::Occlusion => crate::check::check_at_least_one("patch", p.patch)?,
            }
        }
        Ok(())
    }

    /// The name, families joined by `+`.
    pub fn name(&self) -> String {
        let names: Vec<&str> = self.families.iter().map(Family::name).collect();
        names.join("+")
    }

    /// The families, in the order they are applied.
    pub fn families(&self) -> &[Family] {
        &self.families
    }

    /// The parameters.
    pub fn params(&self) -> &PerturbParams {
        &self.params
    }

    /// What is generated, in words: `rotation by up to ±15°`.
    pub fn describe(&self) -> String {
        let p = &self.params;
        let parts: Vec<String> = self
            .families
            .iter()
            .map(|family| match family {
                Family::Linf => format!("uniform L∞ noise of ε {}", p.eps_for(*family)),
                Family::L2 => format!("L2 noise of norm {}", p.eps_for(*family)),
                Family::Gaussian => format!("Gaussian noise of σ {}", p.sigma),
                Family::SaltPepper => format!("{} salt-and-pepper pixels", p.pixels),
                Family::Brightness => format!("brightness ±{}", p.max_brightness),
                Family::Contrast => format!(
                    "contrast ×[{}, {}]",
                    1.0 - p.max_contrast,
                    1.0 + p.max_contrast
                ),
                Family::Shift => format!("shift by up to ±{} px", p.max_shift),
                Family::Rotation => format!("rotation by up to ±{}°", p.max_degrees),
                Family::Occlusion => format!("{0}×{0} occlusion", p.patch),
            })
            .collect();
        parts.join(" + ")
    }

    /// The strategy for samples of `shape`.
    pub fn strategy(&self, shape: ImageShape) -> Result<PerturbationStrategy> {
        let mut parts = Vec::with_capacity(self.families.len());
        for &family in &self.families {
            if family.needs_image() && !shape.is_image() {
                return Err(Error::param(
                    "perturbation",
                    family.name(),
                    format!(
                        "a perturbation of images (C × H × W or H × W, at least 2 × 2); the \
                         samples are {}×{}×{}",
                        shape.channels, shape.height, shape.width
                    ),
                ));
            }
            let p = &self.params;
            parts.push(match family {
                Family::Linf => noise::linf_strategy(p.eps_for(family) as f32),
                Family::L2 => noise::l2_strategy(p.eps_for(family) as f32),
                Family::Gaussian => noise::gaussian_strategy(p.sigma as f32),
                Family::SaltPepper => noise::salt_pepper_strategy(p.pixels, shape)?,
                Family::Brightness => photometric::brightness_strategy(p.max_brightness as f32),
                Family::Contrast => photometric::contrast_strategy(p.max_contrast as f32),
                Family::Shift => geometric::shift_strategy(p.max_shift as f32),
                Family::Rotation => geometric::rotation_strategy(p.max_degrees as f32),
                Family::Occlusion => occlusion::occlusion_strategy(p.patch, shape)?,
            });
        }
        Ok(match parts.len() {
            1 => parts.remove(0),
            _ => compose(parts),
        })
    }
}

fn positive(name: &'static str, value: f64) -> Result<()> {
    crate::check::check_positive(name, value)
}

fn single(
    family: Family,
    params: PerturbParams,
    shape: ImageShape,
) -> Result<PerturbationStrategy> {
    let config = PerturbationConfig {
        families: vec![family],
        params,
    };
    config.check()?;
    config.strategy(shape)
}

/// Uniform in the L∞ ball of radius `eps`; shrinks ε toward 0 along the drawn direction.
pub fn linf(eps: f64) -> Result<PerturbationStrategy> {
    let params = PerturbParams {
        eps: Some(eps),
        ..PerturbParams::default()
    };
    single(Family::Linf, params, ImageShape::new(1, 1, 1))
}

/// On the L2 sphere of radius `eps`; shrinks the norm toward 0 along the drawn direction.
pub fn l2(eps: f64) -> Result<PerturbationStrategy> {
    let params = PerturbParams {
        eps: Some(eps),
        ..PerturbParams::default()
    };
    single(Family::L2, params, ImageShape::new(1, 1, 1))
}

/// Gaussian noise of standard deviation `sigma`; shrinks σ toward 0 keeping the noise pattern.
pub fn gaussian(sigma: f64) -> Result<PerturbationStrategy> {
    let params = PerturbParams {
        sigma,
        ..PerturbParams::default()
    };
    single(Family::Gaussian, params, ImageShape::new(1, 1, 1))
}

/// `pixels` distinct pixels of an image of `shape` set to black or white; shrinks by dropping
/// pixels.
pub fn salt_pepper(pixels: usize, shape: ImageShape) -> Result<PerturbationStrategy> {
    let params = PerturbParams {
        pixels,
        ..PerturbParams::default()
    };
    single(Family::SaltPepper, params, shape)
}

/// Brightness `x + b`, `b` uniform in `[−max, max]`; shrinks `b` toward 0.
pub fn brightness(max: f64) -> Result<PerturbationStrategy> {
    let params = PerturbParams {
        max_brightness: max,
        ..PerturbParams::default()
    };
    single(Family::Brightness, params, ImageShape::new(1, 1, 1))
}

/// Contrast factor uniform in `[1 − max, 1 + max]` (`max` in (0, 1)); shrinks it toward 1.
pub fn contrast(max: f64) -> Result<PerturbationStrategy> {
    let params = PerturbParams {
        max_contrast: max,
        ..PerturbParams::default()
    };
    single(Family::Contrast, params, ImageShape::new(1, 1, 1))
}

/// Translation by up to `max` pixels on each axis; shrinks each toward 0.
pub fn shift(max: f64) -> Result<PerturbationStrategy> {
    let params = PerturbParams {
        max_shift: max,
        ..PerturbParams::default()
    };
    single(Family::Shift, params, ImageShape::new(1, 2, 2))
}

/// Rotation by up to `max_degrees` either way; shrinks the angle toward 0.
pub fn rotation(max_degrees: f64) -> Result<PerturbationStrategy> {
    let params = PerturbParams {
        max_degrees,
        ..PerturbParams::default()
    };
    single(Family::Rotation, params, ImageShape::new(1, 2, 2))
}

/// A black `patch × patch` square anywhere in an image of `shape` (`patch` at most its smaller side);
/// shrinks the side toward 0, keeping the top-left corner.
pub fn occlusion(patch: usize, shape: ImageShape) -> Result<PerturbationStrategy> {
    let params = PerturbParams {
        patch,
        ..PerturbParams::default()
    };
    single(Family::Occlusion, params, shape)
}

/// The parts applied in order; each part shrinks on its own.
pub fn compose(parts: Vec<PerturbationStrategy>) -> PerturbationStrategy {
    parts.prop_map(Perturbation::Compose).sboxed()
}

/// The value tree that `seed` gives `strategy`: its `current()` is the perturbation generated,
/// and shrinking it replays the shrinking of a run. This is how a failure's seed replays it.
pub fn tree_from_seed(
    strategy: &PerturbationStrategy,
    seed: u64,
) -> Result<Box<dyn ValueTree<Value = Perturbation>>> {
    let mut expand = Rng::seed_from_u64(seed);
    let bytes: Vec<u8> = (0..4)
        .flat_map(|_| expand.next_u64().to_le_bytes())
        .collect();
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &bytes);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    strategy.new_tree(&mut runner).map_err(|reason| {
        Error::param(
            "perturbation",
            reason,
            "a strategy that can generate a value",
        )
    })
}

/// The seed of case `case` of sample `sample` in a run seeded with `run_seed`: independent of
/// how samples and cases are batched, so a run's outcome does not depend on its batch size.
pub fn case_seed(run_seed: u64, sample: usize, case: usize) -> u64 {
    splitmix(splitmix(splitmix(run_seed) ^ sample as u64) ^ case as u64)
}

/// SplitMix64's finaliser (Steele, Lea & Flood 2014): a bijection that scatters close inputs.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod should {
    use super::*;

    fn image(shape: ImageShape, seed: u64) -> Vec<f32> {
        Rng::seed_from_u64(seed).uniform_vec(shape.len(), 0.0, 1.0)
    }

    fn every_family(shape: ImageShape) -> Vec<PerturbationStrategy> {
        let params = PerturbParams {
            eps: Some(0.3),
            sigma: 0.5,
            max_brightness: 0.8,
            max_contrast: 0.9,
            max_shift: 5.0,
            max_degrees: 180.0,
            // 9, or the whole of the shorter side when that is smaller.
            patch: shape.height.min(shape.width).min(9),
            pixels: 30,
        };
        let mut all: Vec<PerturbationStrategy> = Family::ALL
            .iter()
            .map(|&f| single(f, params.clone(), shape).unwrap())
            .collect();
        all.push(
            PerturbationConfig::new("rotation+brightness+gaussian+occlusion", params)
                .unwrap()
                .strategy(shape)
                .unwrap(),
        );
        all
    }

    #[test]
    fn never_leave_the_domain_even_while_shrinking() {
        let shape = ImageShape::new(3, 9, 7);
        for domain in [InputDomain::default(), InputDomain::new(-1.0, 2.0).unwrap()] {
            let x: Vec<f32> = image(shape, 1)
                .iter()
                .map(|v| domain.lo() + v * (domain.hi() - domain.lo()))
                .collect();
            for (f, strategy) in every_family(shape).iter().enumerate() {
                for seed in 0..40 {
                    let mut tree = tree_from_seed(strategy, seed).unwrap();
                    // Walk the whole shrinking path, alternating as a run would.
                    for step in 0..60 {
                        let out = tree.current().apply(&x, shape, domain).unwrap();
                        assert!(
                            out.iter().all(|v| *v >= domain.lo() && *v <= domain.hi()),
                            "family {f}, seed {seed}, step {step}: {}",
                            tree.current()
                        );
                        let moved = if step % 3 == 0 {
                            tree.complicate()
                        } else {
                            tree.simplify()
                        };
                        if !moved && !tree.simplify() {
                            break;
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn apply_the_identity_exactly_at_size_zero() {
        let shape = ImageShape::new(2, 6, 5);
        let x = image(shape, 2);
        let identities = [
            Perturbation::Linf { eps: 0.0, noise: 3 },
            Perturbation::L2 { eps: 0.0, noise: 3 },
            Perturbation::Gaussian {
                sigma: 0.0,
                noise: 3,
            },
            Perturbation::SaltPepper { pixels: vec![] },
            Perturbation::Brightness { delta: 0.0 },
            Perturbation::Contrast { factor: 1.0 },
            Perturbation::Shift { dx: 0.0, dy: 0.0 },
            Perturbation::Rotation { degrees: 0.0 },
            Perturbation::Occlusion {
                row: 2,
                col: 1,
                size: 0,
            },
        ];
        for p in identities {
            assert_eq!(p.size(), 0.0, "{p}");
            let out = p.apply(&x, shape, InputDomain::default()).unwrap();
            // Contrast recomputes the values around their mean: equal to rounding.
            let exact = !matches!(p, Perturbation::Contrast { .. });
            for (a, b) in out.iter().zip(&x) {
                assert!(
                    if exact { a == b } else { (a - b).abs() < 1e-6 },
                    "{p}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn generate_the_same_perturbation_from_the_same_seed() {
        let shape = ImageShape::new(1, 12, 12);
        for strategy in every_family(shape) {
            let a = tree_from_seed(&strategy, 11).unwrap().current();
            let b = tree_from_seed(&strategy, 11).unwrap().current();
            let c = tree_from_seed(&strategy, 12).unwrap().current();
            assert_eq!(a, b);
            assert_ne!(a, c);
        }
    }

    #[test]
    fn stay_within_the_parameters() {
        let shape = ImageShape::new(1, 28, 28);
        let x = image(shape, 3);
        for seed in 0..50 {
            let rot = tree_from_seed(&rotation(15.0).unwrap(), seed)
                .unwrap()
                .current();
            assert!(rot.size() <= 15.0, "{rot}");
            let p = tree_from_seed(&linf(0.1).unwrap(), seed).unwrap().current();
            let out = p.apply(&x, shape, InputDomain::default()).unwrap();
            let worst = out
                .iter()
                .zip(&x)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(worst <= 0.1 + 1e-6, "{worst}");
            let p = tree_from_seed(&l2(1.0).unwrap(), seed).unwrap().current();
            let raw = p
                .apply(
                    &vec![0.5; shape.len()],
                    shape,
                    InputDomain::new(-9.0, 9.0).unwrap(),
                )
                .unwrap();
            let norm = raw
                .iter()
                .map(|v| ((v - 0.5) as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "{norm}");
            let p = tree_from_seed(&salt_pepper(10, shape).unwrap(), seed)
                .unwrap()
                .current();
            assert_eq!(p.size(), 10.0, "{p}");
        }
    }

    #[test]
    fn reject_parameters_out_of_range() {
        assert!(rotation(0.0).is_err());
        assert!(rotation(181.0).is_err());
        assert!(contrast(1.0).is_err());
        assert!(gaussian(f64::NAN).is_err());
        assert!(salt_pepper(0, ImageShape::new(1, 4, 4)).is_err());
        let err =
            PerturbationConfig::new("rotation+rotation", PerturbParams::default()).unwrap_err();
        assert!(
            err.to_string().contains("each family at most once"),
            "{err}"
        );
        let err = PerturbationConfig::new("rotaton", PerturbParams::default()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("unknown perturbation `rotaton`"),
            "{err}"
        );
    }

    #[test]
    fn refuse_geometric_perturbations_of_flat_inputs() {
        let config = PerturbationConfig::new("shift", PerturbParams::default()).unwrap();
        let err = config.strategy(ImageShape::new(1, 1, 784)).unwrap_err();
        assert!(
            err.to_string().contains("a perturbation of images"),
            "{err}"
        );
        let config = PerturbationConfig::new("gaussian", PerturbParams::default()).unwrap();
        assert!(config.strategy(ImageShape::new(1, 1, 784)).is_ok());
    }

    #[test]
    fn scatter_case_seeds() {
        let mut seeds: Vec<u64> = (0..50)
            .flat_map(|s| (0..50).map(move |c| case_seed(0, s, c)))
            .collect();
        seeds.sort_unstable();
        seeds.dedup();
        assert_eq!(seeds.len(), 2500);
        assert_ne!(case_seed(0, 1, 2), case_seed(1, 1, 2));
    }
}
