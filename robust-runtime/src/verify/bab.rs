//! Branch and bound over unstable ReLUs, with β-CROWN bounds on every branch and a PGD search
//! for a counterexample first.

use std::time::{Duration, Instant};

use super::bounds::{self, Net, Objective, Relax, Schedule};
use super::{Options, Verdict};
use crate::rng::Rng;
use crate::vnnlib::Property;

/// One disjunct of a property's violation, as lower-bound objectives: the disjunct is
/// impossible as soon as one of its rows is bounded above zero (row `i` is `−(c_i·y + k_i)`).
struct Goal {
    c: Vec<f64>,
    k: Vec<f64>,
    rows: usize,
}

impl Goal {
    /// The row whose objective is largest at outputs `y`: the constraint furthest from holding.
    fn worst_row(&self, y: &[f64]) -> usize {
        let o = y.len();
        (0..self.rows)
            .map(|q| {
                let c = &self.c[q * o..(q + 1) * o];
                (
                    q,
                    c.iter().zip(y).map(|(c, y)| c * y).sum::<f64>() + self.k[q],
                )
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(0, |(q, _)| q)
    }

    fn of(property: &Property) -> Vec<Goal> {
        (property.violation.iter())
            .map(|conj| Goal {
                c: conj
                    .iter()
                    .flat_map(|c| c.coefficients.iter().map(|v| -v))
                    .collect(),
                k: conj.iter().map(|c| -c.constant).collect(),
                rows: conj.len(),
            })
            .collect()
    }
}

/// A branch: the splits that define it, its relaxation's optimised slopes and multipliers
/// (per goal row, f32: any value in range is sound, these only warm-start the children), the
/// pre-activation bounds of each ReLU layer on its region (split sides applied; rounded
/// outwards to f32), the neuron to split next, and the goal it is bounded against (an index
/// into the search's goals).
struct Domain {
    goal: usize,
    splits: Vec<(u32, u32, bool)>,
    alpha: Vec<f32>,
    beta: Vec<f32>,
    lower: Vec<Vec<f32>>,
    upper: Vec<Vec<f32>>,
    next: (usize, usize),
    /// Its bound on the goal (the best row's; ≤ 0, or it would be closed).
    bound: f64,
}

/// `v` rounded down (`down`) or up to an f32 that bounds it on that side.
fn outward(v: &[f64], down: bool) -> Vec<f32> {
    v.iter()
        .map(|&x| {
            let r = x as f32;
            if down && f64::from(r) > x {
                r.next_down()
            } else if !down && f64::from(r) < x {
                r.next_up()
            } else {
                r
            }
        })
        .collect()
}

/// What one property's search found, before the counterexample is checked in f32.
pub(super) struct Search {
    pub verdict: Verdict,
    pub branches: usize,
    /// Each disjunct's α-CROWN bound at the root (the largest over its rows; > 0 proves it).
    pub root_bounds: Vec<f64>,
    pub stage: &'static str,
}

/// Runs the search: PGD, then α-CROWN at the root, then branch and bound per disjunct left.
pub(super) fn search(
    net: &Net,
    property: &Property,
    options: &Options,
    started: Instant,
) -> Search {
    let (lo, hi) = (&property.lower[..], &property.upper[..]);
    let goals = Goal::of(property);
    let mut rng = Rng::seed_from_u64(options.seed);
    let deadline = started + options.timeout;
    let out_of_time = || Instant::now() >= deadline;
    if let Some(x) = attack(net, property, &goals, options, &mut rng) {
        return Search {
            verdict: Verdict::Falsified(x),
            branches: 0,
            root_bounds: Vec::new(),
            stage: "attack",
        };
    }
    let schedule = Schedule {
        iterations: options.alpha_iterations,
        lr_alpha: options.lr_alpha,
        lr_beta: options.lr_beta,
        stop_above: None,
        deadline: Some(deadline),
    };
    let t0 = Instant::now();
    let (mut lower, mut upper) = bounds::layer_bounds(net, (lo, hi), schedule, 512);
    trace(|| {
        let unstable: Vec<usize> = (lower.iter().zip(&upper))
            .map(|(l, u)| {
                l.iter()
                    .zip(u)
                    .filter(|(l, u)| **l < 0.0 && **u > 0.0)
                    .count()
            })
            .collect();
        format!(
            "root layer bounds {:.2?}, unstable per layer {unstable:?}",
            t0.elapsed()
        )
    });
    let depth = net.layers.len();
    // α-CROWN on every goal's rows at once.
    let c: Vec<f64> = goals.iter().flat_map(|g| g.c.iter().copied()).collect();
    let k: Vec<f64> = goals.iter().flat_map(|g| g.k.iter().copied()).collect();
    let alpha_crown = |lower: &[Vec<f64>], upper: &[Vec<f64>]| {
        let mut relax = Relax::replicate(lower, upper, k.len());
        let pass = bounds::optimise(
            net,
            &Objective {
                depth,
                c: &c,
                k: &k,
            },
            &mut relax,
            (lo, hi),
            // All its steps, proved or not: the bounds are reported (certified margins), and
            // should be no looser than CROWN's.
            schedule,
        );
        (pass, relax)
    };
    let (mut root, mut relax) = alpha_crown(&lower, &upper);
    let unproved = |root: &bounds::Pass| {
        let mut row = 0;
        goals.iter().any(|g| {
            row += g.rows;
            root.bound[row - g.rows..row].iter().all(|&b| b <= 0.0)
        })
    };
    // Branches spent before the property's own branch and bound.
    let mut branches = 0;
    if options.stabilise > 0.0 && options.max_branches != Some(0) && unproved(&root) {
        let now = Instant::now();
        let until = now
            + deadline
                .saturating_duration_since(now)
                .mul_f64(options.stabilise);
        // Rounds while time is left, each neuron's branch cap four times the last's: a round
        // that finishes early leaves its share to searches deeper than its cap let it go.
        let mut cap = options.stabilise_branches;
        loop {
            let (proved, tightened) = stabilise(
                net,
                property,
                (&mut lower, &mut upper),
                options,
                schedule,
                (cap, until),
                &mut branches,
                &mut rng,
            );
            if tightened == 0 {
                break;
            }
            let (again, again_relax) = alpha_crown(&lower, &upper);
            trace(|| {
                format!(
                    "stabilised {proved:?} neurons ({tightened} tightened) at cap {cap} in {:.2?}, {branches} branches; α-CROWN rows {:.3?} → {:.3?}",
                    now.elapsed(),
                    &root.bound,
                    &again.bound
                )
            });
            // The tighter layer bounds' pass, its rows no looser than before.
            let mut again = again;
            for (b, &old) in again.bound.iter_mut().zip(&root.bound) {
                *b = b.max(old);
            }
            root = again;
            relax = again_relax;
            if !unproved(&root)
                || Instant::now() >= until
                || options.max_branches.is_some_and(|m| branches >= m)
            {
                break;
            }
            cap = cap.saturating_mul(4);
        }
    }
    // Never looser than CROWN (its own intermediate bounds and slopes: tighter intermediate
    // bounds can turn CROWN's adaptive slopes the wrong way) or than interval bounds.
    let (crown_lower, crown_upper) = bounds::layer_bounds(
        net,
        (lo, hi),
        Schedule {
            iterations: 0,
            ..schedule
        },
        512,
    );
    let crown = bounds::back_substitute(
        net,
        &Objective {
            depth,
            c: &c,
            k: &k,
        },
        &Relax::replicate(&crown_lower, &crown_upper, k.len()),
        (lo, hi),
    );
    let interval = bounds::interval_objective(net, &lower, &upper, &c, &k);
    for ((b, cr), i) in root.bound.iter_mut().zip(crown.bound).zip(interval) {
        *b = b.max(cr).max(i);
    }
    let mut root_bounds = Vec::with_capacity(goals.len());
    let mut open = Vec::new();
    let mut row = 0;
    for (g, goal) in goals.iter().enumerate() {
        let best = (row..row + goal.rows).max_by(|&a, &b| root.bound[a].total_cmp(&root.bound[b]));
        let bound = best.map_or(f64::NEG_INFINITY, |p| root.bound[p]);
        root_bounds.push(bound);
        if bound <= 0.0 {
            // Start this goal's search from its rows' optimised slopes.
            let alpha = (row..row + goal.rows)
                .flat_map(|p| slice_rows(&relax.alpha, p, relax.rows))
                .collect();
            let pick = best.and_then(|p| branch_candidates(&root, &relax, p, 1).first().copied());
            if pick.is_none() {
                // Nothing to split: the network is affine on the box and the bound is tight up
                // to the optimiser, so a counterexample lies near the bound's corner.
                let d0 = net.inputs();
                let corner = best.map(|p| root.corner[p * d0..(p + 1) * d0].to_vec());
                let found = corner.and_then(|x| descend(net, property, x, |_| goal, 200, 0.1));
                if let Some(x) = found {
                    return Search {
                        verdict: Verdict::Falsified(x),
                        branches,
                        root_bounds,
                        stage: "alpha-crown",
                    };
                }
            }
            open.push((g, alpha, pick));
        }
        row += goal.rows;
    }
    if open.is_empty() {
        // α-CROWN's proof, on layer bounds that branch and bound tightened where it ran.
        return Search {
            verdict: Verdict::Verified,
            branches,
            root_bounds,
            stage: if branches > 0 { "bab" } else { "alpha-crown" },
        };
    }
    trace(|| format!("α-CROWN bounds per disjunct {root_bounds:.4?}"));
    // The hardest goal first: if it cannot be proved, neither can the property.
    open.sort_by(|a, b| root_bounds[a.0].total_cmp(&root_bounds[b.0]));
    let mut proved;
    let mut exhausted = false;
    let mut spent = [Duration::ZERO; 3];
    let report = |spent: &[Duration; 3], branches: usize| {
        trace(|| {
            format!(
                "branch and bound: {branches} branches; refine {:.2?}, β-CROWN {:.2?}, branching {:.2?}",
                spent[0], spent[1], spent[2]
            )
        })
    };
    for (g, alpha, pick) in open {
        let Some(next) = pick else {
            exhausted = true;
            continue;
        };
        proved = 0.0;
        let mut stack = vec![Domain {
            goal: g,
            splits: Vec::new(),
            alpha,
            beta: Vec::new(),
            lower: lower.iter().map(|l| outward(l, true)).collect(),
            upper: upper.iter().map(|u| outward(u, false)).collect(),
            next,
            bound: root_bounds[g],
        }];
        while !stack.is_empty() {
            if out_of_time() || options.max_branches.is_some_and(|m| branches >= m) {
                trace(|| {
                    format!(
                        "goal {g}: {:.3e} of the space left, {} open, depth ≤ {}",
                        1.0 - proved,
                        stack.len(),
                        stack.iter().map(|d| d.splits.len()).max().unwrap_or(0)
                    )
                });
                report(&spent, branches);
                return Search {
                    verdict: Verdict::Unknown,
                    branches,
                    root_bounds,
                    stage: "bab",
                };
            }
            let take = stack.len().min(options.batch);
            let parents: Vec<Domain> = stack.split_off(stack.len() - take);
            let step = expand(net, property, true, &goals, parents, options, deadline);
            branches += step.children.len() + step.closed;
            proved += step.share;
            let xs: Vec<Vec<f64>> = step.candidates.into_iter().map(|(_, x)| x).collect();
            if let Some(x) = first_violation(net, property, &xs) {
                return Search {
                    verdict: Verdict::Falsified(x),
                    branches,
                    root_bounds,
                    stage: "bab",
                };
            }
            exhausted |= !step.exhausted.is_empty();
            for (total, t) in spent.iter_mut().zip(step.spent) {
                *total += t;
            }
            stack.extend(step.children);
        }
        trace(|| format!("goal {g}: closed at {branches} branches"));
    }
    report(&spent, branches);
    Search {
        verdict: if exhausted {
            Verdict::Unknown
        } else {
            Verdict::Verified
        },
        branches,
        root_bounds,
        stage: "bab",
    }
}

/// Prints `line()` to stderr when `ROBUST_VERIFY_TRACE` is set.
fn trace(line: impl FnOnce() -> String) {
    if std::env::var_os("ROBUST_VERIFY_TRACE").is_some() {
        eprintln!("{}", line());
    }
}

/// Row `p`'s slice of every layer's `rows × n` array.
fn slice_rows(v: &[Vec<f64>], p: usize, rows: usize) -> Vec<f32> {
    v.iter()
        .flat_map(|layer| {
            let n = layer.len() / rows;
            layer[p * n..(p + 1) * n].iter().map(|&a| a as f32)
        })
        .collect()
}

/// What splitting a batch of domains gave.
struct Expanded {
    children: Vec<Domain>,
    closed: usize,
    /// The share of the goal's input space the closed children cover, if the splits cut it in
    /// halves (`2^-depth` each): 1 once every branch is closed.
    share: f64,
    /// Inputs to check on the network, with their goal: for each child left open, the box
    /// corner its bound is attained at, and for a child with nothing left to split, PGD's best
    /// point from there.
    candidates: Vec<(usize, Vec<f64>)>,
    /// The goal and bound of each child left open with no unstable neuron left to split.
    exhausted: Vec<(usize, f64)>,
    /// Time in the children's refined layer bounds, their β-CROWN bounds and the branching
    /// choice.
    spent: [Duration; 3],
}

/// Splits each parent on its chosen neuron, bounds both children with β-CROWN (warm-started
/// from the parent) against the parent's goal (`goals[d.goal]`; every parent's goal has as
/// many rows) and keeps those the bound does not close, stopping its steps at `deadline`.
/// With `whole`, `net`'s outputs are `property`'s and PGD runs on a child with nothing left to
/// split; without, `property` is only the box.
fn expand(
    net: &Net,
    property: &Property,
    whole: bool,
    goals: &[Goal],
    parents: Vec<Domain>,
    options: &Options,
    deadline: Instant,
) -> Expanded {
    let (lo, hi) = (&property.lower[..], &property.upper[..]);
    let widths = net.widths();
    let children: Vec<Vec<(u32, u32, bool)>> = parents
        .iter()
        .flat_map(|d| {
            let (r, j) = d.next;
            [true, false].map(|side| {
                let mut s = d.splits.clone();
                s.push((r as u32, j as u32, side));
                s
            })
        })
        .collect();
    let per = goals[parents[0].goal].rows;
    let rows = children.len() * per;
    // Each child starts from its parent's bounds: its region is inside the parent's.
    let tile = |of: fn(&Domain) -> &Vec<Vec<f32>>| -> Vec<Vec<f64>> {
        (0..widths.len())
            .map(|r| {
                (0..rows)
                    .flat_map(|p| of(&parents[p / per / 2])[r].iter().map(|&v| f64::from(v)))
                    .collect()
            })
            .collect()
    };
    let mut relax = Relax::of(tile(|d| &d.lower), tile(|d| &d.upper), rows);
    for (ci, splits) in children.iter().enumerate() {
        let parent = &parents[ci / 2];
        for q in 0..per {
            let p = ci * per + q;
            // Slopes from the parent.
            let mut at = q * widths.iter().sum::<usize>();
            for (r, &n) in widths.iter().enumerate() {
                for j in 0..n {
                    relax.alpha[r][p * n + j] = f64::from(parent.alpha[at + j]);
                }
                at += n;
            }
            for (s, &(r, j, side)) in splits.iter().enumerate() {
                let (r, j) = (r as usize, j as usize);
                let k = p * widths[r] + j;
                if side {
                    relax.lower[r][k] = relax.lower[r][k].max(0.0);
                } else {
                    relax.upper[r][k] = relax.upper[r][k].min(0.0);
                }
                relax.split[r][k] = if side { 1 } else { -1 };
                relax.beta[r][k] = parent.beta.get(s * per + q).map_or(0.0, |&b| f64::from(b));
            }
        }
    }
    let clock = Instant::now();
    let infeasible = if options.refine {
        refine(net, (lo, hi), &mut relax, &children, per, deadline)
    } else {
        vec![false; children.len()]
    };
    let refined = clock.elapsed();
    let goal_of = |ci: usize| &goals[parents[ci / 2].goal];
    let c: Vec<f64> = (0..children.len())
        .flat_map(|ci| goal_of(ci).c.iter().copied())
        .collect();
    let k: Vec<f64> = (0..children.len())
        .flat_map(|ci| goal_of(ci).k.iter().copied())
        .collect();
    let obj = Objective {
        depth: net.layers.len(),
        c: &c,
        k: &k,
    };
    let schedule = Schedule {
        iterations: options.bab_iterations,
        lr_alpha: options.lr_alpha,
        lr_beta: options.lr_beta,
        stop_above: Some(0.0),
        deadline: Some(deadline),
    };
    let pass = bounds::optimise(net, &obj, &mut relax, (lo, hi), schedule);
    let mut out = Expanded {
        children: Vec::new(),
        closed: 0,
        share: 0.0,
        candidates: Vec::new(),
        exhausted: Vec::new(),
        spent: [refined, clock.elapsed() - refined, Duration::ZERO],
    };
    let d0 = net.inputs();
    let mut open = Vec::new();
    for (ci, splits) in children.into_iter().enumerate() {
        let best = (ci * per..(ci + 1) * per)
            .max_by(|&a, &b| pass.bound[a].total_cmp(&pass.bound[b]))
            .expect("a goal has rows");
        if pass.bound[best] > 0.0 || infeasible[ci] {
            out.closed += 1;
            out.share += 0.5f64.powi(splits.len() as i32);
            continue;
        }
        let g = parents[ci / 2].goal;
        let corner = pass.corner[best * d0..(best + 1) * d0].to_vec();
        let candidates = branch_candidates(&pass, &relax, best, options.candidates.max(1));
        if candidates.is_empty() {
            // Every neuron is fixed: the network is affine on this branch, and a bound that stays
            // at or below zero is the relaxation's, or a counterexample near its corner.
            if whole {
                let found = descend(net, property, corner.clone(), |_| &goals[g], 200, 0.1);
                out.candidates.extend(found.map(|x| (g, x)));
            }
            out.candidates.push((g, corner));
            out.exhausted.push((g, pass.bound[best]));
            continue;
        }
        out.candidates.push((g, corner));
        open.push((ci, splits, best, candidates));
    }
    let clock = Instant::now();
    let goal_of: Vec<&Goal> = open.iter().map(|o| goal_of(o.0)).collect();
    let choices = filtered_smart_branching(net, (lo, hi), &relax, &goal_of, &open);
    out.spent[2] = clock.elapsed();
    for ((ci, splits, best, _), next) in open.into_iter().zip(choices) {
        let alpha = (ci * per..(ci + 1) * per)
            .flat_map(|p| slice_rows(&relax.alpha, p, rows))
            .collect();
        let widths = &widths;
        let beta = splits
            .iter()
            .flat_map(|&(r, j, _)| {
                let (r, j) = (r as usize, j as usize);
                (ci * per..(ci + 1) * per).map(move |p| (r, p * widths[r] + j))
            })
            .map(|(r, k)| relax.beta[r][k] as f32)
            .collect();
        let p = ci * per;
        let row = |v: &[Vec<f64>], down: bool| -> Vec<Vec<f32>> {
            (v.iter().zip(widths.iter()))
                .map(|(layer, &n)| outward(&layer[p * n..(p + 1) * n], down))
                .collect()
        };
        out.children.push(Domain {
            goal: parents[ci / 2].goal,
            splits,
            alpha,
            beta,
            lower: row(&relax.lower, true),
            upper: row(&relax.upper, false),
            next,
            bound: pass.bound[best],
        });
    }
    out
}

/// Tightens each child's bounds on the neurons left unstable in the layers after its newest
/// split (the earlier splits' effect is in the bounds it inherited), layer by layer, by CROWN
/// on the child's own relaxation (a split neuron's side narrows every later layer's bounds).
/// Returns whether each child's region is empty: a neuron's bounds crossed by more than
/// rounding. Stops at `deadline`, the bounds not yet refined left as inherited.
fn refine(
    net: &Net,
    (lo, hi): (&[f64], &[f64]),
    relax: &mut Relax,
    children: &[Vec<(u32, u32, bool)>],
    per: usize,
    deadline: Instant,
) -> Vec<bool> {
    let widths = net.widths();
    let mut empty = vec![false; children.len()];
    for m in 1..widths.len() {
        let n = widths[m];
        // (child, neuron) pairs to bound at layer m.
        let mut todo = Vec::new();
        for (ci, splits) in children.iter().enumerate() {
            let newest = splits.last().map_or(usize::MAX, |s| s.0 as usize);
            if newest >= m {
                continue;
            }
            let p = ci * per;
            for j in 0..n {
                let k = p * n + j;
                if relax.lower[m][k] < 0.0 && relax.upper[m][k] > 0.0 {
                    todo.push((ci, j));
                }
            }
        }
        for part in todo.chunks(REFINE_ROWS / 2) {
            if Instant::now() >= deadline {
                return empty;
            }
            let rows = 2 * part.len();
            let mut sub = Relax {
                rows,
                lower: Vec::with_capacity(m),
                upper: Vec::with_capacity(m),
                alpha: Vec::with_capacity(m),
                beta: Vec::with_capacity(m),
                split: Vec::with_capacity(m),
            };
            for r in 0..m {
                let w = widths[r];
                let pick = |v: &Vec<f64>| -> Vec<f64> {
                    (0..rows)
                        .flat_map(|q| {
                            let p = part[q / 2].0 * per;
                            v[p * w..(p + 1) * w].iter().copied()
                        })
                        .collect()
                };
                let (l, u) = (pick(&relax.lower[r]), pick(&relax.upper[r]));
                sub.alpha.push(
                    (l.iter().zip(&u))
                        .map(|(&l, &u)| bounds::adaptive(l, u))
                        .collect(),
                );
                sub.beta.push(vec![0.0; rows * w]);
                sub.split.push(vec![0; rows * w]);
                sub.lower.push(l);
                sub.upper.push(u);
            }
            let mut c = vec![0.0; rows * n];
            for (q, &(_, j)) in part.iter().enumerate() {
                c[2 * q * n + j] = 1.0;
                c[(2 * q + 1) * n + j] = -1.0;
            }
            let k = vec![0.0; rows];
            let pass = bounds::back_substitute(
                net,
                &Objective {
                    depth: m + 1,
                    c: &c,
                    k: &k,
                },
                &sub,
                (lo, hi),
            );
            for (q, &(ci, j)) in part.iter().enumerate() {
                let (lb, ub) = (pass.bound[2 * q], -pass.bound[2 * q + 1]);
                for p in ci * per..(ci + 1) * per {
                    let k = p * n + j;
                    let l = relax.lower[m][k].max(lb);
                    let u = relax.upper[m][k].min(ub);
                    if l > u + 1e-6 * (1.0 + l.abs().max(u.abs())) {
                        empty[ci] = true;
                    }
                    relax.lower[m][k] = l;
                    relax.upper[m][k] = u;
                    if !(l < 0.0 && u > 0.0) {
                        relax.alpha[m][k] = bounds::adaptive(l, u);
                    }
                }
            }
        }
    }
    empty
}

/// Rows per product in [`refine`].
const REFINE_ROWS: usize = 2048;

/// The `k` unstable, unsplit neurons of row `p` of a pass most worth splitting, best first, by
/// BaBSR's estimate (Bunel et al. 2020) of what the bound loses to their relaxation: the upper
/// chord's intercept weighted by the coefficient on it, the interval width weighted by the
/// coefficient breaking ties. Empty when every neuron is stable or split.
fn branch_candidates(
    pass: &bounds::Pass,
    relax: &Relax,
    p: usize,
    k: usize,
) -> Vec<(usize, usize)> {
    let mut scored = Vec::new();
    for (r, gamma) in pass.gamma.iter().enumerate() {
        let n = gamma.len() / relax.rows;
        for j in 0..n {
            let at = p * n + j;
            let (l, u) = (relax.lower[r][at], relax.upper[r][at]);
            if !(l < 0.0 && u > 0.0) || relax.split[r][at] != 0 {
                continue;
            }
            let g = gamma[at];
            let intercept = -u * l / (u - l);
            let score = (-g).max(0.0) * intercept + 1e-4 * g.abs() * (u - l);
            scored.push(((r, j), score));
        }
    }
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    scored.truncate(k);
    scored.into_iter().map(|(at, _)| at).collect()
}

/// Filtered smart branching (De Palma et al. 2021): of each domain's candidates, the one whose
/// worse child has the best bound, each child bounded by one back-substitution on the
/// domain's relaxation (row `best` of `relax`) with the candidate split, against the domain's
/// goal (`goals[d]`).
fn filtered_smart_branching(
    net: &Net,
    (lo, hi): (&[f64], &[f64]),
    relax: &Relax,
    goals: &[&Goal],
    open: &[(usize, Vec<(u32, u32, bool)>, usize, Vec<(usize, usize)>)],
) -> Vec<(usize, usize)> {
    let mut choice: Vec<(usize, usize)> = open.iter().map(|o| o.3[0]).collect();
    let trials: Vec<(usize, usize, usize, bool)> = (open.iter().enumerate())
        .filter(|(_, o)| o.3.len() > 1)
        .flat_map(|(d, o)| {
            (o.3.iter()).flat_map(move |&(r, j)| [true, false].map(|side| (d, r, j, side)))
        })
        .collect();
    let outputs = net.outputs();
    let mut scores = vec![f64::INFINITY; trials.len()];
    for (part_at, part) in trials.chunks(FSB_ROWS).enumerate() {
        let rows: Vec<usize> = part.iter().map(|t| open[t.0].2).collect();
        let mut sub = relax.select(&rows);
        let mut c = Vec::with_capacity(part.len() * outputs);
        let mut k = Vec::with_capacity(part.len());
        for (q, &(d, r, j, side)) in part.iter().enumerate() {
            let n = sub.lower[r].len() / sub.rows;
            let at = q * n + j;
            if side {
                sub.lower[r][at] = 0.0;
            } else {
                sub.upper[r][at] = 0.0;
            }
            let goal = goals[d];
            let row = open[d].2 % goal.rows;
            c.extend_from_slice(&goal.c[row * outputs..(row + 1) * outputs]);
            k.push(goal.k[row]);
        }
        let obj = Objective {
            depth: net.layers.len(),
            c: &c,
            k: &k,
        };
        let pass = bounds::back_substitute(net, &obj, &sub, (lo, hi));
        scores[part_at * FSB_ROWS..][..part.len()].copy_from_slice(&pass.bound);
    }
    // Per domain: the candidate maximising the smaller of its two children's bounds.
    let mut best = vec![f64::NEG_INFINITY; open.len()];
    for (t, pair) in trials.chunks(2).zip(scores.chunks(2)) {
        let (d, r, j, _) = t[0];
        let worse = pair[0].min(pair[1]);
        if worse > best[d] {
            best[d] = worse;
            choice[d] = (r, j);
        }
    }
    choice
}

/// Rows per back-substitution in [`filtered_smart_branching`].
const FSB_ROWS: usize = 2048;

/// The first of `xs` that violates the property on the f64 network: in the box, and some
/// disjunct's constraints all hold at its output.
fn first_violation(net: &Net, property: &Property, xs: &[Vec<f64>]) -> Option<Vec<f64>> {
    if xs.is_empty() {
        return None;
    }
    let flat: Vec<f64> = xs.iter().flatten().copied().collect();
    let y = net.forward(&flat, xs.len()).pop().unwrap_or_default();
    let o = net.outputs();
    (xs.iter().enumerate())
        .find(|(i, x)| property.contains(x) && property.violated(&y[i * o..(i + 1) * o]))
        .map(|(_, x)| x.clone())
}

/// PGD on each disjunct: `options.restarts` random starts in the box, then [`descend`] from
/// each, a step from a quarter of the box's width down. Returns an input that violates the
/// property.
fn attack(
    net: &Net,
    property: &Property,
    goals: &[Goal],
    options: &Options,
    rng: &mut Rng,
) -> Option<Vec<f64>> {
    let (lo, hi) = (&property.lower, &property.upper);
    let n = goals.len() * options.restarts;
    let starts: Vec<f64> = (0..n)
        .flat_map(|_| lo.iter().zip(hi.iter()))
        .map(|(&l, &h)| if h > l { rng.uniform(l, h) } else { l })
        .collect();
    descend(
        net,
        property,
        starts,
        |i| &goals[i / options.restarts],
        options.steps,
        0.25,
    )
}

/// Signed-gradient descent from each start (`n × d_0`, in the box) on its goal's least
/// satisfied row (the violation constraint furthest from holding), `steps` steps from `first`
/// of the box's width decaying linearly, kept in the box. Returns the first point found to
/// violate the property on the network, checked before each step and at the end.
fn descend<'g>(
    net: &Net,
    property: &Property,
    mut x: Vec<f64>,
    goal_of: impl Fn(usize) -> &'g Goal,
    steps: usize,
    first: f64,
) -> Option<Vec<f64>> {
    let (lo, hi) = (&property.lower, &property.upper);
    let (d0, outputs) = (net.inputs(), net.outputs());
    let n = x.len() / d0.max(1);
    if n == 0 {
        return None;
    }
    for t in 0..=steps {
        let z = net.forward(&x, n);
        let y = z.last().expect("a layer");
        if let Some(i) = (0..n).find(|&i| property.violated(&y[i * outputs..(i + 1) * outputs])) {
            return Some(x[i * d0..(i + 1) * d0].to_vec());
        }
        if t == steps {
            break;
        }
        let mut rows = vec![0.0; n * outputs];
        for i in 0..n {
            let goal = goal_of(i);
            let worst = goal.worst_row(&y[i * outputs..(i + 1) * outputs]);
            rows[i * outputs..(i + 1) * outputs]
                .copy_from_slice(&goal.c[worst * outputs..(worst + 1) * outputs]);
        }
        let g = net.input_gradient(&z, &rows, n);
        let frac = first * (1.0 - t as f64 / steps as f64) + first / 25.0;
        for (k, x) in x.iter_mut().enumerate() {
            let j = k % d0;
            *x = (*x - frac * (hi[j] - lo[j]) * g[k].signum()).clamp(lo[j], hi[j]);
        }
    }
    None
}

/// The least value of `σ·z_j` PGD reaches over the box, for each `(j, σ)` of `targets`, on
/// the output `z` of `net` (signed-gradient descent from one random start each).
fn reach(
    net: &Net,
    property: &Property,
    targets: &[(usize, f64)],
    steps: usize,
    rng: &mut Rng,
) -> Vec<f64> {
    let (lo, hi) = (&property.lower, &property.upper);
    let (d0, n, rows) = (net.inputs(), net.outputs(), targets.len());
    let mut x: Vec<f64> = (0..rows)
        .flat_map(|_| lo.iter().zip(hi.iter()))
        .map(|(&l, &h)| if h > l { rng.uniform(l, h) } else { l })
        .collect();
    let mut least = vec![f64::INFINITY; rows];
    for t in 0..=steps {
        let z = net.forward(&x, rows);
        let y = z.last().expect("a layer");
        let mut seed = vec![0.0; rows * n];
        for (q, &(j, s)) in targets.iter().enumerate() {
            least[q] = least[q].min(s * y[q * n + j]);
            seed[q * n + j] = s;
        }
        if t == steps {
            break;
        }
        let g = net.input_gradient(&z, &seed, rows);
        let frac = 0.25 * (1.0 - t as f64 / steps as f64) + 0.01;
        for (k, x) in x.iter_mut().enumerate() {
            let j = k % d0;
            *x = (*x - frac * (hi[j] - lo[j]) * g[k].signum()).clamp(lo[j], hi[j]);
        }
    }
    least
}

/// Tightens the root's layer bounds without a MIP solver: an unstable neuron whose one side
/// PGD never reaches is proved stable by branch and bound over the layers before it (goal
/// `σ·z_j > 0`, β-CROWN on each branch, at most `cap` branches per neuron), layer by layer,
/// each layer's later bounds recomputed by α-CROWN from the tightened ones. A neuron whose
/// search stops short has its side's bound raised to the least over the search's open
/// leaves. Stops at `until`, the time shared out evenly over the layers left, or once
/// `branches` (those bounded so far, added to) reaches `options.max_branches`. Returns the
/// neurons proved stable per layer and the number of bounds tightened.
#[allow(clippy::too_many_arguments)]
fn stabilise(
    net: &Net,
    property: &Property,
    (lower, upper): (&mut Vec<Vec<f64>>, &mut Vec<Vec<f64>>),
    options: &Options,
    schedule: Schedule,
    (cap, until): (usize, Instant),
    branches: &mut usize,
    rng: &mut Rng,
) -> (Vec<usize>, usize) {
    let (lo, hi) = (&property.lower[..], &property.upper[..]);
    let widths = net.widths();
    let mut stabilised = vec![0; widths.len()];
    let mut all_tightened = 0;
    for m in 1..widths.len() {
        let now = Instant::now();
        if now >= until {
            break;
        }
        let layer_until = now + (until - now) / (widths.len() - m) as u32;
        let n = widths[m];
        let sub = net.truncated(m + 1);
        let both: Vec<(usize, f64)> = (0..n)
            .filter(|&j| lower[m][j] < 0.0 && upper[m][j] > 0.0)
            .flat_map(|j| [(j, 1.0), (j, -1.0)])
            .collect();
        if both.is_empty() {
            continue;
        }
        // Only a side PGD never reaches can be proved.
        let least = reach(&sub, property, &both, 50, rng);
        let targets: Vec<(usize, f64)> = (both.iter().zip(&least))
            .filter(|(_, &v)| v > 0.0)
            .map(|(&t, _)| t)
            .collect();
        if targets.is_empty() {
            continue;
        }
        let goals: Vec<Goal> = (targets.iter())
            .map(|&(j, s)| {
                let mut c = vec![0.0; n];
                c[j] = s;
                Goal {
                    c,
                    k: vec![0.0],
                    rows: 1,
                }
            })
            .collect();
        let c: Vec<f64> = goals.iter().flat_map(|g| g.c.iter().copied()).collect();
        let k = vec![0.0; goals.len()];
        let mut relax = Relax::replicate(&lower[..m], &upper[..m], goals.len());
        let root = bounds::optimise(
            &sub,
            &Objective {
                depth: m + 1,
                c: &c,
                k: &k,
            },
            &mut relax,
            (lo, hi),
            Schedule {
                deadline: Some(layer_until),
                ..schedule
            },
        );
        let mut open = vec![0usize; goals.len()];
        let mut failed = vec![false; goals.len()];
        let mut spent = vec![0usize; goals.len()];
        // The least bound over each search's leaves set aside unexpanded: a lower bound on
        // σ·z_j over the box (every other leaf is closed, its bound above zero).
        let mut floor = vec![f64::INFINITY; goals.len()];
        let mut stack = Vec::new();
        for t in 0..goals.len() {
            if root.bound[t] > 0.0 {
                continue;
            }
            let Some(next) = branch_candidates(&root, &relax, t, 1).first().copied() else {
                failed[t] = true;
                floor[t] = root.bound[t];
                continue;
            };
            open[t] = 1;
            stack.push(Domain {
                goal: t,
                splits: Vec::new(),
                alpha: slice_rows(&relax.alpha, t, relax.rows),
                beta: Vec::new(),
                lower: lower[..m].iter().map(|l| outward(l, true)).collect(),
                upper: upper[..m].iter().map(|u| outward(u, false)).collect(),
                next,
                bound: root.bound[t],
            });
        }
        // Keeps the domains whose search goes on, each other one a leaf of its goal's search.
        let set_aside = |domains: &mut Vec<Domain>, failed: &[bool], floor: &mut [f64]| {
            domains.retain(|d| {
                if failed[d.goal] {
                    floor[d.goal] = floor[d.goal].min(d.bound);
                }
                !failed[d.goal]
            })
        };
        while !stack.is_empty() {
            if Instant::now() >= layer_until || options.max_branches.is_some_and(|m| *branches >= m)
            {
                // What the cut left open is not proved.
                for d in &stack {
                    failed[d.goal] = true;
                }
                set_aside(&mut stack, &failed, &mut floor);
                break;
            }
            let take = stack.len().min(options.batch);
            let mut parents = stack.split_off(stack.len() - take);
            for d in &parents {
                open[d.goal] -= 1;
                spent[d.goal] += 2;
                if spent[d.goal] > cap {
                    failed[d.goal] = true;
                }
            }
            set_aside(&mut parents, &failed, &mut floor);
            if parents.is_empty() {
                continue;
            }
            let step = expand(&sub, property, false, &goals, parents, options, layer_until);
            *branches += step.children.len() + step.closed;
            for (g, bound) in step.exhausted {
                failed[g] = true;
                floor[g] = floor[g].min(bound);
            }
            // A corner where the side is reached ends its neuron's search.
            let xs: Vec<f64> = step
                .candidates
                .iter()
                .flat_map(|(_, x)| x.clone())
                .collect();
            let z = sub.forward(&xs, step.candidates.len());
            let y = z.last().expect("a layer");
            for (q, (g, _)) in step.candidates.iter().enumerate() {
                let (j, s) = targets[*g];
                if s * y[q * n + j] <= 0.0 {
                    failed[*g] = true;
                }
            }
            let mut children = step.children;
            for child in &children {
                open[child.goal] += 1;
            }
            set_aside(&mut children, &failed, &mut floor);
            stack.extend(children);
            set_aside(&mut stack, &failed, &mut floor);
        }
        // A neuron whose branches all closed is proved stable; any other one's bound is
        // tightened to its leaves' least.
        let (mut proved, mut tightened) = (0, 0);
        for (t, &(j, s)) in targets.iter().enumerate() {
            let least = if failed[t] || open[t] > 0 {
                floor[t]
            } else {
                proved += 1;
                0.0
            };
            if !least.is_finite() {
                continue;
            }
            let at = if s > 0.0 {
                &mut lower[m][j]
            } else {
                &mut upper[m][j]
            };
            if least > s * *at {
                *at = s * least;
                tightened += 1;
            }
        }
        stabilised[m] = proved;
        all_tightened += tightened;
        trace(|| {
            format!(
                "stabilise layer {m}: {} unstable, {} sides PGD never reaches, {proved} proved, {tightened} tightened, {} branches, {:.2?}",
                both.len() / 2,
                targets.len(),
                spent.iter().sum::<usize>(),
                now.elapsed()
            )
        });
        if tightened > 0 && m + 1 < widths.len() {
            // The later layers again, from the tightened ones; each keeps its tighter side.
            let (old_lower, old_upper) = (lower.split_off(m + 1), upper.split_off(m + 1));
            bounds::extend_layer_bounds(
                net,
                (lo, hi),
                Schedule {
                    deadline: Some(until),
                    ..schedule
                },
                512,
                lower,
                upper,
            );
            for (r, (ol, ou)) in old_lower.iter().zip(&old_upper).enumerate() {
                let r = m + 1 + r;
                for (v, &o) in lower[r].iter_mut().zip(ol) {
                    *v = v.max(o);
                }
                for (v, &o) in upper[r].iter_mut().zip(ou) {
                    *v = v.min(o);
                }
            }
        }
    }
    (stabilised, all_tightened)
}

#[cfg(test)]
mod should {
    use super::{stabilise, Options, Property, Rng, Schedule};
    use crate::verify::bounds::layer_bounds;
    use crate::verify::bounds::should::net;

