//! Additive noise (L∞ ball, L2 sphere, Gaussian) and salt-and-pepper pixels.
//!
//! Noise is drawn from the perturbation's own seed with the run's ChaCha8 generator, so shrinking
//! scales one fixed pattern down instead of drawing a new one at each step: the boundary it finds
//! is that of the direction that failed.

use proptest::prelude::*;
use proptest::strategy::{NewTree, ValueTree};
use proptest::test_runner::TestRunner;

use super::shrink::{Subset, TowardZero};
use super::{ImageShape, Perturbation, PerturbationStrategy, Pixel};
use crate::model::InputDomain;
use crate::rng::Rng;
use crate::Result;

pub(super) fn linf(x: &mut [f32], eps: f32, noise: u64) {
    let mut rng = Rng::seed_from_u64(noise);
    for v in x.iter_mut() {
        *v += eps * rng.uniform(-1.0, 1.0) as f32;
    }
}

pub(super) fn l2(x: &mut [f32], eps: f32, noise: u64) {
    let g = Rng::seed_from_u64(noise).normal_vec(x.len());
    let norm = g.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
    if norm > 0.0 {
        let scale = eps as f64 / norm;
        for (v, g) in x.iter_mut().zip(g) {
            *v += (scale * g as f64) as f32;
        }
    }
}

pub(super) fn gaussian(x: &mut [f32], sigma: f32, noise: u64) {
    let mut rng = Rng::seed_from_u64(noise);
    for v in x.iter_mut() {
        *v += sigma * rng.normal() as f32;
    }
}

pub(super) fn salt_pepper(x: &mut [f32], pixels: &[Pixel], shape: ImageShape, domain: InputDomain) {
    for p in pixels {
        let (row, col) = (p.row as usize, p.col as usize);
        if row >= shape.height || col >= shape.width {
            continue;
        }
        let value = if p.salt { domain.hi() } else { domain.lo() };
        for c in 0..shape.channels {
            x[(c * shape.height + row) * shape.width + col] = value;
        }
    }
}

fn scaled(eps: f32, make: fn(f32, u64) -> Perturbation) -> PerturbationStrategy {
    (TowardZero { lo: eps, hi: eps }, any::<u64>().no_shrink())
        .prop_map(move |(eps, noise)| make(eps, noise))
        .sboxed()
}

pub(super) fn linf_strategy(eps: f32) -> PerturbationStrategy {
    scaled(eps, |eps, noise| Perturbation::Linf { eps, noise })
}

pub(super) fn l2_strategy(eps: f32) -> PerturbationStrategy {
    scaled(eps, |eps, noise| Perturbation::L2 { eps, noise })
}

pub(super) fn gaussian_strategy(sigma: f32) -> PerturbationStrategy {
    scaled(sigma, |sigma, noise| Perturbation::Gaussian {
        sigma,
        noise,
    })
}

/// `count` distinct pixels, each black or white with equal odds.
#[derive(Debug, Clone, Copy)]
struct Pixels {
    count: usize,
    shape: ImageShape,
}

impl Strategy for Pixels {
    type Tree = Subset<Pixel>;
    type Value = Vec<Pixel>;

    fn new_tree(&self, runner: &mut TestRunner) -> NewTree<Self> {
        let area = self.shape.pixels();
        let mut chosen: Vec<usize> = Vec::with_capacity(self.count);
        let mut pixels = Vec::with_capacity(self.count);
        while pixels.len() < self.count {
            let index = (0..area).new_tree(runner)?.current();
            if chosen.contains(&index) {
                continue;
            }
            chosen.push(index);
            pixels.push(Pixel {
                row: (index / self.shape.width) as u32,
                col: (index % self.shape.width) as u32,
                salt: any::<bool>().new_tree(runner)?.current(),
            });
        }
        Ok(Subset::new(pixels))
    }
}

pub(super) fn salt_pepper_strategy(
    count: usize,
    shape: ImageShape,
) -> Result<PerturbationStrategy> {
    if count > shape.pixels() {
        return Err(crate::Error::param(
            "pixels",
            count,
            format!("at most the {} pixels of the image", shape.pixels()),
        ));
    }
    Ok(Pixels { count, shape }
        .prop_map(|pixels| Perturbation::SaltPepper { pixels })
        .sboxed())
}
