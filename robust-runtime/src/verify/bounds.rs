//! Linear bounds of a ReLU network with optimised relaxations: CROWN's back-substitution with
//! the lower slopes of unstable ReLUs as variables (α-CROWN, Xu et al. 2021) and the split
//! constraints of a branch as Lagrange multipliers (β-CROWN, Wang et al. 2021), both raised
//! by projected gradient ascent (Adam) on the bound itself.
//!
//! Every bound here is sound for *any* α ∈ [0, 1] and β ≥ 0: the optimiser only chooses among
//! valid relaxations, and each row keeps the best bound it reached.
//!
//! The gradient has a closed form. Back-substitution turns the objective `c·z_L` into
//! coefficients `Γ_r` on each ReLU layer's output and `Γ_0` on the input, and the bound is
//! `Γ_0·x* + const` at the box corner `x*` that minimises it. Differentiating back from `Γ_0`
//! is a forward pass of the *relaxed* network at `x*`: `ẑ_r` (the relaxed pre-activation) is
//! the derivative of the bound with respect to the coefficient on `z_r`, so
//! `∂bound/∂α_rj = ẑ_rj·Γ_rj` for a neuron on its lower slope and `∂bound/∂β_rj = −σ_j·ẑ_rj`
//! for a neuron split to side `σ_j`.

use crate::nn::engine::gemm::{self, matmul, View};
use crate::nn::engine::AffineMap;

/// One affine layer in f64, with its transpose for the forward products.
#[derive(Debug, Clone)]
pub(crate) struct Layer {
    /// `d_out × d_in`, row-major.
    pub w: Vec<f64>,
    /// `d_in × d_out`, row-major.
    pub wt: Vec<f64>,
    pub b: Vec<f64>,
    pub d_in: usize,
    pub d_out: usize,
}

/// A network of affine layers with a ReLU between each two.
#[derive(Debug, Clone)]
pub(crate) struct Net {
    pub layers: Vec<Layer>,
}

impl Net {
    /// The network of `maps` (see `Engine::affine_chain`).
    pub fn new(maps: Vec<AffineMap>) -> Self {
        let layers = maps
            .into_iter()
            .map(|m| {
                let mut wt = vec![0.0; m.w.len()];
                for o in 0..m.d_out {
                    for i in 0..m.d_in {
                        wt[i * m.d_out + o] = m.w[o * m.d_in + i];
                    }
                }
                Layer {
                    w: m.w,
                    wt,
                    b: m.b,
                    d_in: m.d_in,
                    d_out: m.d_out,
                }
            })
            .collect();
        Net { layers }
    }

    /// Values of the input.
    pub fn inputs(&self) -> usize {
        self.layers[0].d_in
    }

    /// Values of the output.
    pub fn outputs(&self) -> usize {
        self.layers.last().map_or(0, |l| l.d_out)
    }

    /// Neurons of each ReLU layer (the outputs of every layer but the last).
    pub fn widths(&self) -> Vec<usize> {
        let k = self.layers.len() - 1;
        self.layers[..k].iter().map(|l| l.d_out).collect()
    }

    /// The pre-activations of every layer for `n` inputs (`n × d_0`): `z[i]` is `n × d_out_i`,
    /// the last the outputs.
    pub fn forward(&self, x: &[f64], n: usize) -> Vec<Vec<f64>> {
        let mut z: Vec<Vec<f64>> = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let relu;
            let src: &[f64] = if i == 0 {
                x
            } else {
                relu = z[i - 1].iter().map(|&v| v.max(0.0)).collect::<Vec<_>>();
                &relu
            };
            z.push(affine(layer, src, n));
        }
        z
    }

    /// The gradient with respect to the input of `Σ_p rows_p·f(x_p)` for `n` inputs, given their
    /// pre-activations `z` from [`Net::forward`].
    pub fn input_gradient(&self, z: &[Vec<f64>], rows: &[f64], n: usize) -> Vec<f64> {
        let mut g = rows.to_vec();
        for i in (0..self.layers.len()).rev() {
            let layer = &self.layers[i];
            let mut prev = vec![0.0; n * layer.d_in];
            matmul(
                (n, layer.d_in, layer.d_out),
                &mut prev,
                View::rows(&g, layer.d_out),
                View::rows(&layer.w, layer.d_in),
                gemm::threads(),
            );
            if i > 0 {
                for (g, &z) in prev.iter_mut().zip(&z[i - 1]) {
                    if z <= 0.0 {
                        *g = 0.0;
                    }
                }
            }
            g = prev;
        }
        g
    }
}