    #[test]
    fn prove_neurons_stable_only_where_no_sample_crosses_zero() {
        check_stabilised(Options::default().stabilise_branches);
    }

    /// Searches cut at two branches per neuron prove few, and the others' bounds are raised
    /// to their leaves' least: still enclosing every sample.
    #[test]
    fn tighten_unproved_neurons_to_their_leaves_least_bound() {
        check_stabilised(2);
    }

    /// Stabilises a 6→24³→5 network's layer bounds at `cap` branches per neuron, and checks
    /// them against 20,000 samples.
    fn check_stabilised(cap: usize) {
        let mut rng = Rng::seed_from_u64(5);
        let net = net(&mut rng, &[6, 24, 24, 24, 5]);
        let centre: Vec<f64> = (0..6).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let property = Property {
            lower: centre.iter().map(|c| c - 0.5).collect(),
            upper: centre.iter().map(|c| c + 0.5).collect(),
            outputs: 5,
            violation: Vec::new(),
        };
        let (lo, hi) = (&property.lower[..], &property.upper[..]);
        let schedule = Schedule {
            iterations: 20,
            lr_alpha: 0.1,
            lr_beta: 0.05,
            stop_above: None,
            deadline: None,
        };
        let (before_lower, before_upper) = layer_bounds(&net, (lo, hi), schedule, 64);
        let (mut lower, mut upper) = (before_lower.clone(), before_upper.clone());
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut branches = 0;
        let (proved, tightened) = stabilise(
            &net,
            &property,
            (&mut lower, &mut upper),
            &Options::default(),
            schedule,
            (cap, until),
            &mut branches,
            &mut rng,
        );
        // Not vacuous: neurons of both searched layers proved, by branching, or with few
        // branches, more tightened than proved.
        if cap > 2 {
            assert!(proved[1] > 0 && proved[2] > 0, "{proved:?}");
        } else {
            assert!(
                tightened > proved.iter().sum::<usize>(),
                "{tightened}, {proved:?}"
            );
        }
        assert!(branches > 0);
        // Never looser.
        for r in 0..3 {
            for j in 0..24 {
                assert!(lower[r][j] >= before_lower[r][j] && upper[r][j] <= before_upper[r][j]);
            }
        }
        // Every sampled pre-activation (the box's corners among them) within the bounds.
        let n = 20_000;
        let x: Vec<f64> = (0..n * 6)
            .map(|i| {
                let (l, h) = (lo[i % 6], hi[i % 6]);
                if (i / 6) % 4 == 0 {
                    if rng.uniform(0.0, 1.0) < 0.5 {
                        l
                    } else {
                        h
                    }
                } else {
                    rng.uniform(l, h)
                }
            })
            .collect();
        let z = net.forward(&x, n);
        for r in 0..3 {
            for (i, &v) in z[r].iter().enumerate() {
                let j = i % 24;
                assert!(
                    v >= lower[r][j] - 1e-9 && v <= upper[r][j] + 1e-9,
                    "layer {r} neuron {j}: {v} outside [{}, {}]",
                    lower[r][j],
                    upper[r][j]
                );
            }
        }
    }
}
