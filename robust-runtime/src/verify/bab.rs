//! Branch and bound over unstable ReLUs, with β-CROWN bounds on every branch and a PGD search
//! for a counterexample first.

use std::time::Instant;

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
/// (per goal row, f32: any value in range is sound, these only warm-start the children), its
/// bound and the neuron to split next.
struct Domain {
    splits: Vec<(u32, u32, bool)>,
    alpha: Vec<f32>,
    beta: Vec<f32>,
    next: (usize, usize),
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
    let out_of_time = || started.elapsed() >= options.timeout;
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
    };
    let (lower, upper) = bounds::layer_bounds(net, (lo, hi), schedule, 512);
    let depth = net.layers.len();
    // α-CROWN on every goal's rows at once.
    let c: Vec<f64> = goals.iter().flat_map(|g| g.c.iter().copied()).collect();
    let k: Vec<f64> = goals.iter().flat_map(|g| g.k.iter().copied()).collect();
    let mut relax = Relax::replicate(&lower, &upper, k.len());
    let root = bounds::optimise(
        net,
        &Objective {
            depth,
            c: &c,
            k: &k,
        },
        &mut relax,
        (lo, hi),
        Schedule {
            stop_above: Some(0.0),
            ..schedule
        },
    );
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
            let pick = best.map(|p| branch_choice(&root, &relax, p, &[]));
            open.push((g, alpha, pick));
        }
        row += goal.rows;
    }
    if open.is_empty() {
        return Search {
            verdict: Verdict::Verified,
            branches: 0,
            root_bounds,
            stage: "alpha-crown",
        };
    }
    // The hardest goal first: if it cannot be proved, neither can the property.
    open.sort_by(|a, b| root_bounds[a.0].total_cmp(&root_bounds[b.0]));
    let mut branches = 0;
    let mut exhausted = false;
    for (g, alpha, pick) in open {
        let Some(Some(next)) = pick else {
            exhausted = true;
            continue;
        };
        let goal = &goals[g];
        let mut stack = vec![Domain {
            splits: Vec::new(),
            alpha,
            beta: Vec::new(),
            next,
        }];
        while !stack.is_empty() {
            if out_of_time() || options.max_branches.is_some_and(|m| branches >= m) {
                return Search {
                    verdict: Verdict::Unknown,
                    branches,
                    root_bounds,
                    stage: "bab",
                };
            }
            let take = stack.len().min(options.batch);
            let parents: Vec<Domain> = stack.split_off(stack.len() - take);
            let step = expand(net, (lo, hi), (&lower, &upper), goal, parents, options);
            branches += step.children.len() + step.closed;
            if let Some(x) = step.counterexample.filter(|x| violates(net, property, x)) {
                return Search {
                    verdict: Verdict::Falsified(x),
                    branches,
                    root_bounds,
                    stage: "bab",
                };
            }
            exhausted |= step.exhausted;
            stack.extend(step.children);
        }
    }
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
    /// A box corner where some child's relaxation is tightest, violating the property's
    /// disjunct in the relaxed network: a candidate to check on the network itself.
    counterexample: Option<Vec<f64>>,
    /// A child left open with no unstable neuron left to split.
    exhausted: bool,
}

/// Splits each parent on its chosen neuron, bounds both children with β-CROWN (warm-started
/// from the parent) and keeps those the bound does not close.
fn expand(
    net: &Net,
    (lo, hi): (&[f64], &[f64]),
    (lower, upper): (&[Vec<f64>], &[Vec<f64>]),
    goal: &Goal,
    parents: Vec<Domain>,
    options: &Options,
) -> Expanded {
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
    let per = goal.rows;
    let rows = children.len() * per;
    let mut relax = Relax::replicate(lower, upper, rows);
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
    let c = goal.c.repeat(children.len());
    let k = goal.k.repeat(children.len());
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
    };
    let pass = bounds::optimise(net, &obj, &mut relax, (lo, hi), schedule);
    let mut out = Expanded {
        children: Vec::new(),
        closed: 0,
        counterexample: None,
        exhausted: false,
    };
    let d0 = net.inputs();
    for (ci, splits) in children.into_iter().enumerate() {
        let best = (ci * per..(ci + 1) * per)
            .max_by(|&a, &b| pass.bound[a].total_cmp(&pass.bound[b]))
            .expect("a goal has rows");
        if pass.bound[best] > 0.0 {
            out.closed += 1;
            continue;
        }
        if out.counterexample.is_none() {
            out.counterexample = Some(pass.corner[best * d0..(best + 1) * d0].to_vec());
        }
        let Some(next) = branch_choice(&pass, &relax, best, &splits) else {
            out.exhausted = true;
            continue;
        };
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
        out.children.push(Domain {
            splits,
            alpha,
            beta,
            next,
        });
    }
    out
}