/// `src·Wᵀ + b` for `n` rows.
fn affine(layer: &Layer, src: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * layer.d_out];
    matmul(
        (n, layer.d_out, layer.d_in),
        &mut out,
        View::rows(src, layer.d_in),
        View::rows(&layer.wt, layer.d_out),
        gemm::threads(),
    );
    for row in out.chunks_mut(layer.d_out) {
        row.iter_mut().zip(&layer.b).for_each(|(v, b)| *v += b);
    }
    out
}

/// The relaxation of every ReLU layer for `rows` objectives, each row its own: `lower[r]`,
/// `upper[r]`, `alpha[r]`, `beta[r]` and `split[r]` are `rows × n_r`, row-major.
#[derive(Debug, Clone)]
pub(crate) struct Relax {
    pub rows: usize,
    /// Bounds of the pre-activations (a split's side already applied: `l ≥ 0` or `u ≤ 0`).
    pub lower: Vec<Vec<f64>>,
    pub upper: Vec<Vec<f64>>,
    /// The lower slope of an unstable neuron, in `[0, 1]`.
    pub alpha: Vec<Vec<f64>>,
    /// The multiplier of a split neuron's constraint, `≥ 0` (0 elsewhere).
    pub beta: Vec<Vec<f64>>,
    /// `+1`: split to `z ≥ 0`; `−1`: to `z ≤ 0`; `0`: not split.
    pub split: Vec<Vec<i8>>,
}

impl Relax {
    /// `rows` copies of the bounds `(lower[r], upper[r])` (one row each), with CROWN's adaptive
    /// lower slopes (1 where `u ≥ −l`, else 0), no splits.
    pub fn replicate(lower: &[Vec<f64>], upper: &[Vec<f64>], rows: usize) -> Self {
        let tile = |v: &Vec<f64>| v.repeat(rows);
        let lower: Vec<_> = lower.iter().map(tile).collect();
        let upper: Vec<_> = upper.iter().map(tile).collect();
        let alpha = (lower.iter().zip(&upper))
            .map(|(l, u)| (l.iter().zip(u)).map(|(l, u)| adaptive(*l, *u)).collect())
            .collect();
        let zeros: Vec<Vec<f64>> = lower.iter().map(|l| vec![0.0; l.len()]).collect();
        let split = lower.iter().map(|l| vec![0i8; l.len()]).collect();
        Relax {
            rows,
            lower,
            upper,
            alpha,
            beta: zeros,
            split,
        }
    }
}

impl Relax {
    /// The relaxation of rows `rows` (in that order; a row may repeat).
    pub fn select(&self, rows: &[usize]) -> Relax {
        fn pick<T: Copy>(v: &[Vec<T>], rows: &[usize], all: usize) -> Vec<Vec<T>> {
            v.iter()
                .map(|layer| {
                    let n = layer.len() / all.max(1);
                    rows.iter()
                        .flat_map(|&p| layer[p * n..(p + 1) * n].iter().copied())
                        .collect()
                })
                .collect()
        }
        Relax {
            rows: rows.len(),
            lower: pick(&self.lower, rows, self.rows),
            upper: pick(&self.upper, rows, self.rows),
            alpha: pick(&self.alpha, rows, self.rows),
            beta: pick(&self.beta, rows, self.rows),
            split: pick(&self.split, rows, self.rows),
        }
    }
}

/// CROWN's choice of lower slope for a neuron in `[l, u]`.
pub(crate) fn adaptive(l: f64, u: f64) -> f64 {
    if u >= -l {
        1.0
    } else {
        0.0
    }
}

/// The slope and intercept of a neuron's relaxation on the side a coefficient `gamma` needs
/// for a lower bound: the lower line `α·z` when `gamma ≥ 0`, the upper chord otherwise.
#[inline]
fn relaxation(l: f64, u: f64, alpha: f64, gamma: f64) -> (f64, f64) {
    if u <= 0.0 {
        (0.0, 0.0)
    } else if l >= 0.0 {
        (1.0, 0.0)
    } else if gamma >= 0.0 {
        (alpha, 0.0)
    } else {
        let s = u / (u - l);
        (s, -s * l)
    }
}

/// One back-substitution for `relax.rows` objectives on the output of layer `depth − 1`.
pub(crate) struct Pass {
    /// The lower bound of each row.
    pub bound: Vec<f64>,
    /// `gamma[r]`: each row's coefficients on ReLU layer `r`'s output (`rows × n_r`), for the
    /// ReLU layers before `depth − 1`.
    pub gamma: Vec<Vec<f64>>,
    /// The input box corner each row's bound is attained at (`rows × d_0`).
    pub corner: Vec<f64>,
}

