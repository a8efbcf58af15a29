//! CROWN (Zhang et al. 2018) on the plan: the back-substitution of `crate::certify::crown`,
//! sample by sample on f32 buffers instead of batched coefficient tensors.
//!
//! The linear bounds `Λ·h + b` of a set of specification rows travel backwards through the
//! plan: through an op's ReLU (fused or its own) by its relaxation, through an affine op by the
//! op's own input-gradient kernels (a linear layer's product with `W`, a convolution's
//! `Wᵀ`-product + col2im), each row of `Λ` one "sample" of the batch those kernels take. The
//! relaxations, the choice of intermediate bounds and every formula are those of the tensor
//! version (its module docs); `certify::crown`'s tests check that both give the same bounds.
//!
//! What makes it fast where the tensor version is slow:
//! - each sample gets only its own unstable neurons as rows (the tensor version takes the union
//!   over the batch), in parallel over samples;
//! - a row that starts as one neuron's unit vector enters the layer below as that neuron's
//!   weights (a row of `W`, a convolution kernel placed at its position), with no product;
//! - an upper bound is the negated lower bound of the negated row, so both come from one pass
//!   over `[+rows; −rows]`, reusing two ping-pong buffers per chunk of rows.

use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;

use super::conv::Conv;
use super::gemm::{matmul, View};
use super::kernels::{self, PoolShape};
use super::{cpu_values, pre_relu_interval, relu_in_place, Engine, Op};

/// Largest coefficient buffer (values) one chunk of rows may fill, per sample in flight.
const ROWS_BUDGET: usize = 1 << 22;

/// What CROWN bounds at the logits.
pub(crate) enum Spec<'a> {
    /// The margins `z_y − z_j` for each sample's label `y` (lower bounds only).
    Margins(&'a [u32]),
    /// Every logit (lower and upper bounds).
    Outputs,
}

/// The relaxation of an op's nonlinearity for every sample, batch-major.
enum Relax {
    /// An affine op without ReLU.
    None,
    /// The ReLU at the op's output (its input for a standalone ReLU): per neuron the lower
    /// line's slope (0 or 1), the upper line's slope and intercept.
    Relu {
        lower: Vec<f32>,
        upper: Vec<f32>,
        bias: Vec<f32>,
    },
    /// Non-overlapping max-pooling: per window the position (in its sample) of the element with
    /// the largest lower bound, whether the max is linear there, else the constant `max u`.
    Pool {
        chosen: Vec<u32>,
        linear: Vec<bool>,
        constant: Vec<f32>,
    },
}

impl Relax {
    /// auto_LiRPA's "adaptive" ReLU relaxation (see `certify::crown::Relaxation::new`, the
    /// same arithmetic in f32).
    fn relu(l: &[f32], u: &[f32]) -> Relax {
        let mut lower = vec![0f32; l.len()];
        let mut upper = vec![0f32; l.len()];
        let mut bias = vec![0f32; l.len()];
        for (k, (&l, &u)) in l.iter().zip(u).enumerate() {
            let l = l.min(0.0);
            let u = u.max(0.0).max(l + 1e-8);
            let slope = u / (u - l);
            upper[k] = slope;
            bias[k] = -l * slope;
            lower[k] = if slope > 0.5 { 1.0 } else { 0.0 };
        }
        Relax::Relu { lower, upper, bias }
    }
}

/// Rows of linear bounds over the value at one point of the plan, for one sample: `rows`
/// rows of `width` coefficients and one constant each.
struct Rows {
    lam: Vec<f32>,
    spare: Vec<f32>,
    bias: Vec<f32>,
    rows: usize,
    width: usize,
}

/// Where a set of rows starts.
#[derive(Clone, Copy)]
enum At {
    /// Op `i`'s output before its ReLU (a standalone ReLU's input).
    PreRelu(usize),
    /// The logits.
    Logits,
}

