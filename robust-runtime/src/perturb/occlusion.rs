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

pub(super) fn occlusion_strategy(
    patch: usize,
    shape: ImageShape,
) -> crate::Result<PerturbationStrategy> {
    // A patch that does not fit would cover the whole image along one side: a different
    // perturbation than the one asked for, as salt-and-pepper rejects more pixels than there are.
    let fits = shape.height.min(shape.width);
    if patch > fits {
        return Err(crate::Error::param(
            "patch",
            patch,
            format!(
                "at most {fits}, the smaller side of the {}×{} images",
                shape.height, shape.width
            ),
        ));
    }
    let side = patch;
    // The corner is drawn so that the full-size patch lies inside the image, and stays put while
    // the side shrinks.
    Ok((
        Side(side as u32),
        (0..=(shape.height - side) as u32).no_shrink(),
        (0..=(shape.width - side) as u32).no_shrink(),
    )
        .prop_map(|(size, row, col)| Perturbation::Occlusion { row, col, size })
        .sboxed())
}

#[cfg(test)]
mod should {
    use super::*;

    #[test]
    fn reject_a_patch_larger_than_the_image() {
        let err = occlusion_strategy(29, ImageShape::new(1, 28, 28))
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            err,
            "invalid value for `patch`: 29; expected at most 28, the smaller side of the 28×28 images"
        );
        assert!(occlusion_strategy(28, ImageShape::new(1, 28, 28)).is_ok());
    }

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