/// The objective: `rows × d` coefficients on the output of layer `depth − 1` and a constant
/// per row.
pub(crate) struct Objective<'a> {
    pub depth: usize,
    pub c: &'a [f64],
    pub k: &'a [f64],
}

/// Lower bounds of `obj` over the box `[lo, hi]` under `relax` (ReLU layers `0..depth − 1`).
pub(crate) fn back_substitute(
    net: &Net,
    obj: &Objective<'_>,
    relax: &Relax,
    (lo, hi): (&[f64], &[f64]),
) -> Pass {
    let rows = relax.rows;
    let mut lambda = obj.c.to_vec();
    let mut cst = obj.k.to_vec();
    let mut gamma_of = vec![Vec::new(); obj.depth - 1];
    let mut gamma = Vec::new();
    for i in (0..obj.depth).rev() {
        let layer = &net.layers[i];
        for (c, row) in cst.iter_mut().zip(lambda.chunks(layer.d_out)) {
            *c += row.iter().zip(&layer.b).map(|(a, b)| a * b).sum::<f64>();
        }
        gamma = vec![0.0; rows * layer.d_in];
        matmul(
            (rows, layer.d_in, layer.d_out),
            &mut gamma,
            View::rows(&lambda, layer.d_out),
            View::rows(&layer.w, layer.d_in),
            gemm::threads(),
        );
        if i == 0 {
            break;
        }
        let r = i - 1;
        let n = layer.d_in;
        let mut next = vec![0.0; rows * n];
        for p in 0..rows {
            let at = p * n..(p + 1) * n;
            let (l, u) = (&relax.lower[r][at.clone()], &relax.upper[r][at.clone()]);
            let (a, b, s) = (
                &relax.alpha[r][at.clone()],
                &relax.beta[r][at.clone()],
                &relax.split[r][at.clone()],
            );
            let (g, out) = (&gamma[at.clone()], &mut next[at]);
            let mut add = 0.0;
            for j in 0..n {
                let (slope, icpt) = relaxation(l[j], u[j], a[j], g[j]);
                out[j] = slope * g[j] - f64::from(s[j]) * b[j];
                add += g[j] * icpt;
            }
            cst[p] += add;
        }
        gamma_of[r] = std::mem::replace(&mut gamma, Vec::new());
        lambda = next;
    }
    let d0 = net.layers[0].d_in;
    let mut corner = vec![0.0; rows * d0];
    let bound = (0..rows)
        .map(|p| {
            let (g, x) = (
                &gamma[p * d0..(p + 1) * d0],
                &mut corner[p * d0..(p + 1) * d0],
            );
            let mut v = cst[p];
            for j in 0..d0 {
                x[j] = if g[j] >= 0.0 { lo[j] } else { hi[j] };
                v += g[j] * x[j];
            }
            v
        })
        .collect();
    Pass {
        bound,
        gamma: gamma_of,
        corner,
    }
}

/// The gradients of a pass's bounds with respect to `relax.alpha` and `relax.beta` (the
/// relaxed network run forward from the corners, see the module docs).
fn gradients(
    net: &Net,
    depth: usize,
    relax: &Relax,
    pass: &Pass,
) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let rows = relax.rows;
    let mut z = affine(&net.layers[0], &pass.corner, rows);
    let mut d_alpha = Vec::with_capacity(depth - 1);
    let mut d_beta = Vec::with_capacity(depth - 1);
    for r in 0..depth - 1 {
        let n = net.layers[r].d_out;
        let (l, u, a, s, g) = (
            &relax.lower[r],
            &relax.upper[r],
            &relax.alpha[r],
            &relax.split[r],
            &pass.gamma[r],
        );
        let mut da = vec![0.0; rows * n];
        let mut db = vec![0.0; rows * n];
        let mut act = vec![0.0; rows * n];
        for k in 0..rows * n {
            let (slope, icpt) = relaxation(l[k], u[k], a[k], g[k]);
            if l[k] < 0.0 && u[k] > 0.0 && g[k] >= 0.0 {
                da[k] = z[k] * g[k];
            }
            if s[k] != 0 {
                db[k] = -f64::from(s[k]) * z[k];
            }
            act[k] = slope * z[k] + icpt;
        }
        d_alpha.push(da);
        d_beta.push(db);
        if r + 1 < depth - 1 {
            z = affine(&net.layers[r + 1], &act, rows);
        }
    }
    (d_alpha, d_beta)
}