impl Engine {
    /// CROWN bounds of `spec` over the input box `[lower, upper]` (`N × input`): for
    /// [`Spec::Margins`] the margins' lower bounds (`N × classes`, `+∞` at the label) twice,
    /// for [`Spec::Outputs`] the logits' lower and upper bounds. `full` computes every hidden
    /// neuron's bounds by back-substitution, else only those interval arithmetic leaves
    /// unstable (the tensor version's `Intermediate`). `None` when the plan is not a chain or
    /// has an overlapping max-pool, which CROWN does not relax.
    pub(crate) fn crown(
        &self,
        lower: &Tensor,
        upper: &Tensor,
        spec: Spec<'_>,
        full: bool,
    ) -> Result<Option<(Tensor, Tensor)>> {
        let relaxable = self.ops.iter().all(|op| match op {
            Op::MaxPool(g) => g.k == g.stride,
            op => !matches!(op, Op::Add { .. }),
        });
        if !self.is_chain() || !relaxable {
            return Ok(None);
        }
        let n = lower.dim(0)?;
        let (lower, upper) = (lower.contiguous()?, upper.contiguous()?);
        let lo = cpu_values(&lower, "CROWN lower bound", |v: &[f32]| Ok(v.to_vec()))?;
        let hi = cpu_values(&upper, "CROWN upper bound", |v: &[f32]| Ok(v.to_vec()))?;
        let boxes = Boxes {
            lo: &lo,
            hi: &hi,
            size: self.sizes[0],
        };
        let relax = self.relaxations(boxes, n, full);
        let classes = self.classes();
        let threads = inner_threads(n);
        let per_sample = |b: usize| -> (Vec<f32>, Vec<f32>) {
            match spec {
                Spec::Margins(labels) => {
                    let y = labels[b] as usize;
                    let others: Vec<usize> = (0..classes).filter(|&j| j != y).collect();
                    let mut rows = Rows::new(others.len(), classes);
                    for (r, &j) in others.iter().enumerate() {
                        rows.lam[r * classes + y] = 1.0;
                        rows.lam[r * classes + j] = -1.0;
                    }
                    self.substitute(&relax, b, self.ops.len(), &mut rows, threads);
                    let mut out = vec![f32::INFINITY; classes];
                    for (&j, v) in others.iter().zip(rows.concretize(boxes.of(b))) {
                        out[j] = v;
                    }
                    (out.clone(), out)
                }
                Spec::Outputs => {
                    let units: Vec<usize> = (0..classes).collect();
                    self.unit_bounds(&relax, b, At::Logits, &units, boxes, threads)
                }
            }
        };
        let bounds: Vec<(Vec<f32>, Vec<f32>)> = (0..n).into_par_iter().map(per_sample).collect();
        let (l, u): (Vec<Vec<f32>>, Vec<Vec<f32>>) = bounds.into_iter().unzip();
        Ok(Some((
            Tensor::from_vec(l.concat(), (n, classes), &Device::Cpu)?,
            Tensor::from_vec(u.concat(), (n, classes), &Device::Cpu)?,
        )))
    }

