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

use std::time::Instant;

use crate::nn::engine::gemm::{self, matmul, Element, View};
use crate::nn::engine::AffineMap;

/// The float types the bounds run on: f64 for every bound that decides, f32 inside the
/// optimiser's steps (they only choose the relaxation; its bound is then computed in f64).
pub(crate) trait Real:
    Element
    + PartialOrd
    + std::fmt::Debug
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
    + std::iter::Sum
{
    fn of(v: f64) -> Self;
    fn wide(self) -> f64;
    fn sqrt(self) -> Self;
}

impl Real for f64 {
    fn of(v: f64) -> Self {
        v
    }
    fn wide(self) -> f64 {
        self
    }
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
}

impl Real for f32 {
    fn of(v: f64) -> Self {
        v as f32
    }
    fn wide(self) -> f64 {
        f64::from(self)
    }
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
}

/// `v` in another float type.
fn cast<T: Real, U: Real>(v: &[T]) -> Vec<U> {
    v.iter().map(|&x| U::of(x.wide())).collect()
}

/// Each of `v`'s arrays in another float type.
fn cast_all<T: Real, U: Real>(v: &[Vec<T>]) -> Vec<Vec<U>> {
    v.iter().map(|x| cast(x)).collect()
}

/// One affine layer, with its transpose for the forward products.
#[derive(Debug, Clone)]
pub(crate) struct Layer<T = f64> {
    /// `d_out × d_in`, row-major.
    pub w: Vec<T>,
    /// `d_in × d_out`, row-major.
    pub wt: Vec<T>,
    pub b: Vec<T>,
    pub d_in: usize,
    pub d_out: usize,
}

impl Layer {
    /// The layer rounded to f32.
    fn single(&self) -> Layer<f32> {
        Layer {
            w: cast(&self.w),
            wt: cast(&self.wt),
            b: cast(&self.b),
            d_in: self.d_in,
            d_out: self.d_out,
        }
    }
}

