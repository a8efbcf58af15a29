//! Brightness and contrast.

use proptest::prelude::*;

use super::shrink::TowardZero;
use super::{ImageShape, Perturbation, PerturbationStrategy};

pub(super) fn brightness(x: &mut [f32], delta: f32) {
    for v in x.iter_mut() {
        *v += delta;
    }
}

/// `m + factor·(x − m)` with `m` the mean of each channel, so a uniform image is left alone.
pub(super) fn contrast(x: &mut [f32], factor: f32, shape: ImageShape) {
    let per_channel = shape.pixels();
    for channel in x.chunks_mut(per_channel) {
        let mean = (channel.iter().map(|&v| v as f64).sum::<f64>() / per_channel as f64) as f32;
        for v in channel.iter_mut() {
            *v = mean + factor * (*v - mean);
        }
    }
}

pub(super) fn brightness_strategy(max: f32) -> PerturbationStrategy {
    TowardZero { lo: -max, hi: max }
        .prop_map(|delta| Perturbation::Brightness { delta })
        .sboxed()
}

pub(super) fn contrast_strategy(max: f32) -> PerturbationStrategy {
    TowardZero { lo: -max, hi: max }
        .prop_map(|t| Perturbation::Contrast { factor: 1.0 + t })
        .sboxed()
}
