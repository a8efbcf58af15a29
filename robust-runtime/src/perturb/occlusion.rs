//! A square set to the bottom of the domain (black), as in occlusion-sensitivity studies
//! (Zeiler & Fergus 2014), at a random place.

use proptest::prelude::*;
use proptest::strategy::NewTree;
use proptest::test_runner::TestRunner;

use super::{ImageShape, Perturbation, PerturbationStrategy};
use crate::model::InputDomain;

pub(super) fn occlude(
    x: &mut [f32],
    row: u32,
    col: u32,
    size: u32,
    shape: ImageShape,
    domain: InputDomain,
) {
    let (h, w) = (shape.height, shape.width);
    let rows = (row as usize).min(h)..(row as usize + size as usize).min(h);
    let cols = (col as usize).min(w)..(col as usize + size as usize).min(w);
    for c in 0..shape.channels {
        for r in rows.clone() {
            let start = (c * h + r) * w;
            x[start + cols.start..start + cols.end].fill(domain.lo());
        }
    }
}

/// The side, starting at `patch` and bisected toward 0 by proptest's integer tree.
#[derive(Debug, Clone, Copy)]
struct Side(u32);

impl Strategy for Side {
    type Tree = proptest::num::u32::BinarySearch;
    type Value = u32;

    fn new_tree(&self, _: &mut TestRunner) -> NewTree<Self> {
        Ok(proptest::num::u32::BinarySearch::new(self.0))
    }
}

pub(super) fn occlusion_strategy(patch: usize, shape: ImageShape) -> PerturbationStrategy {
    let side = patch.min(shape.height).min(shape.width);
    // The corner is drawn so that the full-size patch lies inside the image, and stays put while
    // the side shrinks.
    (
        Side(side as u32),
        (0..=(shape.height - side) as u32).no_shrink(),
        (0..=(shape.width - side) as u32).no_shrink(),
    )
        .prop_map(|(size, row, col)| Perturbation::Occlusion { row, col, size })
        .sboxed()
}

#[cfg(test)]
mod should {
    use super::*;

    #[test]
    fn black_out_the_square_in_every_channel() {
        let shape = ImageShape::new(2, 4, 5);
        let mut x = vec![1.0f32; shape.len()];
        occlude(&mut x, 1, 3, 3, shape, InputDomain::default());
        let zeros: Vec<usize> = (0..x.len()).filter(|&i| x[i] == 0.0).collect();
        // Rows 1..4, columns 3..5 (clipped), in both channels.
        assert_eq!(zeros, vec![8, 9, 13, 14, 18, 19, 28, 29, 33, 34, 38, 39]);
    }
}