/// A network of affine layers with a ReLU between each two, in f64 and rounded to f32.
#[derive(Debug, Clone)]
pub(crate) struct Net {
    pub layers: Vec<Layer>,
    single: Vec<Layer<f32>>,
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
            .collect::<Vec<Layer>>();
        let single = layers.iter().map(Layer::single).collect();
        Net { layers, single }
    }

    /// The network's first `depth` layers (the last of them without its ReLU).
    pub fn truncated(&self, depth: usize) -> Net {
        Net {
            layers: self.layers[..depth].to_vec(),
            single: self.single[..depth].to_vec(),
        }
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
fn affine<T: Real>(layer: &Layer<T>, src: &[T], n: usize) -> Vec<T> {
    let mut out = vec![T::ZERO; n * layer.d_out];
    matmul(
        (n, layer.d_out, layer.d_in),
        &mut out,
        View::rows(src, layer.d_in),
        View::rows(&layer.wt, layer.d_out),
        gemm::threads(),
    );
    for row in out.chunks_mut(layer.d_out) {
        row.iter_mut().zip(&layer.b).for_each(|(v, &b)| *v += b);
    }
    out
}

/// The relaxation of every ReLU layer for `rows` objectives, each row its own: `lower[r]`,
/// `upper[r]`, `alpha[r]`, `beta[r]` and `split[r]` are `rows × n_r`, row-major.
#[derive(Debug, Clone)]
pub(crate) struct Relax<T = f64> {
    pub rows: usize,
    /// Bounds of the pre-activations (a split's side already applied: `l ≥ 0` or `u ≤ 0`).
    pub lower: Vec<Vec<T>>,
    pub upper: Vec<Vec<T>>,
    /// The lower slope of an unstable neuron, in `[0, 1]`.
    pub alpha: Vec<Vec<T>>,
    /// The multiplier of a split neuron's constraint, `≥ 0` (0 elsewhere).
    pub beta: Vec<Vec<T>>,
    /// `+1`: split to `z ≥ 0`; `−1`: to `z ≤ 0`; `0`: not split.
    pub split: Vec<Vec<i8>>,
}

impl Relax {
    /// `rows` copies of the bounds `(lower[r], upper[r])` (one row each), with CROWN's adaptive
    /// lower slopes (1 where `u ≥ −l`, else 0), no splits.
    pub fn replicate(lower: &[Vec<f64>], upper: &[Vec<f64>], rows: usize) -> Self {
        let tile = |v: &Vec<f64>| v.repeat(rows);
        Relax::of(
            lower.iter().map(tile).collect(),
            upper.iter().map(tile).collect(),
            rows,
        )
    }

    /// The relaxation of bounds already given per row (`rows × n_r` each), with CROWN's
    /// adaptive lower slopes, no splits.
    pub fn of(lower: Vec<Vec<f64>>, upper: Vec<Vec<f64>>, rows: usize) -> Self {
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

impl<T: Real> Relax<T> {
    /// The same relaxation in another float type.
    fn cast<U: Real>(&self) -> Relax<U> {
        Relax {
            rows: self.rows,
            lower: cast_all(&self.lower),
            upper: cast_all(&self.upper),
            alpha: cast_all(&self.alpha),
            beta: cast_all(&self.beta),
            split: self.split.clone(),
        }
    }

    /// The relaxation of rows `rows` (in that order; a row may repeat).
    pub fn select(&self, rows: &[usize]) -> Relax<T> {
        Relax {
            rows: rows.len(),
            lower: pick_rows(&self.lower, rows, self.rows),
            upper: pick_rows(&self.upper, rows, self.rows),
            alpha: pick_rows(&self.alpha, rows, self.rows),
            beta: pick_rows(&self.beta, rows, self.rows),
            split: pick_rows(&self.split, rows, self.rows),
        }
    }
}

/// Rows `rows` (in that order) of each of `v`'s `all × n` arrays.
fn pick_rows<T: Copy>(v: &[Vec<T>], rows: &[usize], all: usize) -> Vec<Vec<T>> {
    v.iter()
        .map(|layer| {
            let n = layer.len() / all.max(1);
            rows.iter()
                .flat_map(|&p| layer[p * n..(p + 1) * n].iter().copied())
                .collect()
        })
        .collect()
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
fn relaxation<T: Real>(l: T, u: T, alpha: T, gamma: T) -> (T, T) {
    if u <= T::ZERO {
        (T::ZERO, T::ZERO)
    } else if l >= T::ZERO {
        (T::ONE, T::ZERO)
    } else if gamma >= T::ZERO {
        (alpha, T::ZERO)
    } else {
        let s = u / (u - l);
        (s, -s * l)
    }
}

/// `+1`, `−1` or `0` as a float.
#[inline]
fn sign<T: Real>(s: i8) -> T {
    match s {
        0 => T::ZERO,
        s if s > 0 => T::ONE,
        _ => -T::ONE,
    }
}

/// One back-substitution for `relax.rows` objectives on the output of layer `depth − 1`.
pub(crate) struct Pass<T = f64> {
    /// The lower bound of each row.
    pub bound: Vec<T>,
    /// `gamma[r]`: each row's coefficients on ReLU layer `r`'s output (`rows × n_r`), for the
    /// ReLU layers before `depth − 1`.
    pub gamma: Vec<Vec<T>>,
    /// The input box corner each row's bound is attained at (`rows × d_0`).
    pub corner: Vec<T>,
}

/// The objective: `rows × d` coefficients on the output of layer `depth − 1` and a constant
/// per row.
pub(crate) struct Objective<'a, T = f64> {
    pub depth: usize,
    pub c: &'a [T],
    pub k: &'a [T],
}

/// Lower bounds of `obj` over the box `[lo, hi]` under `relax` (ReLU layers `0..depth − 1`).
pub(crate) fn back_substitute(
    net: &Net,
    obj: &Objective<'_>,
    relax: &Relax,
    bounds: (&[f64], &[f64]),
) -> Pass {
    substitute(&net.layers, obj, relax, bounds)
}

/// [`back_substitute`] in either float type.
fn substitute<T: Real>(
    layers: &[Layer<T>],
    obj: &Objective<'_, T>,
    relax: &Relax<T>,
    (lo, hi): (&[T], &[T]),
) -> Pass<T> {
    let rows = relax.rows;
    let mut lambda = obj.c.to_vec();
    let mut cst = obj.k.to_vec();
    let mut gamma_of = vec![Vec::new(); obj.depth - 1];
    let mut gamma = Vec::new();
    for i in (0..obj.depth).rev() {
        let layer = &layers[i];
        for (c, row) in cst.iter_mut().zip(lambda.chunks(layer.d_out)) {
            *c += row.iter().zip(&layer.b).map(|(&a, &b)| a * b).sum::<T>();
        }
        gamma = vec![T::ZERO; rows * layer.d_in];
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
        let mut next = vec![T::ZERO; rows * n];
        for p in 0..rows {
            let at = p * n..(p + 1) * n;
            let (l, u) = (&relax.lower[r][at.clone()], &relax.upper[r][at.clone()]);
            let (a, b, s) = (
                &relax.alpha[r][at.clone()],
                &relax.beta[r][at.clone()],
                &relax.split[r][at.clone()],
            );
            let (g, out) = (&gamma[at.clone()], &mut next[at]);
            let mut add = T::ZERO;
            for j in 0..n {
                let (slope, icpt) = relaxation(l[j], u[j], a[j], g[j]);
                out[j] = slope * g[j] - sign::<T>(s[j]) * b[j];
                add += g[j] * icpt;
            }
            cst[p] += add;
        }
        gamma_of[r] = std::mem::take(&mut gamma);
        lambda = next;
    }
    let d0 = layers[0].d_in;
    let mut corner = vec![T::ZERO; rows * d0];
    let bound = (0..rows)
        .map(|p| {
            let (g, x) = (
                &gamma[p * d0..(p + 1) * d0],
                &mut corner[p * d0..(p + 1) * d0],
            );
            let mut v = cst[p];
            for j in 0..d0 {
                x[j] = if g[j] >= T::ZERO { lo[j] } else { hi[j] };
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
fn gradients<T: Real>(
    layers: &[Layer<T>],
    depth: usize,
    relax: &Relax<T>,
    pass: &Pass<T>,
) -> (Vec<Vec<T>>, Vec<Vec<T>>) {
    let rows = relax.rows;
    let mut z = affine(&layers[0], &pass.corner, rows);
    let mut d_alpha = Vec::with_capacity(depth - 1);
    let mut d_beta = Vec::with_capacity(depth - 1);
    for r in 0..depth - 1 {
        let n = layers[r].d_out;
        let (l, u, a, s, g) = (
            &relax.lower[r],
            &relax.upper[r],
            &relax.alpha[r],
            &relax.split[r],
            &pass.gamma[r],
        );
        let mut da = vec![T::ZERO; rows * n];
        let mut db = vec![T::ZERO; rows * n];
        let mut act = vec![T::ZERO; rows * n];
        for k in 0..rows * n {
            let (slope, icpt) = relaxation(l[k], u[k], a[k], g[k]);
            if l[k] < T::ZERO && u[k] > T::ZERO && g[k] >= T::ZERO {
                da[k] = z[k] * g[k];
            }
            if s[k] != 0 {
                db[k] = -sign::<T>(s[k]) * z[k];
            }
            act[k] = slope * z[k] + icpt;
        }
        d_alpha.push(da);
        d_beta.push(db);
        if r + 1 < depth - 1 {
            z = affine(&layers[r + 1], &act, rows);
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
    /// Stop optimising a row once its bound is above this (a proof needs no better bound),
    /// and stop once every row is.
    pub stop_above: Option<f64>,
    /// Stop at this instant with the best bounds reached (sound at any step).
    pub deadline: Option<Instant>,
}

/// The best bounds the optimiser reaches from `relax` in `schedule.iterations` steps of
/// Adam, with `relax.alpha` and `relax.beta` left at each row's best; the pass returned is
/// the one at those, so its bounds are the best, and never below those `relax` started with.
///
/// The steps run in f32 (they only choose the slopes and multipliers, any of which gives a
/// sound bound); the pass returned is computed in f64 at the chosen ones.
///
/// With `stop_above`, a row is left at the first bound above it, and the steps go on over the
/// rows still below (the products shrink as rows are proved).
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
    let start = (
        relax.alpha[..layers].to_vec(),
        relax.beta[..layers].to_vec(),
    );
    let mut best: Vec<f32> = cast(&first.bound);
    let mut best_alpha: Vec<Vec<f32>> = cast_all(&relax.alpha[..layers]);
    let mut best_beta: Vec<Vec<f32>> = cast_all(&relax.beta[..layers]);
    // The rows still optimised (indices into `relax`'s rows), and their state: `sub` holds
    // their relaxation, `c` and `k` their objectives.
    let mut active: Vec<usize> = (0..rows).collect();
    let mut sub: Relax<f32> = relax.cast();
    let (mut c, mut k): (Vec<f32>, Vec<f32>) = (cast(obj.c), cast(obj.k));
    let (lo, hi): (Vec<f32>, Vec<f32>) = (cast(bounds.0), cast(bounds.1));
    let zeros = |v: &Vec<Vec<f32>>| {
        v[..layers]
            .iter()
            .map(|x| vec![0.0f32; x.len()])
            .collect::<Vec<_>>()
    };
    let (mut m_a, mut v_a) = (zeros(&sub.alpha), zeros(&sub.alpha));
    let (mut m_b, mut v_b) = (zeros(&sub.beta), zeros(&sub.beta));
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
    let above = schedule.stop_above.map(|t| t as f32);
    let mut pass = Pass {
        bound: cast(&first.bound),
        gamma: cast_all(&first.gamma),
        corner: cast(&first.corner),
    };
    for t in 1..=schedule.iterations {
        if schedule.deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let (d_alpha, d_beta) = gradients(&net.single, obj.depth, &sub, &pass);
        // Learning rates decay as α,β-CROWN's do (×0.98 per step).
        let decay = 0.98f64.powi(t as i32 - 1);
        let (c1, c2) = (1.0 - b1.powi(t as i32), 1.0 - b2.powi(t as i32));
        for r in 0..layers {
            adam(
                &mut sub.alpha[r],
                &d_alpha[r],
                (&mut m_a[r], &mut v_a[r]),
                schedule.lr_alpha * decay,
                (b1, b2, c1, c2, eps),
                (0.0, 1.0),
            );
            adam(
                &mut sub.beta[r],
                &d_beta[r],
                (&mut m_b[r], &mut v_b[r]),
                schedule.lr_beta * decay,
                (b1, b2, c1, c2, eps),
                (0.0, f64::INFINITY),
            );
        }
        let objective = Objective {
            depth: obj.depth,
            c: &c,
            k: &k,
        };
        pass = substitute(&net.single, &objective, &sub, (&lo, &hi));
        for (q, &p) in active.iter().enumerate() {
            if pass.bound[q] > best[p] {
                best[p] = pass.bound[q];
                for r in 0..layers {
                    let n = sub.alpha[r].len() / sub.rows;
                    let (from, to) = (q * n..(q + 1) * n, p * n..(p + 1) * n);
                    best_alpha[r][to.clone()].copy_from_slice(&sub.alpha[r][from.clone()]);
                    best_beta[r][to].copy_from_slice(&sub.beta[r][from]);
                }
            }
        }
        let Some(above) = above else {
            continue;
        };
        let keep: Vec<usize> = (0..active.len())
            .filter(|&q| best[active[q]] <= above)
            .collect();
        if keep.is_empty() {
            break;
        }
        // Drop the proved rows once a quarter of them are.
        if 4 * keep.len() <= 3 * active.len() {
            let all = active.len();
            sub = sub.select(&keep);
            c = pick_rows(&[c], &keep, all).swap_remove(0);
            k = keep.iter().map(|&q| k[q]).collect();
            for v in [&mut m_a, &mut v_a, &mut m_b, &mut v_b] {
                *v = pick_rows(v, &keep, all);
            }
            pass = Pass {
                bound: keep.iter().map(|&q| pass.bound[q]).collect(),
                gamma: pick_rows(&pass.gamma, &keep, all),
                corner: pick_rows(&[pass.corner], &keep, all).swap_remove(0),
            };
            active = keep.iter().map(|&q| active[q]).collect();
        }
    }
    relax.alpha[..layers].clone_from_slice(&cast_all(&best_alpha));
    relax.beta[..layers].clone_from_slice(&cast_all(&best_beta));
    let mut last = back_substitute(net, obj, relax, bounds);
    // A row whose f64 bound fell below its start (f32 rounding misled the choice) goes back
    // to the slopes and multipliers it started from, and to that bound.
    let d0 = net.inputs();
    let fell: Vec<usize> = (0..rows)
        .filter(|&p| last.bound[p] < first.bound[p])
        .collect();
    for p in fell {
        last.bound[p] = first.bound[p];
        last.corner[p * d0..(p + 1) * d0].copy_from_slice(&first.corner[p * d0..(p + 1) * d0]);
        for r in 0..layers {
            let n = relax.alpha[r].len() / rows;
            let at = p * n..(p + 1) * n;
            last.gamma[r][at.clone()].copy_from_slice(&first.gamma[r][at.clone()]);
            relax.alpha[r][at.clone()].copy_from_slice(&start.0[r][at.clone()]);
            relax.beta[r][at.clone()].copy_from_slice(&start.1[r][at]);
        }
    }
    last
}

fn done(bound: &[f64], above: Option<f64>) -> bool {
    above.is_some_and(|t| bound.iter().all(|&b| b > t))
}

/// One projected Adam ascent step on `x` by gradient `g`, clamped to `range`.
fn adam<T: Real>(
    x: &mut [T],
    g: &[T],
    (m, v): (&mut [T], &mut [T]),
    lr: f64,
    (b1, b2, c1, c2, eps): (f64, f64, f64, f64, f64),
    (lo, hi): (f64, f64),
) {
    let [lr, b1, b2, c1, c2, eps, lo, hi] = [lr, b1, b2, c1, c2, eps, lo, hi].map(T::of);
    for k in 0..x.len() {
        if g[k] == T::ZERO && m[k] == T::ZERO {
            continue;
        }
        m[k] = b1 * m[k] + (T::ONE - b1) * g[k];
        v[k] = b2 * v[k] + (T::ONE - b2) * g[k] * g[k];
        let step = lr * (m[k] / c1) / ((v[k] / c2).sqrt() + eps);
        let y = x[k] + step;
        x[k] = if y < lo {
            lo
        } else if y > hi {
            hi
        } else {
            y
        };
    }
}

/// The pre-activation bounds of every ReLU layer over the box `[lo, hi]`: the first layer's
/// exactly (an affine map of a box), each later one by the interval bound from the layer
/// before, tightened by α-CROWN on the neurons that leaves unstable (each neuron's lower and
/// upper bound its own objective, `schedule.iterations` steps). `chunk` rows run at a time.
pub(crate) fn layer_bounds(
    net: &Net,
    bounds: (&[f64], &[f64]),
    schedule: Schedule,
    chunk: usize,
) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let (mut lower, mut upper) = (Vec::new(), Vec::new());
    extend_layer_bounds(net, bounds, schedule, chunk, &mut lower, &mut upper);
    (lower, upper)
}

/// [`layer_bounds`] of the layers after those `lower` and `upper` already hold, from them.
pub(crate) fn extend_layer_bounds(
    net: &Net,
    (lo, hi): (&[f64], &[f64]),
    schedule: Schedule,
    chunk: usize,
    lower: &mut Vec<Vec<f64>>,
    upper: &mut Vec<Vec<f64>>,
) {
    let widths = net.widths();
    for (m, &n) in widths.iter().enumerate().skip(lower.len()) {
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
                let mut relax = Relax::replicate(lower, upper, rows);
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

#[cfg(test)]
pub(super) mod should {
    use super::{layer_bounds, optimise, Net, Objective, Relax, Schedule};
    use crate::nn::engine::AffineMap;
    use crate::rng::Rng;

    /// A random ReLU network `sizes[0] → … → sizes[last]`, weights `N(0, 1/d_in)`.
    pub(crate) fn net(rng: &mut Rng, sizes: &[usize]) -> Net {
        let maps = sizes
            .windows(2)
            .map(|d| AffineMap {
                w: (0..d[0] * d[1])
                    .map(|_| rng.normal() / (d[0] as f64).sqrt())
                    .collect(),
                b: (0..d[1]).map(|_| 0.1 * rng.normal()).collect(),
                d_in: d[0],
                d_out: d[1],
            })
            .collect();
        Net::new(maps)
    }

    #[test]
    fn leave_proved_rows_early_and_reach_the_same_bounds_on_the_rest() {
        let mut rng = Rng::seed_from_u64(3);
        let net = net(&mut rng, &[6, 24, 24, 24, 5]);
        let centre: Vec<f64> = (0..6).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let lo: Vec<f64> = centre.iter().map(|c| c - 0.4).collect();
        let hi: Vec<f64> = centre.iter().map(|c| c + 0.4).collect();
        let plain = Schedule {
            iterations: 40,
            lr_alpha: 0.1,
            lr_beta: 0.05,
            stop_above: None,
            deadline: None,
        };
        let (lower, upper) = layer_bounds(&net, (&lo, &hi), plain, 64);
        let rows = 40;
        let c: Vec<f64> = (0..rows * 5).map(|_| rng.normal()).collect();
        let k: Vec<f64> = (0..rows).map(|_| rng.normal()).collect();
        let obj = Objective {
            depth: 4,
            c: &c,
            k: &k,
        };
        let crown = super::back_substitute(
            &net,
            &obj,
            &Relax::replicate(&lower, &upper, rows),
            (&lo, &hi),
        );
        let full = optimise(
            &net,
            &obj,
            &mut Relax::replicate(&lower, &upper, rows),
            (&lo, &hi),
            plain,
        );
        // A threshold half the rows end below.
        let mut sorted = full.bound.clone();
        sorted.sort_by(f64::total_cmp);
        let t = sorted[rows / 2];
        let early = optimise(
            &net,
            &obj,
            &mut Relax::replicate(&lower, &upper, rows),
            (&lo, &hi),
            Schedule {
                stop_above: Some(t),
                ..plain
            },
        );
        // The samples' outputs bound every row's bound from above.
        let n = 2000;
        let x: Vec<f64> = (0..n * 6)
            .map(|i| rng.uniform(lo[i % 6], hi[i % 6]))
            .collect();
        let y = net.forward(&x, n).pop().unwrap();
        let (mut crossed, mut same, mut moved) = (0, 0, 0);
        for p in 0..rows {
            let (f, e) = (full.bound[p], early.bound[p]);
            assert!(
                e >= crown.bound[p] - 1e-9,
                "row {p}: {e} looser than CROWN's {}",
                crown.bound[p]
            );
            let min = (0..n)
                .map(|i| (0..5).map(|o| c[p * 5 + o] * y[i * 5 + o]).sum::<f64>() + k[p])
                .fold(f64::INFINITY, f64::min);
            assert!(
                e <= min + 1e-9 && f <= min + 1e-9,
                "row {p}: bound above a sample"
            );
            if f <= t {
                // The same steps, up to f32 rounding in products of fewer rows.
                assert!(
                    (f - e).abs() <= 1e-5 * (1.0 + f.abs()),
                    "row {p}: {e} against {f}"
                );
                same += 1;
            } else {
                assert!(e > t && e <= f + 1e-9, "row {p}: {e} not in ({t}, {f}]");
                crossed += 1;
                moved += usize::from(crown.bound[p] <= t);
            }
        }
        // Both kinds of row are exercised, and α-CROWN moved some bounds past the threshold.
        assert!(
            moved > 0 && same > 0,
            "{crossed} crossed ({moved} by the steps), {same} stayed below"
        );
    }
}