/// How the relaxation is optimised.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    pub iterations: usize,
    pub lr_alpha: f64,
    pub lr_beta: f64,
    /// Stop once every row's bound is above this (a proof needs no better bound).
    pub stop_above: Option<f64>,
}

/// The best bounds the optimiser reaches from `relax` in `schedule.iterations` steps of
/// Adam, with `relax.alpha` and `relax.beta` left at each row's best; the pass returned is
/// the one at those, so its bounds are the best.
pub(crate) fn optimise(
    net: &Net,
    obj: &Objective<'_>,
    relax: &mut Relax,
    bounds: (&[f64], &[f64]),
    schedule: Schedule,
) -> Pass {
    let layers = obj.depth - 1;
    let rows = relax.rows;
    let first = back_substitute(net, obj, relax, bounds);
    if layers == 0 || schedule.iterations == 0 || done(&first.bound, schedule.stop_above) {
        return first;
    }
    let mut best = first.bound.clone();
    let mut best_alpha = relax.alpha[..layers].to_vec();
    let mut best_beta = relax.beta[..layers].to_vec();
    let zeros = |v: &Vec<Vec<f64>>| {
        v[..layers]
            .iter()
            .map(|x| vec![0.0; x.len()])
            .collect::<Vec<_>>()
    };
    let (mut m_a, mut v_a) = (zeros(&relax.alpha), zeros(&relax.alpha));
    let (mut m_b, mut v_b) = (zeros(&relax.beta), zeros(&relax.beta));
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
    let mut pass = first;
    for t in 1..=schedule.iterations {
        let (d_alpha, d_beta) = gradients(net, obj.depth, relax, &pass);
        // Learning rates decay as α,β-CROWN's do (×0.98 per step).
        let decay = 0.98f64.powi(t as i32 - 1);
        let (c1, c2) = (1.0 - b1.powi(t as i32), 1.0 - b2.powi(t as i32));
        for r in 0..layers {
            adam(
                &mut relax.alpha[r],
                &d_alpha[r],
                (&mut m_a[r], &mut v_a[r]),
                schedule.lr_alpha * decay,
                (b1, b2, c1, c2, eps),
                (0.0, 1.0),
            );
            adam(
                &mut relax.beta[r],
                &d_beta[r],
                (&mut m_b[r], &mut v_b[r]),
                schedule.lr_beta * decay,
                (b1, b2, c1, c2, eps),
                (0.0, f64::INFINITY),
            );
        }
        pass = back_substitute(net, obj, relax, bounds);
        for p in 0..rows {
            if pass.bound[p] > best[p] {
                best[p] = pass.bound[p];
                for r in 0..layers {
                    let n = relax.alpha[r].len() / rows;
                    let at = p * n..(p + 1) * n;
                    best_alpha[r][at.clone()].copy_from_slice(&relax.alpha[r][at.clone()]);
                    best_beta[r][at.clone()].copy_from_slice(&relax.beta[r][at]);
                }
            }
        }
        if done(&best, schedule.stop_above) {
            break;
        }
    }
    relax.alpha[..layers].clone_from_slice(&best_alpha);
    relax.beta[..layers].clone_from_slice(&best_beta);
    back_substitute(net, obj, relax, bounds)
}

fn done(bound: &[f64], above: Option<f64>) -> bool {
    above.is_some_and(|t| bound.iter().all(|&b| b > t))
}

/// One projected Adam ascent step on `x` by gradient `g`, clamped to `range`.
fn adam(
    x: &mut [f64],
    g: &[f64],
    (m, v): (&mut [f64], &mut [f64]),
    lr: f64,
    (b1, b2, c1, c2, eps): (f64, f64, f64, f64, f64),
    (lo, hi): (f64, f64),
) {
    for k in 0..x.len() {
        if g[k] == 0.0 && m[k] == 0.0 {
            continue;
        }
        m[k] = b1 * m[k] + (1.0 - b1) * g[k];
        v[k] = b2 * v[k] + (1.0 - b2) * g[k] * g[k];
        let step = lr * (m[k] / c1) / ((v[k] / c2).sqrt() + eps);
        x[k] = (x[k] + step).clamp(lo, hi);
    }
}

