//! The value trees our strategies shrink with.
//!
//! proptest shrinks a failing value by alternating `simplify` (after a failure: try something
//! simpler) and `complicate` (after a pass: back off toward the last failure). Two shapes cover
//! every perturbation here:
//!
//! - [`Magnitude`]: a real parameter (angle, brightness, ε, σ) bisected between the largest
//!   magnitude known to pass and the smallest known to fail, keeping its sign, until the two are
//!   within 0.1 % of the start. proptest's own float tree (1.x) tries 0 and otherwise keeps the
//!   value it started from, which would report a 15° rotation when 3.2° already flips the
//!   prediction; minimal flips are the point of this module, so we bisect.
//! - [`Subset`]: a list of parts (salt-and-pepper pixels) shrunk by dropping one part at a time,
//!   keeping each drop that still fails.
//!
//! Both restore the last failing value when they can shrink no further, so that a tuple or a
//! `Vec` of trees goes on to shrink its next member instead of stopping on a passing value.

use proptest::strategy::{NewTree, Strategy, ValueTree};
use proptest::test_runner::TestRunner;

/// Bisection stops when the bracket is narrower than this share of the start magnitude.
const RELATIVE_TOLERANCE: f32 = 1e-3;

/// A real parameter shrinking toward 0 by bisection on its magnitude.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Magnitude {
    sign: f32,
    /// Largest magnitude known to pass (0 before anything was tried: the identity).
    pass: f32,
    /// Smallest magnitude known to fail.
    fail: f32,
    curr: f32,
    tolerance: f32,
    tried_zero: bool,
}

impl Magnitude {
    pub(crate) fn new(start: f32) -> Self {
        let magnitude = start.abs();
        Magnitude {
            sign: if start < 0.0 { -1.0 } else { 1.0 },
            pass: 0.0,
            fail: magnitude,
            curr: magnitude,
            tolerance: magnitude * RELATIVE_TOLERANCE,
            tried_zero: false,
        }
    }

    fn converged(&self) -> bool {
        self.fail - self.pass <= self.tolerance
    }
}

impl ValueTree for Magnitude {
    type Value = f32;

    fn current(&self) -> f32 {
        // Never −0: the identity prints and compares as 0.
        if self.curr == 0.0 {
            0.0
        } else {
            self.sign * self.curr
        }
    }

    /// The current value failed: it becomes the failing bound, and we try halfway to the
    /// passing one (first 0 itself, which a composition may not need).
    fn simplify(&mut self) -> bool {
        self.fail = self.curr;
        if self.fail == 0.0 || self.converged() {
            return false;
        }
        if !self.tried_zero {
            self.tried_zero = true;
            self.curr = 0.0;
        } else {
            self.curr = self.pass + (self.fail - self.pass) / 2.0;
        }
        true
    }

    /// The current value passed: it becomes the passing bound, and we try halfway to the
    /// failing one, or the failing one itself once the bracket is tight.
    fn complicate(&mut self) -> bool {
        if self.curr >= self.fail {
            return false;
        }
        self.pass = self.curr;
        self.curr = if self.converged() {
            self.fail
        } else {
            self.pass + (self.fail - self.pass) / 2.0
        };
        true
    }
}

/// Draws uniformly in `[lo, hi]` (through proptest's own range sampling, so the draw comes from
/// the runner's RNG) and shrinks the draw toward 0 with [`Magnitude`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct TowardZero {
    pub lo: f32,
    pub hi: f32,
}

impl Strategy for TowardZero {
    type Tree = Magnitude;
    type Value = f32;

    fn new_tree(&self, runner: &mut TestRunner) -> NewTree<Self> {
        let start = if self.lo == self.hi {
            self.lo
        } else {
            (self.lo..=self.hi).new_tree(runner)?.current()
        };
        Ok(Magnitude::new(start))
    }
}

/// A list of parts shrinking by dropping parts, one at a time, in order.
#[derive(Debug, Clone)]
pub(crate) struct Subset<T> {
    parts: Vec<T>,
    included: Vec<bool>,
    /// The next part to try dropping.
    next: usize,
    /// The part dropped by the last `simplify`, until it is judged.
    dropped: Option<usize>,
}

impl<T: Clone + std::fmt::Debug> Subset<T> {
    pub(crate) fn new(parts: Vec<T>) -> Self {
        let included = vec![true; parts.len()];
        Subset {
            parts,
            included,
            next: 0,
            dropped: None,
        }
    }
}

impl<T: Clone + std::fmt::Debug> ValueTree for Subset<T> {
    type Value = Vec<T>;

    fn current(&self) -> Vec<T> {
        self.parts
            .iter()
            .zip(&self.included)
            .filter(|(_, &keep)| keep)
            .map(|(p, _)| p.clone())
            .collect()
    }

    fn simplify(&mut self) -> bool {
        // The last drop (if any) still failed: it stays dropped.
        self.dropped = None;
        while self.next < self.parts.len() {
            let i = self.next;
            self.next += 1;
            if self.included[i] {
                self.included[i] = false;
                self.dropped = Some(i);
                return true;
            }
        }
        false
    }

    fn complicate(&mut self) -> bool {
        match self.dropped.take() {
            Some(i) => {
                self.included[i] = true;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod should {
    use super::*;

    /// proptest's shrinking loop (`TestRunner::shrink`), returning the last failing value.
    pub(crate) fn shrink<V: ValueTree>(
        tree: &mut V,
        fails: impl Fn(&V::Value) -> bool,
    ) -> V::Value {
        let mut last = tree.current();
        assert!(fails(&last), "the start must fail");
        if tree.simplify() {
            for _ in 0..1000 {
                let value = tree.current();
                if fails(&value) {
                    last = value;
                    if !tree.simplify() {
                        break;
                    }
                } else if !tree.complicate() {
                    break;
                }
            }
        }
        last
    }

    #[test]
    fn bisect_a_magnitude_to_the_boundary_keeping_its_sign() {
        let found = shrink(&mut Magnitude::new(-15.0), |&v| v <= -3.2);
        assert!(found <= -3.2 && found > -3.2 - 15.0 * 1e-3, "{found}");
    }

    #[test]
    fn shrink_to_zero_when_zero_fails() {
        assert_eq!(shrink(&mut Magnitude::new(2.0), |_| true), 0.0);
    }

    #[test]
    fn keep_a_start_that_is_already_minimal() {
        assert_eq!(shrink(&mut Magnitude::new(1.0), |&v| v >= 1.0), 1.0);
    }

    #[test]
    fn shrink_each_member_of_a_tuple() {
        let mut tree =
            proptest::tuple::TupleValueTree::new((Magnitude::new(4.0), Magnitude::new(-4.0)));
        let (a, b) = shrink(&mut tree, |&(a, b)| a + b.abs() >= 3.0);
        // The first member goes to 0 (the second alone still fails), then the second to −3.
        assert_eq!(a, 0.0);
        assert!((-3.01..=-3.0).contains(&b), "{b}");
    }

    #[test]
    fn drop_every_part_that_is_not_needed() {
        let mut tree = Subset::new(vec![1, 2, 3, 4, 5, 6]);
        let kept = shrink(&mut tree, |v: &Vec<i32>| v.contains(&2) && v.contains(&5));
        assert_eq!(kept, vec![2, 5]);
    }
}