/// The unstable, unsplit neuron to split next in row `p` of a pass: BaBSR's estimate (Bunel
/// et al. 2020) of what the bound loses to its relaxation, the upper chord's intercept
/// weighted by the coefficient on it, with the neuron's interval width weighted by its
/// coefficient breaking ties. `None` when every neuron is stable or split.
fn branch_choice(
    pass: &bounds::Pass,
    relax: &Relax,
    p: usize,
    splits: &[(u32, u32, bool)],
) -> Option<(usize, usize)> {
    let mut best: Option<((usize, usize), f64)> = None;
    for (r, gamma) in pass.gamma.iter().enumerate() {
        let n = gamma.len() / relax.rows;
        for j in 0..n {
            let k = p * n + j;
            let (l, u) = (relax.lower[r][k], relax.upper[r][k]);
            if !(l < 0.0 && u > 0.0) || relax.split[r][k] != 0 {
                continue;
            }
            debug_assert!(!splits.contains(&(r as u32, j as u32, true)));
            let g = gamma[k];
            let intercept = -u * l / (u - l);
            let score = (-g).max(0.0) * intercept + 1e-4 * g.abs() * (u - l);
            if best.is_none_or(|(_, s)| score > s) {
                best = Some(((r, j), score));
            }
        }
    }
    best.map(|(at, _)| at)
}

/// Whether `x` violates the property on the f64 network: in the box, and some disjunct's
/// constraints all hold at its output.
pub(super) fn violates(net: &Net, property: &Property, x: &[f64]) -> bool {
    let y = net.forward(x, 1).pop().unwrap_or_default();
    property.contains(x) && property.violated(&y)
}

/// PGD on each disjunct: `options.restarts` random starts in the box, `options.steps` signed
/// gradient steps on the disjunct's least satisfied constraint, a step from a quarter of the
/// box's width decaying linearly. Returns an input that violates the property.
fn attack(
    net: &Net,
    property: &Property,
    goals: &[Goal],
    options: &Options,
    rng: &mut Rng,
) -> Option<Vec<f64>> {
    let (lo, hi) = (&property.lower, &property.upper);
    let d0 = net.inputs();
    let outputs = net.outputs();
    let n = goals.len() * options.restarts;
    if n == 0 {
        return None;
    }
    let mut x: Vec<f64> = (0..n)
        .flat_map(|_| (0..d0).map(|j| (lo[j], hi[j])).collect::<Vec<_>>())
        .map(|(l, h)| if h > l { rng.uniform(l, h) } else { l })
        .collect();
    for t in 0..options.steps {
        let z = net.forward(&x, n);
        let y = z.last().expect("a layer");
        // The constraint furthest from holding, per start: its gradient ascends.
        let mut rows = vec![0.0; n * outputs];
        for i in 0..n {
            let goal = &goals[i / options.restarts];
            let yi = &y[i * outputs..(i + 1) * outputs];
            if property.violated(yi) {
                return Some(x[i * d0..(i + 1) * d0].to_vec());
            }
            let worst = (0..goal.rows)
                .map(|q| {
                    let c = &goal.c[q * outputs..(q + 1) * outputs];
                    // −(c·y + k) for the goal's row: the violation constraint's value, negated.
                    let v: f64 = c.iter().zip(yi).map(|(c, y)| c * y).sum::<f64>() + goal.k[q];
                    (q, v)
                })
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map_or(0, |(q, _)| q);
            // Descend the row's objective (ascend the constraint).
            for (o, c) in rows[i * outputs..(i + 1) * outputs]
                .iter_mut()
                .zip(&goal.c[worst * outputs..(worst + 1) * outputs])
            {
                *o = -c;
            }
        }
        let g = net.input_gradient(&z, &rows, n);
        let frac = 0.25 * (1.0 - t as f64 / options.steps as f64) + 0.01;
        for i in 0..n {
            for j in 0..d0 {
                let k = i * d0 + j;
                let step = frac * (hi[j] - lo[j]);
                x[k] = (x[k] + step * g[k].signum()).clamp(lo[j], hi[j]);
            }
        }
    }
    let y = net.forward(&x, n).pop().unwrap_or_default();
    (0..n)
        .find(|&i| property.violated(&y[i * outputs..(i + 1) * outputs]))
        .map(|i| x[i * d0..(i + 1) * d0].to_vec())
}