    /// Every op's relaxation, in order, with the tensor version's intermediate bounds: the
    /// first ReLU after at most one mixing op takes the interval (the exact range there), a
    /// later one CROWN bounds (for every neuron, or for the unstable ones with the interval
    /// elsewhere); interval arithmetic carries the latest bounds forward and relaxes
    /// max-pooling.
    fn relaxations(&self, boxes: Boxes<'_>, n: usize, full: bool) -> Vec<Relax> {
        let mut relax: Vec<Relax> = Vec::with_capacity(self.ops.len());
        let (mut l, mut u) = (boxes.lo.to_vec(), boxes.hi.to_vec());
        let (mut mixing, mut first) = (0, true);
        let threads = inner_threads(n);
        for (i, op) in self.ops.iter().enumerate() {
            let sizes = (self.sizes[i], self.sizes[i + 1]);
            if matches!(op, Op::Linear { .. } | Op::Conv { .. } | Op::AvgPool(_)) {
                mixing += 1;
            }
            // The op's output before any ReLU: its input for a standalone ReLU.
            let (mut pl, mut pu) = if matches!(op, Op::Relu) {
                (l.clone(), u.clone())
            } else {
                pre_relu_interval(op, (&l, &u), n, sizes)
            };
            if op.relu() {
                if !(first && mixing <= 1) {
                    let s = sizes.1;
                    let crown: Vec<(Vec<f32>, Vec<f32>)> = (0..n)
                        .into_par_iter()
                        .map(|b| {
                            let (rl, ru) = (&pl[b * s..][..s], &pu[b * s..][..s]);
                            let units: Vec<usize> = (0..s)
                                .filter(|&k| full || (rl[k] < 0.0 && ru[k] > 0.0))
                                .collect();
                            let (mut l, mut u) = (rl.to_vec(), ru.to_vec());
                            if !units.is_empty() {
                                let (cl, cu) = self.unit_bounds(
                                    &relax,
                                    b,
                                    At::PreRelu(i),
                                    &units,
                                    boxes,
                                    threads,
                                );
                                for (j, &k) in units.iter().enumerate() {
                                    (l[k], u[k]) = (cl[j], cu[j]);
                                }
                            }
                            (l, u)
                        })
                        .collect();
                    let (cl, cu): (Vec<Vec<f32>>, Vec<Vec<f32>>) = crown.into_iter().unzip();
                    (pl, pu) = (cl.concat(), cu.concat());
                }
                first = false;
                relax.push(Relax::relu(&pl, &pu));
                relu_in_place(&mut pl);
                relu_in_place(&mut pu);
            } else if let Op::MaxPool(g) = op {
                relax.push(Relax::pool(&l, &u, g, sizes.0 / (g.h * g.w)));
            } else {
                relax.push(Relax::None);
            }
            (l, u) = (pl, pu);
        }
        relax
    }

    /// Lower and upper CROWN bounds of sample `b`'s neurons `units` of the value `at`, in
    /// chunks of rows within [`ROWS_BUDGET`], each unit as `+e` and `−e` (an upper bound is the
    /// negated lower bound of the negated row).
    fn unit_bounds(
        &self,
        relax: &[Relax],
        b: usize,
        at: At,
        units: &[usize],
        boxes: Boxes<'_>,
        threads: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        // The activation the rows reach first, and the value they start on.
        let (from, top) = match at {
            At::PreRelu(i) => (i, i + 1),
            At::Logits => (self.ops.len(), self.ops.len()),
        };
        let widest = self.sizes[..=top].iter().copied().max().unwrap_or(1);
        let chunk = (ROWS_BUDGET / (2 * widest).max(1)).clamp(1, units.len().max(1));
        let (mut lower, mut upper) = (Vec::with_capacity(units.len()), Vec::new());
        for part in units.chunks(chunk) {
            let mut rows = self.unit_rows(at, part, threads);
            self.substitute(relax, b, from, &mut rows, threads);
            let bound = rows.concretize(boxes.of(b));
            lower.extend_from_slice(&bound[..part.len()]);
            upper.extend(bound[part.len()..].iter().map(|v| -v));
        }
        (lower, upper)
    }

