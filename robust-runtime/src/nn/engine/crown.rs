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
//! On a graph, as auto_LiRPA does, the rows reaching a residual sum go on into both of its
//! terms, and the rows of two paths into one activation are summed there before they go on:
//! ops are visited from the last to the first, so every path into an activation has arrived
//! when its producer is reached.
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

use super::conv::{self, with_scratch, Conv};
use super::gemm::{matmul, View};
use super::kernels::{self, ConvShape, PoolShape};
use super::{cpu_values, relu_in_place, Engine, Op};

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
    /// Over an image, the rectangle of its planes the coefficients cover (zero outside it):
    /// `width = channels × h × w`. `None`: the whole value.
    window: Option<Window>,
}

/// A rectangle of an image's planes, the same in every channel.
///
/// A row that starts at one neuron of a convolution's output depends on few inputs: a 3×3
/// window of the layer below, 5×5 of the one below that. Rows over such a window, instead of
/// over the whole image, make the back-substitution of a convolutional network's intermediate
/// bounds as many times cheaper as the image is larger than the window (auto_LiRPA's
/// "patches" serve the same end).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Window {
    y0: usize,
    x0: usize,
    h: usize,
    w: usize,
}

impl Window {
    fn plane(&self) -> usize {
        self.h * self.w
    }

    /// The smallest window holding both.
    fn union(self, o: Window) -> Window {
        let (y0, x0) = (self.y0.min(o.y0), self.x0.min(o.x0));
        let y1 = (self.y0 + self.h).max(o.y0 + o.h);
        let x1 = (self.x0 + self.w).max(o.x0 + o.w);
        Window {
            y0,
            x0,
            h: y1 - y0,
            w: x1 - x0,
        }
    }
}

/// Positions of a window's tiles: [`Engine::unit_bounds`] bounds the units of an image in tiles
/// of `TILE × TILE` positions, each tile's rows over the window its positions read.
const TILE: usize = 1;

/// A window as the rectangle [`Rows::reframe`] takes.
fn frame(win: Window) -> (isize, isize, usize, usize) {
    (win.y0 as isize, win.x0 as isize, win.h, win.w)
}