/// The pre-activation bounds of every ReLU layer over the box `[lo, hi]`: the first layer's
/// exactly (an affine map of a box), each later one by the interval bound from the layer
/// before, tightened by α-CROWN on the neurons that leaves unstable (each neuron's lower and
/// upper bound its own objective, `schedule.iterations` steps). `chunk` rows run at a time.
pub(crate) fn layer_bounds(
    net: &Net,
    (lo, hi): (&[f64], &[f64]),
    schedule: Schedule,
    chunk: usize,
) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let widths = net.widths();
    let (mut lower, mut upper): (Vec<Vec<f64>>, Vec<Vec<f64>>) = (Vec::new(), Vec::new());
    for (m, &n) in widths.iter().enumerate() {
        // The interval bound through layer m from the box of its input.
        let (in_lo, in_hi): (Vec<f64>, Vec<f64>) = if m == 0 {
            (lo.to_vec(), hi.to_vec())
        } else {
            (
                lower[m - 1].iter().map(|v: &f64| v.max(0.0)).collect(),
                upper[m - 1].iter().map(|v: &f64| v.max(0.0)).collect(),
            )
        };
        let (mut l, mut u) = interval(&net.layers[m], &in_lo, &in_hi);
        if m > 0 {
            // Rows `±e_j`: the lower bound of z_j and of −z_j, for the neurons the interval
            // leaves unstable (a stable one's relaxation is exact whatever its bounds).
            let unstable: Vec<usize> = (0..n).filter(|&j| l[j] < 0.0 && u[j] > 0.0).collect();
            let rows_all: Vec<(usize, f64)> = (unstable.iter().map(|&j| (j, 1.0)))
                .chain(unstable.iter().map(|&j| (j, -1.0)))
                .collect();
            for part in rows_all.chunks(chunk.max(1)) {
                let rows = part.len();
                let mut c = vec![0.0; rows * n];
                for (p, &(j, s)) in part.iter().enumerate() {
                    c[p * n + j] = s;
                }
                let k = vec![0.0; rows];
                let obj = Objective {
                    depth: m + 1,
                    c: &c,
                    k: &k,
                };
                let mut relax = Relax::replicate(&lower, &upper, rows);
                let pass = optimise(net, &obj, &mut relax, (lo, hi), schedule);
                for (&(j, s), b) in part.iter().zip(pass.bound) {
                    if s > 0.0 {
                        l[j] = l[j].max(b);
                    } else {
                        u[j] = u[j].min(-b);
                    }
                }
            }
        }
        lower.push(l);
        upper.push(u);
    }
    (lower, upper)
}

/// Lower bounds of the objective rows `c·y + k` (on the network's output) from the last ReLU
/// layer's pre-activation bounds alone: the objective's coefficients on that layer's outputs
/// against the box `[relu(l), relu(u)]` (interval bound propagation's last step, with the
/// objective folded into the last layer).
pub(crate) fn interval_objective(
    net: &Net,
    lower: &[Vec<f64>],
    upper: &[Vec<f64>],
    c: &[f64],
    k: &[f64],
) -> Vec<f64> {
    let last = net.layers.last().expect("a layer");
    let (lo, hi): (Vec<f64>, Vec<f64>) = match (lower.last(), upper.last()) {
        (Some(l), Some(u)) => (
            l.iter().map(|v| v.max(0.0)).collect(),
            u.iter().map(|v| v.max(0.0)).collect(),
        ),
        _ => return vec![f64::NEG_INFINITY; k.len()],
    };
    (c.chunks(last.d_out).zip(k))
        .map(|(row, &k)| {
            let mut v = k + row.iter().zip(&last.b).map(|(a, b)| a * b).sum::<f64>();
            for j in 0..last.d_in {
                let g: f64 = (0..last.d_out)
                    .map(|o| row[o] * last.w[o * last.d_in + j])
                    .sum();
                v += if g >= 0.0 { g * lo[j] } else { g * hi[j] };
            }
            v
        })
        .collect()
}

/// The interval image of the box `[lo, hi]` under an affine layer.
fn interval(layer: &Layer, lo: &[f64], hi: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let mut l = layer.b.clone();
    let mut u = layer.b.clone();
    for o in 0..layer.d_out {
        let row = &layer.w[o * layer.d_in..(o + 1) * layer.d_in];
        let (mut a, mut b) = (0.0, 0.0);
        for j in 0..layer.d_in {
            let w = row[j];
            if w >= 0.0 {
                a += w * lo[j];
                b += w * hi[j];
            } else {
                a += w * hi[j];
                b += w * lo[j];
            }
        }
        l[o] += a;
        u[o] += b;
    }
    (l, u)
}
