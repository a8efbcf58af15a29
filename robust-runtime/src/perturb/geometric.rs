//! Translations and rotations of images, by inverse mapping with bilinear interpolation.
//!
//! Each output pixel reads the input at the point that the transform sends onto it, weighting
//! its four neighbours bilinearly; neighbours outside the image count as the domain's bottom
//! value (black), as `torchvision`'s `affine` with `fill = 0` does. A zero shift or angle maps
//! every pixel onto itself with weight exactly 1, so the identity is exact.

use proptest::prelude::*;

use super::shrink::TowardZero;
use super::{ImageShape, Perturbation, PerturbationStrategy};
use crate::model::InputDomain;

/// The image moved `dx` columns right and `dy` rows down.
pub(super) fn shift(
    x: &[f32],
    dx: f32,
    dy: f32,
    shape: ImageShape,
    domain: InputDomain,
) -> Vec<f32> {
    let (dx, dy) = (dx as f64, dy as f64);
    resample(x, shape, domain, |row, col| (row - dy, col - dx))
}

/// The image rotated by `degrees` about its centre, counter-clockwise as displayed (rows grow
/// downward).
pub(super) fn rotate(x: &[f32], degrees: f32, shape: ImageShape, domain: InputDomain) -> Vec<f32> {
    let (sin, cos) = (degrees as f64).to_radians().sin_cos();
    let cy = (shape.height as f64 - 1.0) / 2.0;
    let cx = (shape.width as f64 - 1.0) / 2.0;
    resample(x, shape, domain, |row, col| {
        let (dy, dx) = (row - cy, col - cx);
        (cy + dx * sin + dy * cos, cx + dx * cos - dy * sin)
    })
}

/// Output pixel `(row, col)` of each channel is the input sampled at `source(row, col)`.
fn resample(
    x: &[f32],
    shape: ImageShape,
    domain: InputDomain,
    source: impl Fn(f64, f64) -> (f64, f64),
) -> Vec<f32> {
    let (h, w) = (shape.height, shape.width);
    let fill = domain.lo();
    let mut out = vec![fill; x.len()];
    for row in 0..h {
        for col in 0..w {
            let (sy, sx) = source(row as f64, col as f64);
            let (y0, x0) = (sy.floor(), sx.floor());
            let (fy, fx) = ((sy - y0) as f32, (sx - x0) as f32);
            let (y0, x0) = (y0 as i64, x0 as i64);
            for c in 0..shape.channels {
                let plane = &x[c * h * w..(c + 1) * h * w];
                let at = |r: i64, q: i64| {
                    if r >= 0 && q >= 0 && (r as usize) < h && (q as usize) < w {
                        plane[r as usize * w + q as usize]
                    } else {
                        fill
                    }
                };
                let top = (1.0 - fx) * at(y0, x0) + fx * at(y0, x0 + 1);
                let bottom = (1.0 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1);
                out[c * h * w + row * w + col] = (1.0 - fy) * top + fy * bottom;
            }
        }
    }
    out
}

pub(super) fn shift_strategy(max: f32) -> PerturbationStrategy {
    (
        TowardZero { lo: -max, hi: max },
        TowardZero { lo: -max, hi: max },
    )
        .prop_map(|(dx, dy)| Perturbation::Shift { dx, dy })
        .sboxed()
}

pub(super) fn rotation_strategy(max_degrees: f32) -> PerturbationStrategy {
    TowardZero {
        lo: -max_degrees,
        hi: max_degrees,
    }
    .prop_map(|degrees| Perturbation::Rotation { degrees })
    .sboxed()
}

#[cfg(test)]
mod should {
    use super::*;

    fn domain() -> InputDomain {
        InputDomain::default()
    }

    #[test]
    fn shift_by_whole_pixels_exactly() {
        let shape = ImageShape::new(1, 3, 3);
        let x: Vec<f32> = (1..=9).map(|v| v as f32 / 10.0).collect();
        let out = shift(&x, 1.0, -1.0, shape, domain());
        // Content moves one column right and one row up; what comes in is black.
        assert_eq!(out, vec![0.0, 0.4, 0.5, 0.0, 0.7, 0.8, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn interpolate_half_pixel_shifts() {
        let shape = ImageShape::new(1, 2, 4);
        let x = vec![0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0];
        let out = shift(&x, 0.5, 0.0, shape, domain());
        assert_eq!(out, vec![0.0, 0.5, 0.5, 0.0, 0.0, 0.5, 0.5, 0.0]);
    }

    #[test]
    fn rotate_a_quarter_turn_counter_clockwise() {
        let shape = ImageShape::new(1, 3, 3);
        // A bar on the right edge ends up on the top edge.
        let x = vec![0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0];
        let out = rotate(&x, 90.0, shape, domain());
        let rounded: Vec<f32> = out.iter().map(|v| (v * 1e4).round() / 1e4).collect();
        assert_eq!(rounded, vec![1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn undo_a_rotation_with_the_opposite_one_inside_the_image() {
        let shape = ImageShape::new(1, 16, 16);
        let x: Vec<f32> = (0..256)
            .map(|i| {
                let (r, c) = ((i / 16) as f32, (i % 16) as f32);
                0.5 + 0.4 * ((r / 5.0).sin() * (c / 7.0).cos())
            })
            .collect();
        let back = rotate(&rotate(&x, 7.0, shape, domain()), -7.0, shape, domain());
        // Two bilinear interpolations of a smooth image: close in the middle.
        for r in 5..11 {
            for c in 5..11 {
                let (a, b) = (x[r * 16 + c], back[r * 16 + c]);
                assert!((a - b).abs() < 0.02, "({r}, {c}): {a} vs {b}");
            }
        }
    }
}