/// A sample's `values` (`c × h × w`, the image `image`) inside window `win`, `c × win.h × win.w`.
fn gather<T: Copy>(values: &[T], (c, h, w): (usize, usize, usize), win: Window) -> Vec<T> {
    let mut out = Vec::with_capacity(c * win.plane());
    for ch in 0..c {
        for y in win.y0..win.y0 + win.h {
            out.extend_from_slice(&values[(ch * h + y) * w + win.x0..][..win.w]);
        }
    }
    out
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
    /// unstable (the tensor version's `Intermediate`). `None` when the plan has an overlapping
    /// max-pool, which CROWN does not relax.
    pub(crate) fn crown(
        &self,
        lower: &Tensor,
        upper: &Tensor,
        spec: Spec<'_>,
        full: bool,
    ) -> Result<Option<(Tensor, Tensor)>> {
        let relaxable =
            (self.ops.iter()).all(|op| !matches!(op, Op::MaxPool(g) if g.k != g.stride));
        if !relaxable {
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
                    let rows =
                        self.substitute(&relax, b, self.seeded(self.ops.len(), rows), threads);
                    let mut out = vec![f32::INFINITY; classes];
                    for (&j, v) in others.iter().zip(self.bound_of(&rows, boxes.of(b))) {
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
    /// first ReLU after at most one mixing op (and no residual sum) takes the interval (the
    /// exact range there), a later one CROWN bounds (for every neuron, or for the unstable ones
    /// with the interval elsewhere); interval arithmetic carries the latest bounds forward,
    /// sums the boxes of a residual sum's two inputs and relaxes max-pooling.
    fn relaxations(&self, boxes: Boxes<'_>, n: usize, full: bool) -> Vec<Relax> {
        let mut relax: Vec<Relax> = Vec::with_capacity(self.ops.len());
        // Every activation's box while a later op still reads it (a chain keeps one).
        let last_read = self.last_reads(self.ops.len());
        let mut acts: Vec<Option<(Vec<f32>, Vec<f32>)>> = vec![None; self.sizes.len()];
        acts[0] = Some((boxes.lo.to_vec(), boxes.hi.to_vec()));
        let (mut mixing, mut first) = (0, true);
        let threads = inner_threads(n);
        for (i, op) in self.ops.iter().enumerate() {
            let j = self.inputs[i];
            let sizes = (self.sizes[j], self.sizes[i + 1]);
            if matches!(
                op,
                Op::Linear { .. } | Op::Conv { .. } | Op::AvgPool(_) | Op::Add { .. }
            ) {
                mixing += 1;
            }
            // The op's output before any ReLU: its input for a standalone ReLU.
            let (mut pl, mut pu) = self.box_before_relu(i, &acts, n);
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
                let (l, u) = acts[j].as_ref().expect("an input made before");
                relax.push(Relax::pool(l, u, g, sizes.0 / (g.h * g.w)));
            } else {
                relax.push(Relax::None);
            }
            self.keep_box(i, &mut acts, &last_read, (pl, pu));
        }
        relax
    }

    /// Lower and upper CROWN bounds of sample `b`'s neurons `units` of the value `at`, in
    /// chunks of rows within [`ROWS_BUDGET`], each unit as `+e` and `−e` (an upper bound is the
    /// negated lower bound of the negated row). The units of an image go by tiles of positions
    /// ([`TILE`]), each tile's rows over the window it covers.
    fn unit_bounds(
        &self,
        relax: &[Relax],
        b: usize,
        at: At,
        units: &[usize],
        boxes: Boxes<'_>,
        threads: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        // The last activation the rows may reach.
        let top = match at {
            At::PreRelu(i) => i + 1,
            At::Logits => self.ops.len(),
        };
        let widest = self.sizes[..=top].iter().copied().max().unwrap_or(1);
        let chunk = (ROWS_BUDGET / (2 * widest).max(1)).clamp(1, units.len().max(1));
        if let (At::PreRelu(i), Some(image)) = (at, self.image(top)) {
            return self.tiled_unit_bounds(relax, b, i, units, image, (boxes, chunk), threads);
        }
        let (mut lower, mut upper) = (Vec::with_capacity(units.len()), Vec::new());
        for part in units.chunks(chunk) {
            let pending = self.unit_rows(at, part, threads);
            let rows = self.substitute(relax, b, pending, threads);
            let bound = self.bound_of(&rows, boxes.of(b));
            lower.extend_from_slice(&bound[..part.len()]);
            upper.extend(bound[part.len()..].iter().map(|v| -v));
        }
        (lower, upper)
    }

    /// [`Engine::unit_bounds`] of units of the image `(c, h, w)` that op `i` makes (before its
    /// ReLU): per tile of [`TILE`] × [`TILE`] positions, the rows `±e_k` of its units over the
    /// tile, through op `i` and on.
    #[allow(clippy::too_many_arguments)]
    fn tiled_unit_bounds(
        &self,
        relax: &[Relax],
        b: usize,
        i: usize,
        units: &[usize],
        (c, h, w): (usize, usize, usize),
        (boxes, chunk): (Boxes<'_>, usize),
        threads: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        let plane = h * w;
        let across = w.div_ceil(TILE);
        let mut tiles: Vec<Vec<usize>> = vec![Vec::new(); h.div_ceil(TILE) * across];
        for (p, &k) in units.iter().enumerate() {
            let (y, x) = ((k % plane) / w, k % w);
            tiles[(y / TILE) * across + x / TILE].push(p);
        }
        let (mut lower, mut upper) = (vec![0f32; units.len()], vec![0f32; units.len()]);
        for (t, tile) in tiles.iter().enumerate().filter(|(_, t)| !t.is_empty()) {
            let (y0, x0) = ((t / across) * TILE, (t % across) * TILE);
            let win = Window {
                y0,
                x0,
                h: TILE.min(h - y0),
                w: TILE.min(w - x0),
            };
            for part in tile.chunks(chunk) {
                let m = part.len();
                let mut rows = Rows::windowed(2 * m, c, win);
                for (r, &p) in part.iter().enumerate() {
                    let k = units[p];
                    let (ch, y, x) = (k / plane, (k % plane) / w, k % w);
                    let at = (ch * win.h + y - y0) * win.w + x - x0;
                    rows.lam[r * rows.width + at] = 1.0;
                    rows.lam[(m + r) * rows.width + at] = -1.0;
                }
                let mut pending = self.seeded(i + 1, rows);
                self.through_op(i, &mut pending, threads);
                let rows = self.substitute(relax, b, pending, threads);
                let bound = self.bound_of(&rows, boxes.of(b));
                for (r, &p) in part.iter().enumerate() {
                    (lower[p], upper[p]) = (bound[r], -bound[m + r]);
                }
            }
        }
        (lower, upper)
    }

    /// The per-sample shape of activation `j` as `(channels, h, w)`, if it is an image.
    fn image(&self, j: usize) -> Option<(usize, usize, usize)> {
        match self.dims[j][..] {
            [c, h, w] => Some((c, h, w)),
            _ => None,
        }
    }

    /// The minimum of each row (over the input) over a sample's input box.
    fn bound_of(&self, rows: &Rows, (lo, hi): (&[f32], &[f32])) -> Vec<f32> {
        match (rows.window, self.image(0)) {
            (Some(win), Some(image)) => {
                rows.concretize((&gather(lo, image, win), &gather(hi, image, win)))
            }
            _ => rows.concretize((lo, hi)),
        }
    }

    /// `rows` over activation `at`, the only rows pending on activations `0..=at`.
    fn seeded(&self, at: usize, rows: Rows) -> Vec<Option<Rows>> {
        let mut pending: Vec<Option<Rows>> = (0..=at).map(|_| None).collect();
        pending[at] = Some(rows);
        pending
    }

    /// The rows `+e_k` then `−e_k` for the units `k` of the value `at` (not an image: see
    /// [`Engine::tiled_unit_bounds`]), moved through op `i`'s affine map for
    /// [`At::PreRelu`]`(i)` (a unit of a linear layer enters as its weights, its bias as the
    /// constant, with no product; a residual sum's unit enters both terms): rows pending on the
    /// activations op `i` reads, or on the logits for [`At::Logits`].
    fn unit_rows(&self, at: At, units: &[usize], threads: usize) -> Vec<Option<Rows>> {
        let m = units.len();
        let unit = |r: usize| (units[r % m], if r < m { 1.0 } else { -1.0 });
        let (i, width) = match at {
            At::Logits => {
                let width = self.classes();
                let mut rows = Rows::new(2 * m, width);
                for r in 0..2 * m {
                    let (k, s) = unit(r);
                    rows.lam[r * width + k] = s;
                }
                return self.seeded(self.ops.len(), rows);
            }
            At::PreRelu(i) => (i, self.sizes[i + 1]),
        };
        let source = self.inputs[i];
        let rows = match &self.ops[i] {
            Op::Linear { w, b, d_in, .. } => {
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
            _ => {
                let mut rows = Rows::new(2 * m, width);
                for r in 0..2 * m {
                    let (k, s) = unit(r);
                    rows.lam[r * width + k] = s;
                }
                let mut pending = self.seeded(i + 1, rows);
                self.through_op(i, &mut pending, threads);
                return pending;
            }
        };
        self.seeded(source, rows)
    }

    /// Sample `b`'s rows pending on activations (op `i − 1`'s output for activation `i`)
    /// through ops `pending.len() − 2, …, 0`, each by its relaxation and then its affine map,
    /// the rows of every path summed where paths meet: rows over the input.
    fn substitute(
        &self,
        relax: &[Relax],
        b: usize,
        mut pending: Vec<Option<Rows>>,
        threads: usize,
    ) -> Rows {
        for i in (0..pending.len() - 1).rev() {
            let Some(rows) = pending[i + 1].as_mut() else {
                continue;
            };
            let s = self.sizes[i + 1];
            let image = self.image(i + 1);
            match &relax[i] {
                Relax::Relu { lower, upper, bias } => {
                    let lines = (
                        &lower[b * s..][..s],
                        &upper[b * s..][..s],
                        &bias[b * s..][..s],
                    );
                    match (rows.window, image) {
                        (Some(win), Some(image)) => {
                            let part = |v: &[f32]| gather(v, image, win);
                            rows.through_relu((&part(lines.0), &part(lines.1)), &part(lines.2));
                        }
                        _ => rows.through_relu((lines.0, lines.1), lines.2),
                    }
                }
                Relax::Pool {
                    chosen,
                    linear,
                    constant,
                } => {
                    let windows = (&chosen[b * s..][..s], &linear[b * s..][..s]);
                    let constant = &constant[b * s..][..s];
                    let j = self.inputs[i];
                    match (rows.window, image, &self.ops[i]) {
                        (Some(win), Some(image), Op::MaxPool(g)) => {
                            rows.through_pool_window((windows, constant), image, g, win)
                        }
                        _ => rows.through_pool(windows, constant, self.sizes[j]),
                    }
                    let rows = pending[i + 1].take().expect("rows pending");
                    self.deposit(&mut pending, j, rows);
                    continue;
                }
                Relax::None => {}
            }
            self.through_op(i, &mut pending, threads);
        }
        pending[0].take().expect("every path reaches the input")
    }

    /// The rows pending on op `i`'s output (before any ReLU) through its affine map, onto the
    /// activations it reads: a residual sum's rows go to both terms (the constant to one);
    /// windowed rows stay windowed through the maps that act locally.
    fn through_op(&self, i: usize, pending: &mut [Option<Rows>], threads: usize) {
        let mut rows = pending[i + 1].take().expect("rows pending");
        let op = &self.ops[i];
        match (op, rows.window) {
            (Op::Add { other, .. }, _) => {
                let side = Rows {
                    lam: rows.lam.clone(),
                    spare: Vec::new(),
                    bias: vec![0.0; rows.rows],
                    rows: rows.rows,
                    width: rows.width,
                    window: rows.window,
                };
                self.deposit(pending, *other, side);
            }
            (Op::Concat { other }, _) => {
                // Each row's first part is over the input, the rest over `other` (in a window
                // too: the channels of both share it).
                let (s_a, s_out) = (self.sizes[self.inputs[i]], self.sizes[i + 1]);
                let split = rows.width * s_a / s_out;
                let rest = rows.width - split;
                let mut side = Rows::new(rows.rows, rest);
                side.window = rows.window;
                for (r, row) in rows.lam.chunks(rows.width).enumerate() {
                    side.lam[r * rest..][..rest].copy_from_slice(&row[split..]);
                }
                rows.replace(split, |lam, out| {
                    for (out, row) in out.chunks_mut(split.max(1)).zip(lam.chunks(split + rest)) {
                        out.copy_from_slice(&row[..split]);
                    }
                });
                self.deposit(pending, *other, side);
            }
            (Op::Relu, _) => {}
            (
                Op::Conv {
                    w, wk, b, c_out, g, ..
                },
                Some(win),
            ) => {
                let wk = wk.get_or_init(|| conv::channels_last(w, *c_out, g));
                rows.through_conv_window((wk, b, *c_out, g), win, threads);
            }
            (Op::AvgPool(g), Some(win)) => {
                let (c, ..) = self.image(i + 1).expect("an image");
                rows.through_avg_pool_window(c, g, win);
            }
            (Op::Affine { scale, shift, .. }, Some(win)) => {
                let plane = if scale.len() == 1 {
                    rows.width
                } else {
                    win.plane()
                };
                rows.per_channel(plane, |c| (scale[c], shift[c]));
            }
            (Op::Normalize { mean, std, .. }, Some(win)) => {
                let plane = if mean.len() == 1 {
                    rows.width
                } else {
                    win.plane()
                };
                rows.per_channel(plane, |c| (1.0 / std[c], -mean[c] / std[c]));
            }
            _ => {
                rows.densify(self.image(i + 1));
                self.affine_step(op, &mut rows, threads);
            }
        }
        self.deposit(pending, self.inputs[i], rows);
    }

    /// Adds `rows` to the rows pending on activation `j`: the linear bounds of two paths into
    /// it sum (over the union of their windows).
    fn deposit(&self, pending: &mut [Option<Rows>], j: usize, mut rows: Rows) {
        let Some(there) = &mut pending[j] else {
            pending[j] = Some(rows);
            return;
        };
        match (there.window, rows.window) {
            (Some(a), Some(b)) if a != b => {
                let (c, ..) = self.image(j).expect("windowed rows over an image");
                let both = a.union(b);
                there.reframe(c, frame(a), both);
                rows.reframe(c, frame(b), both);
            }
            (Some(_), None) | (None, Some(_)) => {
                there.densify(self.image(j));
                rows.densify(self.image(j));
            }
            _ => {}
        }
        debug_assert_eq!((there.rows, there.width), (rows.rows, rows.width));
        for (a, b) in there.lam.iter_mut().zip(&rows.lam) {
            *a += b;
        }
        for (a, b) in there.bias.iter_mut().zip(&rows.bias) {
            *a += b;
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
            Op::Relu | Op::Add { .. } => {}
            Op::MaxPool(_) => unreachable!("max-pooling is relaxed"),
            Op::Concat { .. } => unreachable!("a concatenation's rows are split by through_op"),
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
            window: None,
        }
    }

    /// Rows over window `win` of an image, zero.
    fn windowed(rows: usize, channels: usize, win: Window) -> Rows {
        Rows {
            window: Some(win),
            ..Rows::new(rows, channels * win.plane())
        }
    }

    /// The rows over rectangle `to` of an image of `c` channels, from their values over the
    /// rectangle `from` (top, left, height, width), which may reach outside the image: the
    /// values where both overlap, zero elsewhere in `to`.
    fn reframe(&mut self, c: usize, (top, left, h, w): (isize, isize, usize, usize), to: Window) {
        let (pf, pt) = (h * w, to.plane());
        self.spare.clear();
        self.spare.resize(self.rows * c * pt, 0.0);
        // The overlap, in the image's coordinates.
        let (ty, tx) = (to.y0 as isize, to.x0 as isize);
        let (y0, y1) = (top.max(ty), (top + h as isize).min(ty + to.h as isize));
        let (x0, x1) = (left.max(tx), (left + w as isize).min(tx + to.w as isize));
        if y1 > y0 && x1 > x0 {
            let run = (x1 - x0) as usize;
            for (src, dst) in self.lam.chunks(c * pf).zip(self.spare.chunks_mut(c * pt)) {
                for ch in 0..c {
                    for y in y0..y1 {
                        let from = ch * pf + (y - top) as usize * w + (x0 - left) as usize;
                        let at = ch * pt + (y - ty) as usize * to.w + (x0 - tx) as usize;
                        dst[at..at + run].copy_from_slice(&src[from..from + run]);
                    }
                }
            }
        }
        std::mem::swap(&mut self.lam, &mut self.spare);
        self.width = c * pt;
        self.window = Some(to);
    }

    /// Windowed rows over the image `image` as rows over all of it.
    fn densify(&mut self, image: Option<(usize, usize, usize)>) {
        if let (Some(win), Some((c, h, w))) = (self.window, image) {
            let full = Window { y0: 0, x0: 0, h, w };
            if win != full {
                self.reframe(c, frame(win), full);
            }
            self.window = None;
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

    /// Windowed rows over a convolution's output through its map: rows over the rectangle of
    /// the input that the window's outputs read, cropped to the image (what lies outside
    /// multiplies the padding's zeros).
    ///
    /// Channels-last, so that the scatter runs in long runs on a small window: each output
    /// position's coefficients (`c_out`) times the channels-last filters `wk` give its taps
    /// (`k × k × c_in`), and each filter row of them (`k·c_in` values) adds to one run of the
    /// input rectangle. (col2im in channel-major order adds runs of the window's width, one or
    /// two values on the first windows.)
    fn through_conv_window(
        &mut self,
        (wk, b, c_out, g): (&[f32], &[f32], usize, &ConvShape),
        win: Window,
        threads: usize,
    ) {
        let plane = win.plane();
        for (r, bias) in self.bias.iter_mut().enumerate() {
            let row = &self.lam[r * c_out * plane..][..c_out * plane];
            for (run, &bc) in row.chunks(plane).zip(b) {
                *bias += bc * sum(run);
            }
        }
        let (h, w) = ((win.h - 1) * g.stride + g.k, (win.w - 1) * g.stride + g.k);
        let (run, c_in) = (g.k * g.c_in, g.c_in);
        let (taps, n) = (g.k * run, self.rows * plane);
        let top = (win.y0 * g.stride) as isize - g.pad as isize;
        let left = (win.x0 * g.stride) as isize - g.pad as isize;
        let (y0, x0) = (top.max(0), left.max(0));
        let y1 = (top + h as isize).min(g.h as isize);
        let x1 = (left + w as isize).min(g.w as isize);
        let inside = Window {
            y0: y0 as usize,
            x0: x0 as usize,
            h: (y1 - y0) as usize,
            w: (x1 - x0) as usize,
        };
        let (dy, dx) = ((y0 - top) as usize, (x0 - left) as usize);
        self.spare.clear();
        self.spare.resize(self.rows * c_in * inside.plane(), 0.0);
        let rows = self.rows;
        with_scratch(
            (n * c_out, n * taps, rows * h * w * c_in),
            |gl, prod, acc| {
                for (r, row) in self.lam.chunks(c_out * plane).enumerate() {
                    for (co, run) in row.chunks(plane).enumerate() {
                        for (p, &v) in run.iter().enumerate() {
                            gl[(r * plane + p) * c_out + co] = v;
                        }
                    }
                }
                let rhs = View::rows(wk, taps);
                matmul((n, taps, c_out), prod, View::rows(gl, c_out), rhs, threads);
                acc.fill(0.0);
                for (r, acc) in acc.chunks_mut(h * w * c_in).enumerate() {
                    for oy in 0..win.h {
                        for ox in 0..win.w {
                            let p = &prod[(r * plane + oy * win.w + ox) * taps..][..taps];
                            for (ky, p) in p.chunks(run).enumerate() {
                                let at = ((oy * g.stride + ky) * w + ox * g.stride) * c_in;
                                for (d, v) in acc[at..at + run].iter_mut().zip(p) {
                                    *d += v;
                                }
                            }
                        }
                    }
                }
                // Back to channel-major, cropped to the image.
                let out_plane = inside.plane();
                for (acc, out) in
                    (acc.chunks(h * w * c_in)).zip(self.spare.chunks_mut(c_in * out_plane))
                {
                    for y in 0..inside.h {
                        for x in 0..inside.w {
                            let src = &acc[((y + dy) * w + x + dx) * c_in..][..c_in];
                            for (ci, &v) in src.iter().enumerate() {
                                out[ci * out_plane + y * inside.w + x] = v;
                            }
                        }
                    }
                }
            },
        );
        std::mem::swap(&mut self.lam, &mut self.spare);
        self.width = c_in * inside.plane();
        self.window = Some(inside);
    }

    /// Windowed rows over average pooling's output (of `c` channels) through it: rows over the
    /// rectangle of the input the window's outputs read.
    fn through_avg_pool_window(&mut self, c: usize, g: &PoolShape, win: Window) {
        let local = PoolShape {
            h: (win.h - 1) * g.stride + g.k,
            w: (win.w - 1) * g.stride + g.k,
            k: g.k,
            stride: g.stride,
            oh: win.h,
            ow: win.w,
        };
        let (plane_in, plane_out) = (local.h * local.w, win.plane());
        self.replace(c * plane_in, |lam, out| {
            for (gin, gout) in out.chunks_mut(plane_in).zip(lam.chunks(plane_out)) {
                kernels::avg_pool_back(gout, gin, &local);
            }
        });
        self.window = Some(Window {
            y0: win.y0 * g.stride,
            x0: win.x0 * g.stride,
            h: local.h,
            w: local.w,
        });
    }

    /// [`Rows::through_pool`] for windowed rows over max-pooling's output (the image `image`):
    /// onto the rectangle of the input that the window's outputs read.
    fn through_pool_window(
        &mut self,
        ((chosen, linear), constant): ((&[u32], &[bool]), &[f32]),
        image: (usize, usize, usize),
        g: &PoolShape,
        win: Window,
    ) {
        let inside = Window {
            y0: win.y0 * g.stride,
            x0: win.x0 * g.stride,
            h: (win.h - 1) * g.stride + g.k,
            w: (win.w - 1) * g.stride + g.k,
        };
        let plane_in = g.h * g.w;
        // Each window's chosen element, as a position in the input rectangle.
        let local: Vec<u32> = (gather(chosen, image, win).into_iter())
            .map(|a| {
                let (c, at) = (a as usize / plane_in, a as usize % plane_in);
                let (y, x) = (at / g.w - inside.y0, at % g.w - inside.x0);
                ((c * inside.h + y) * inside.w + x) as u32
            })
            .collect();
        let linear = gather(linear, image, win);
        let constant = gather(constant, image, win);
        self.through_pool((&local, &linear), &constant, image.0 * inside.plane());
        self.window = Some(inside);
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