    /// The rows `+e_k` then `−e_k` for the units `k` of the value `at`, moved through op `i`'s
    /// affine map for [`At::PreRelu`]`(i)` (a unit of a linear layer or a convolution enters as
    /// its weights, its bias as the constant, with no product): rows over activation `i`, or
    /// over the logits for [`At::Logits`].
    fn unit_rows(&self, at: At, units: &[usize], threads: usize) -> Rows {
        let m = units.len();
        let unit = |r: usize| (units[r % m], if r < m { 1.0 } else { -1.0 });
        let (op, width) = match at {
            At::Logits => (None, self.classes()),
            At::PreRelu(i) => (Some(&self.ops[i]), self.sizes[i + 1]),
        };
        match op {
            Some(Op::Linear { w, b, d_in, .. }) => {
                let mut rows = Rows::new(2 * m, *d_in);
                for r in 0..2 * m {
                    let (k, s) = unit(r);
                    let row = &mut rows.lam[r * d_in..][..*d_in];
                    for (d, &v) in row.iter_mut().zip(&w[k * d_in..][..*d_in]) {
                        *d = s * v;
                    }
                    rows.bias[r] = s * b[k];
                }
                rows
            }
            Some(Op::Conv { w, b, g, .. }) => {
                let (plane, size_in, taps) = (g.plane(), g.c_in * g.h * g.w, g.k * g.k);
                let mut rows = Rows::new(2 * m, size_in);
                for r in 0..2 * m {
                    let (k, s) = unit(r);
                    let (co, oy, ox) = (k / plane, (k % plane) / g.ow, k % g.ow);
                    let row = &mut rows.lam[r * size_in..][..size_in];
                    let inside = |o: usize, t: usize, extent: usize| {
                        (o * g.stride + t)
                            .checked_sub(g.pad)
                            .filter(|&v| v < extent)
                    };
                    for ci in 0..g.c_in {
                        let kernel = &w[(co * g.c_in + ci) * taps..][..taps];
                        for ky in 0..g.k {
                            let Some(iy) = inside(oy, ky, g.h) else {
                                continue;
                            };
                            for kx in 0..g.k {
                                let Some(ix) = inside(ox, kx, g.w) else {
                                    continue;
                                };
                                row[(ci * g.h + iy) * g.w + ix] = s * kernel[ky * g.k + kx];
                            }
                        }
                    }
                    rows.bias[r] = s * b[co];
                }
                rows
            }
            op => {
                let mut rows = Rows::new(2 * m, width);
                for r in 0..2 * m {
                    let (k, s) = unit(r);
                    rows.lam[r * width + k] = s;
                }
                if let Some(op) = op.filter(|op| !matches!(op, Op::Relu)) {
                    self.affine_step(op, &mut rows, threads);
                }
                rows
            }
        }
    }

    /// Sample `b`'s rows over activation `from` (op `from − 1`'s output) through ops
    /// `from − 1, …, 0`, each by its relaxation and then its affine map: rows over the input.
    fn substitute(&self, relax: &[Relax], b: usize, from: usize, rows: &mut Rows, threads: usize) {
        for i in (0..from).rev() {
            let op = &self.ops[i];
            let s = self.sizes[i + 1];
            match &relax[i] {
                Relax::Relu { lower, upper, bias } => rows.through_relu(
                    (&lower[b * s..][..s], &upper[b * s..][..s]),
                    &bias[b * s..][..s],
                ),
                Relax::Pool {
                    chosen,
                    linear,
                    constant,
                } => {
                    let windows = (&chosen[b * s..][..s], &linear[b * s..][..s]);
                    rows.through_pool(windows, &constant[b * s..][..s], self.sizes[i]);
                    continue;
                }
                Relax::None => {}
            }
            self.affine_step(op, rows, threads);
        }
    }

    /// Rows over op `op`'s output (before any ReLU) to rows over its input, the constant
    /// collecting `Λ·bias`.
    fn affine_step(&self, op: &Op, rows: &mut Rows, threads: usize) {
        let n = rows.rows;
        match op {
            Op::Linear {
                w, b, d_in, d_out, ..
            } => {
                for (r, bias) in rows.bias.iter_mut().enumerate() {
                    *bias += dot(&rows.lam[r * d_out..][..*d_out], b, |v| v);
                }
                rows.replace(*d_in, |lam, out| {
                    matmul(
                        (n, *d_in, *d_out),
                        out,
                        View::rows(lam, *d_out),
                        View::rows(w, *d_in),
                        threads,
                    )
                });
            }
            Op::Conv {
                w, wt, b, c_out, g, ..
            } => {
                let plane = g.plane();
                for (r, bias) in rows.bias.iter_mut().enumerate() {
                    let row = &rows.lam[r * c_out * plane..][..c_out * plane];
                    for (run, &bc) in row.chunks(plane).zip(b) {
                        *bias += bc * sum(run);
                    }
                }
                let conv = Conv {
                    w,
                    wt,
                    c_out: *c_out,
                    g,
                };
                rows.replace(g.c_in * g.h * g.w, |lam, out| conv.backward(lam, out));
            }
            Op::AvgPool(g) => {
                let (plane_in, plane_out) = (g.h * g.w, g.oh * g.ow);
                let width = rows.width / plane_out * plane_in;
                rows.replace(width, |lam, out| {
                    for (gin, gout) in out.chunks_mut(plane_in).zip(lam.chunks(plane_out)) {
                        kernels::avg_pool_back(gout, gin, g);
                    }
                });
            }
            Op::Affine {
                scale,
                shift,
                plane,
            } => rows.per_channel(*plane, |c| (scale[c], shift[c])),
            Op::Normalize { mean, std, plane } => {
                rows.per_channel(*plane, |c| (1.0 / std[c], -mean[c] / std[c]))
            }
            Op::Relu => {}
            Op::MaxPool(_) | Op::Add { .. } => {
                unreachable!("max-pooling is relaxed, and CROWN runs on chains only")
            }
        }
    }
}

/// Threads one sample's products may use: all of them when there are fewer samples than
/// threads, else one (the samples run in parallel).
fn inner_threads(samples: usize) -> usize {
    let threads = rayon::current_num_threads();
    if samples >= threads {
        1
    } else {
        threads
    }
}

/// Accumulators of the sums here: independent partial sums vectorise, one f32 running sum
/// does not.
const LANES: usize = 16;

/// `Σ f(a_k)·b_k`.
fn dot(a: &[f32], b: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = (ca.remainder().iter().zip(cb.remainder()))
        .map(|(&a, b)| f(a) * b)
        .sum();
    for (a, b) in ca.zip(cb) {
        for j in 0..LANES {
            acc[j] += f(a[j]) * b[j];
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn sum(a: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = a.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for a in chunks {
        for j in 0..LANES {
            acc[j] += a[j];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The input box of every sample, batch-major.
#[derive(Clone, Copy)]
struct Boxes<'a> {
    lo: &'a [f32],
    hi: &'a [f32],
    size: usize,
}

impl<'a> Boxes<'a> {
    /// Sample `b`'s box.
    fn of(&self, b: usize) -> (&'a [f32], &'a [f32]) {
        (
            &self.lo[b * self.size..][..self.size],
            &self.hi[b * self.size..][..self.size],
        )
    }
}

impl Relax {
    /// Linear bounds of non-overlapping max-pooling on its input interval (see
    /// `certify::crown::PoolRelaxation`): per window the first element with the largest lower
    /// bound; the max is linear there when that lower bound is at least every other element's
    /// upper bound, else bounded above by the constant `max u`.
    fn pool(l: &[f32], u: &[f32], g: &PoolShape, channels: usize) -> Relax {
        let (plane_in, plane_out) = (g.h * g.w, g.oh * g.ow);
        let windows = l.len() / plane_in * plane_out;
        let mut chosen = vec![0u32; windows];
        let mut linear = vec![false; windows];
        let mut constant = vec![0f32; windows];
        for (p, (l, u)) in l.chunks(plane_in).zip(u.chunks(plane_in)).enumerate() {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let cells = (0..g.k * g.k)
                        .map(|t| (oy * g.stride + t / g.k) * g.w + ox * g.stride + t % g.k);
                    let mut best = oy * g.stride * g.w + ox * g.stride;
                    for c in cells.clone() {
                        if l[c] > l[best] {
                            best = c;
                        }
                    }
                    let others = cells
                        .filter(|&c| c != best)
                        .map(|c| u[c])
                        .fold(f32::NEG_INFINITY, f32::max);
                    let o = p * plane_out + oy * g.ow + ox;
                    // The position within the sample, not just the plane.
                    chosen[o] = ((p % channels) * plane_in + best) as u32;
                    if l[best] >= others {
                        linear[o] = true;
                    } else {
                        constant[o] = others.max(u[best]);
                    }
                }
            }
        }
        Relax::Pool {
            chosen,
            linear,
            constant,
        }
    }
}

impl Rows {
    /// `rows` rows of `width` zero coefficients and zero constants.
    fn new(rows: usize, width: usize) -> Rows {
        Rows {
            lam: vec![0f32; rows * width],
            spare: Vec::new(),
            bias: vec![0f32; rows],
            rows,
            width,
        }
    }

    /// Resizes `spare` to `rows × width`, lets `fill` overwrite all of it from `lam`, and
    /// swaps it in.
    fn replace(&mut self, width: usize, fill: impl FnOnce(&[f32], &mut [f32])) {
        self.spare.resize(self.rows * width, 0.0);
        fill(&self.lam, &mut self.spare);
        std::mem::swap(&mut self.lam, &mut self.spare);
        self.width = width;
    }

    /// Through a ReLU's relaxation, for a lower bound: positive coefficients take the lower
    /// line, negative ones the upper line (and its intercept).
    fn through_relu(&mut self, (lower, upper): (&[f32], &[f32]), intercept: &[f32]) {
        // Branch-free and in fixed-width chunks, so that it vectorises: `lam = pos + neg`, one
        // of them zero.
        fn step(v: &mut f32, add: &mut f32, (lo, up, ic): (f32, f32, f32)) {
            let lam = *v;
            let pos = if lam > 0.0 { lam } else { 0.0 };
            let neg = lam - pos;
            *add += neg * ic;
            *v = pos * lo + neg * up;
        }
        let width = self.width;
        for (row, bias) in self.lam.chunks_mut(width).zip(self.bias.iter_mut()) {
            let mut add = [0f32; LANES];
            let mut chunks = row.chunks_exact_mut(LANES);
            let lines = lower.chunks_exact(LANES).zip(upper.chunks_exact(LANES));
            for ((v, (lo, up)), ic) in (&mut chunks).zip(lines).zip(intercept.chunks_exact(LANES)) {
                for j in 0..LANES {
                    step(&mut v[j], &mut add[j], (lo[j], up[j], ic[j]));
                }
            }
            let tail = width / LANES * LANES;
            for (k, v) in row[tail..].iter_mut().enumerate() {
                let k = tail + k;
                step(v, &mut add[0], (lower[k], upper[k], intercept[k]));
            }
            *bias += add.iter().sum::<f32>();
        }
    }

    /// Through max-pooling, for a lower bound: each window's coefficient moves to its chosen
    /// element (a negative one only where the max is linear; elsewhere it takes the constant).
    fn through_pool(
        &mut self,
        (chosen, linear): (&[u32], &[bool]),
        constant: &[f32],
        width_in: usize,
    ) {
        let bias = &mut self.bias;
        let width = self.width;
        self.spare.clear();
        self.spare.resize(self.rows * width_in, 0.0);
        for (r, (row, out)) in self
            .lam
            .chunks(width)
            .zip(self.spare.chunks_mut(width_in))
            .enumerate()
        {
            for (o, &lam) in row.iter().enumerate() {
                if lam >= 0.0 || linear[o] {
                    out[chosen[o] as usize] = lam;
                } else {
                    bias[r] += lam * constant[o];
                }
            }
        }
        std::mem::swap(&mut self.lam, &mut self.spare);
        self.width = width_in;
    }

    /// Through `y = x·scale_c + shift_c` per channel of `plane` values (`f(c) = (scale,
    /// shift)`).
    fn per_channel(&mut self, plane: usize, f: impl Fn(usize) -> (f32, f32)) {
        for (row, bias) in self.lam.chunks_mut(self.width).zip(self.bias.iter_mut()) {
            for (c, run) in row.chunks_mut(plane).enumerate() {
                let (scale, shift) = f(c);
                for v in run {
                    *bias += *v * shift;
                    *v *= scale;
                }
            }
        }
    }

    /// The minimum of each row over the box `[lo, hi]`: `Λ·c − |Λ|·r + constant`.
    fn concretize(&self, (lo, hi): (&[f32], &[f32])) -> Vec<f32> {
        let centre: Vec<f32> = hi.iter().zip(lo).map(|(u, l)| (u + l) * 0.5).collect();
        let radius: Vec<f32> = hi.iter().zip(lo).map(|(u, l)| (u - l) * 0.5).collect();
        (0..self.rows)
            .map(|r| {
                let row = &self.lam[r * self.width..][..self.width];
                dot(row, &centre, |v| v) - dot(row, &radius, f32::abs) + self.bias[r]
            })
            .collect()
    }
}
