//! CROWN: linear relaxation-based bound propagation (Zhang et al. 2018, "Efficient Neural
//! Network Robustness Certification with General Activation Functions").
//!
//! A specification `C·z` of the network's output (the logits, or the margins `z_y − z_j`) is
//! propagated backwards as linear functions of each layer's output, `Λ·h + b`: affine layers
//! are composed exactly, and each nonlinear layer is replaced by two linear bounds valid on its
//! input interval `[l, u]`:
//!
//! - ReLU, upper: the chord `u/(u − l)·(x − l)` (unstable), `x` (active), `0` (inactive);
//!   lower: `x` or `0`, whichever is closer on `[l, u]` (slope 1 iff `u > −l`), the "adaptive"
//!   choice of the paper and of auto_LiRPA's default;
//! - non-overlapping max-pooling: see `PoolRelaxation` (auto_LiRPA's relaxation).
//!
//! Positive coefficients of a lower bound take the lower line and negative ones the upper line
//! (the other way round for the upper bound). At the input the linear function is minimised over
//! the box in closed form: `Λ·c − |Λ|·r + b`. The input intervals of every ReLU come from
//! backward passes started at that layer ("CROWN" in auto_LiRPA's terms, not CROWN-IBP), for
//! every neuron ([`Intermediate::Full`]) or only those interval arithmetic leaves unstable
//! ([`Intermediate::UnstableOnly`], the default); the bounds agree with auto_LiRPA's
//! `method="CROWN"` (`tests/reference/LIRPA.md`, `tests/reference_lirpa.rs`).
//!
//! Everything is batched tensor work on the model's device; the specification rows are processed
//! in chunks so that the coefficient tensors stay within [`MEMORY_BUDGET`] floats.

use candle_core::Tensor;

use crate::nn::{channel_shape, conv_transpose2d, Layer, Sequential, Spec};
use crate::{Error, Result};

/// Largest coefficient tensor (in values) one chunk of specification rows may create.
pub const MEMORY_BUDGET: usize = 1 << 25;

/// Which neurons of a hidden layer get their bounds from a CROWN backward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Intermediate {
    /// Every neuron (textbook CROWN; auto_LiRPA with `sparse_intermediate_bounds=False`).
    Full,
    /// Only neurons that interval arithmetic from the previous layer's bounds leaves unstable
    /// (`l < 0 < u`) for this sample; the others keep those interval bounds, which already fix
    /// their ReLU (identity or zero). The idea of auto_LiRPA's default sparse intermediate
    /// bounds, decided per sample so that results do not depend on the batch; on certified-
    /// trained networks, where most neurons are stable, this is many times faster, and it is
    /// never looser than `Full` on ReLU networks.
    #[default]
    UnstableOnly,
}

/// Lower and upper bounds of the output (`N × classes`) over the box `[lower, upper]`.
pub fn output_bounds(net: &Sequential, lower: &Tensor, upper: &Tensor) -> Result<(Tensor, Tensor)> {
    output_bounds_with(net, lower, upper, Intermediate::default())
}

/// [`output_bounds`] with a choice of intermediate bounds.
pub fn output_bounds_with(
    net: &Sequential,
    lower: &Tensor,
    upper: &Tensor,
    intermediate: Intermediate,
) -> Result<(Tensor, Tensor)> {
    check_pools(net)?;
    if let Some(engine) = net.engine().filter(|e| e.accepts(lower)) {
        let full = intermediate == Intermediate::Full;
        if let Some(bounds) = engine.crown(lower, upper, Spec::Outputs, full)? {
            return Ok(bounds);
        }
    }
    tensor_output_bounds(net, lower, upper, intermediate)
}

/// [`output_bounds_with`] as batched tensor operations: on any device, and the reference the
/// engine's version is tested against.
fn tensor_output_bounds(
    net: &Sequential,
    lower: &Tensor,
    upper: &Tensor,
    intermediate: Intermediate,
) -> Result<(Tensor, Tensor)> {
    let relax = relaxations(net, lower, upper, intermediate)?;
    let end = net.layers().len();
    let n = net.output_shape().iter().product();
    let rows: Vec<usize> = (0..n).collect();
    let (l, u) = rows_bounds(net, end, &rows, &relax, lower, upper)?;
    Ok((l, u))
}

/// Lower bounds of the margins `z_y − z_j` (`N × classes`, `+∞` at `j = y`), with the margin
/// specification propagated through the network (tighter than subtracting logit bounds).
pub fn margin_lower_bounds(
    net: &Sequential,
    lower: &Tensor,
    upper: &Tensor,
    labels: &[u32],
) -> Result<Tensor> {
    margin_lower_bounds_with(net, lower, upper, labels, Intermediate::default())
}

/// [`margin_lower_bounds`] with a choice of intermediate bounds.
pub fn margin_lower_bounds_with(
    net: &Sequential,
    lower: &Tensor,
    upper: &Tensor,
    labels: &[u32],
    intermediate: Intermediate,
) -> Result<Tensor> {
    let classes = net.output_shape().iter().product();
    // Checks the labels (a typed error) before either version runs.
    let spec = super::margin_spec(labels, classes, lower.device())?;
    check_pools(net)?;
    if let Some(engine) = net.engine().filter(|e| e.accepts(lower)) {
        let full = intermediate == Intermediate::Full;
        if let Some((lb, _)) = engine.crown(lower, upper, Spec::Margins(labels), full)? {
            return Ok(lb.to_dtype(lower.dtype())?);
        }
    }
    tensor_margin_lower_bounds(net, lower, upper, labels, spec, intermediate)
}

/// [`margin_lower_bounds_with`] as batched tensor operations (see [`tensor_output_bounds`]).
fn tensor_margin_lower_bounds(
    net: &Sequential,
    lower: &Tensor,
    upper: &Tensor,
    labels: &[u32],
    spec: Tensor,
    intermediate: Intermediate,
) -> Result<Tensor> {
    let relax = relaxations(net, lower, upper, intermediate)?;
    let (lb, _) = backward(net, net.layers().len(), spec, &relax, lower, upper, false)?;
    super::mask_label(&lb, labels)
}

/// Refuses overlapping max-pooling, which CROWN does not relax.
fn check_pools(net: &Sequential) -> Result<()> {
    for (j, layer) in net.layers().iter().enumerate() {
        if let Layer::MaxPool2d { kernel, stride } = layer {
            if kernel != stride {
                return Err(Error::UnsupportedLayer {
                    certifier: "CROWN",
                    index: j,
                    layer: layer.kind(),
                    hint: "only non-overlapping max-pooling (stride = kernel) is relaxed; IBP bounds any",
                });
            }
        }
    }
    Ok(())
}

/// How CROWN replaces a nonlinear layer by linear bounds.
enum Relax {
    Relu(Relaxation),
    Pool(PoolRelaxation),
}

/// The relaxation of every nonlinear layer (`None` for affine ones), in order: each ReLU's from
/// the bounds of its input, which come from a backward pass using the relaxations before it; each
/// max-pool's from the interval of its input.
fn relaxations(
    net: &Sequential,
    lower: &Tensor,
    upper: &Tensor,
    intermediate: Intermediate,
) -> Result<Vec<Option<Relax>>> {
    check_pools(net)?;
    let mut relax: Vec<Option<Relax>> = (0..net.layers().len()).map(|_| None).collect();
    let mut mixing = 0;
    let mut first = true;
    // Interval arithmetic from the latest relaxed bounds: the reference that decides which
    // neurons are unstable, and the input interval of max-pooling.
    let mut interval = (lower.clone(), upper.clone());
    for (j, layer) in net.layers().iter().enumerate() {
        match layer {
            Layer::Relu => {
                // Before the first ReLU, with at most one layer that mixes coordinates, the
                // interval is the exact range, which a backward pass would only recompute at
                // the cost of one row per neuron.
                let bounds = if first && mixing <= 1 {
                    interval.clone()
                } else {
                    hidden_bounds(net, j, &relax, lower, upper, &interval, intermediate)?
                };
                relax[j] = Some(Relax::Relu(Relaxation::new(&bounds.0, &bounds.1)?));
                interval = bounds;
                first = false;
            }
            Layer::MaxPool2d { kernel, .. } => {
                let pool = PoolRelaxation::new(&interval.0, &interval.1, *kernel)?;
                relax[j] = Some(Relax::Pool(pool));
            }
            Layer::Linear { .. } | Layer::Conv2d { .. } | Layer::AvgPool2d { .. } => mixing += 1,
            _ => {}
        }
        interval = super::ibp::layer_interval(layer, &interval.0, &interval.1)?;
    }
    Ok(relax)
}

/// Bounds of the values entering layer `end` (`N × shape`): CROWN for every neuron, or only for
/// those the reference interval leaves unstable.
fn hidden_bounds(
    net: &Sequential,
    end: usize,
    relax: &[Option<Relax>],
    lower: &Tensor,
    upper: &Tensor,
    reference: &(Tensor, Tensor),
    intermediate: Intermediate,
) -> Result<(Tensor, Tensor)> {
    let shape = reference.0.dims().to_vec();
    let n: usize = shape[1..].iter().product();
    if intermediate == Intermediate::Full {
        let rows: Vec<usize> = (0..n).collect();
        let (l, u) = rows_bounds(net, end, &rows, relax, lower, upper)?;
        return Ok((l.reshape(shape.as_slice())?, u.reshape(shape.as_slice())?));
    }
    let rl = reference.0.flatten_from(1)?.to_vec2::<f32>()?;
    let ru = reference.1.flatten_from(1)?.to_vec2::<f32>()?;
    let unstable = |b: usize, i: usize| rl[b][i] < 0.0 && ru[b][i] > 0.0;
    let rows: Vec<usize> = (0..n)
        .filter(|&i| (0..rl.len()).any(|b| unstable(b, i)))
        .collect();
    if rows.is_empty() {
        return Ok(reference.clone());
    }
    let (cl, cu) = rows_bounds(net, end, &rows, relax, lower, upper)?;
    let (cl, cu) = (cl.to_vec2::<f32>()?, cu.to_vec2::<f32>()?);
    let (mut l, mut u) = (rl.concat(), ru.concat());
    for b in 0..rl.len() {
        for (k, &i) in rows.iter().enumerate() {
            if unstable(b, i) {
                l[b * n + i] = cl[b][k];
                u[b * n + i] = cu[b][k];
            }
        }
    }
    let device = lower.device();
    let l = Tensor::from_vec(l, shape.as_slice(), device)?.to_dtype(lower.dtype())?;
    let u = Tensor::from_vec(u, shape.as_slice(), device)?.to_dtype(lower.dtype())?;
    Ok((l, u))
}

/// Bounds of the neurons `rows` (flat indices) of the value entering layer `end`, `N × rows`, by
/// backward passes from one-hot specifications, in chunks that respect [`MEMORY_BUDGET`].
fn rows_bounds(
    net: &Sequential,
    end: usize,
    rows: &[usize],
    relax: &[Option<Relax>],
    lower: &Tensor,
    upper: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let shape = net.shape_before(end).to_vec();
    let n: usize = shape.iter().product();
    let batch = lower.dim(0)?;
    let widest = (0..=end)
        .map(|i| net.shape_before(i).iter().product::<usize>())
        .max()
        .unwrap_or(n);
    let chunk = (MEMORY_BUDGET / (batch * widest).max(1)).clamp(1, rows.len().max(1));
    let (mut lows, mut highs) = (Vec::new(), Vec::new());
    for part in rows.chunks(chunk) {
        let mut eye = vec![0f32; part.len() * n];
        for (r, &i) in part.iter().enumerate() {
            eye[r * n + i] = 1.0;
        }
        let mut spec_shape = vec![1, part.len()];
        spec_shape.extend(&shape);
        let spec = Tensor::from_vec(eye, spec_shape, lower.device())?.to_dtype(lower.dtype())?;
        let (l, u) = backward(net, end, spec, relax, lower, upper, true)?;
        lows.push(l);
        highs.push(u);
    }
    Ok((Tensor::cat(&lows, 1)?, Tensor::cat(&highs, 1)?))
}

/// Linear bounds `Λ·h + b` on the specification rows, as functions of the value `h` entering
/// the layer the pass has reached. `Λ` is `B × S × shape` with `B` either the batch or 1 while it
/// does not depend on the sample yet (before the first ReLU on the way back).
struct Linear {
    lambda: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    fn add_bias(&mut self, b: Tensor) -> Result<()> {
        self.bias = Some(match self.bias.take() {
            Some(acc) => acc.broadcast_add(&b)?,
            None => b,
        });
        Ok(())
    }

    /// `Λ` with the feature dimensions flattened: `B × S × features`.
    fn flat(&self) -> Result<Tensor> {
        Ok(self.lambda.flatten_from(2)?)
    }

    /// Through `y = layer(x)` for an affine layer: `Λ·y + b = Λ'·x + b'`.
    fn through_affine(&mut self, layer: &Layer, input_shape: &[usize]) -> Result<()> {
        let (bsz, rows) = (self.lambda.dim(0)?, self.lambda.dim(1)?);
        let mut lead = vec![bsz, rows];
        lead.extend(input_shape);
        match layer {
            Layer::Linear { weight, bias } => {
                let lam = self.flat()?; // B × S × out
                self.add_bias(lam.broadcast_matmul(&bias.unsqueeze(1)?)?.squeeze(2)?)?;
                self.lambda = lam.broadcast_matmul(weight)?.reshape(lead.as_slice())?;
            }
            Layer::Conv2d {
                weight,
                bias,
                stride,
                padding,
            } => {
                let (_, _, c, oh, ow) = self.lambda.dims5()?;
                let per_channel = self.lambda.sum((3, 4))?; // B × S × C
                self.add_bias(
                    per_channel
                        .broadcast_matmul(&bias.unsqueeze(1)?)?
                        .squeeze(2)?,
                )?;
                let lam = self.lambda.reshape((bsz * rows, c, oh, ow))?;
                let back = conv_transpose2d(
                    &lam,
                    weight,
                    *padding,
                    *stride,
                    (input_shape[1], input_shape[2]),
                )?;
                self.lambda = back.reshape(lead.as_slice())?;
            }
            Layer::AvgPool2d { kernel, stride } => {
                let (_, _, c, oh, ow) = self.lambda.dims5()?;
                let k = *kernel;
                let mut eye = vec![0f32; c * c * k * k];
                for ch in 0..c {
                    for i in 0..k * k {
                        eye[(ch * c + ch) * k * k + i] = 1.0 / (k * k) as f32;
                    }
                }
                let dev = self.lambda.device();
                let kernel =
                    Tensor::from_vec(eye, (c, c, k, k), dev)?.to_dtype(self.lambda.dtype())?;
                let lam = self.lambda.reshape((bsz * rows, c, oh, ow))?;
                let back =
                    conv_transpose2d(&lam, &kernel, 0, *stride, (input_shape[1], input_shape[2]))?;
                self.lambda = back.reshape(lead.as_slice())?;
            }
            Layer::ChannelAffine { scale, shift, .. } => {
                let shape = channel_shape(self.lambda.rank() - 1, scale.elem_count());
                let mut shape_lam = vec![1];
                shape_lam.extend(shape);
                let s = scale.reshape(shape_lam.as_slice())?;
                let t = shift.reshape(shape_lam.as_slice())?;
                let b = self.lambda.broadcast_mul(&t)?.flatten_from(2)?.sum(2)?;
                self.add_bias(b)?;
                self.lambda = self.lambda.broadcast_mul(&s)?;
            }
            Layer::Flatten => self.lambda = self.lambda.reshape(lead.as_slice())?,
            Layer::Relu | Layer::MaxPool2d { .. } => unreachable!("not affine"),
        }
        Ok(())
    }

    /// Through a nonlinear layer's relaxation. `lower` selects which bound this pass is for.
    fn through(&mut self, relax: &Relax, lower: bool, input_shape: &[usize]) -> Result<()> {
        match relax {
            Relax::Relu(r) => self.through_relu(r, lower),
            Relax::Pool(p) => self.through_pool(p, lower, input_shape),
        }
    }

    /// Through max-pooling: each window's coefficient moves to its chosen element.
    fn through_pool(
        &mut self,
        p: &PoolRelaxation,
        lower: bool,
        input_shape: &[usize],
    ) -> Result<()> {
        let pos = self.lambda.relu()?;
        let neg = (&self.lambda - &pos)?;
        // Lower bound: positive coefficients take the lower line (the chosen element), negative
        // ones the upper line (the chosen element where linear, else the constant).
        let (free, gated) = if lower { (&pos, &neg) } else { (&neg, &pos) };
        let b = gated.broadcast_mul(&p.constant)?.flatten_from(2)?.sum(2)?;
        self.add_bias(b)?;
        let coef = free.broadcast_add(&gated.broadcast_mul(&p.linear)?)?;
        let (bsz, rows, c, oh, ow) = coef.dims5()?;
        let (h, w) = (input_shape[1], input_shape[2]);
        let k = p.kernel;
        let spread = coef
            .reshape((bsz * rows, c, oh, ow))?
            .upsample_nearest2d(oh * k, ow * k)?
            .pad_with_zeros(2, 0, h - oh * k)?
            .pad_with_zeros(3, 0, w - ow * k)?
            .reshape((bsz, rows, c, h, w))?;
        self.lambda = spread.broadcast_mul(&p.chosen)?;
        Ok(())
    }

    /// Through a ReLU with the given relaxation. `lower` selects which bound this pass is for.
    fn through_relu(&mut self, relax: &Relaxation, lower: bool) -> Result<()> {
        let pos = self.lambda.relu()?;
        let neg = (&self.lambda - &pos)?;
        // Lower bound: positive coefficients take the lower line, negative ones the upper line.
        let (for_pos, for_neg) = if lower {
            (&relax.lower_slope, &relax.upper_slope)
        } else {
            (&relax.upper_slope, &relax.lower_slope)
        };
        let chord = if lower { &neg } else { &pos };
        let b = chord
            .broadcast_mul(&relax.upper_bias)?
            .flatten_from(2)?
            .sum(2)?;
        self.add_bias(b)?;
        self.lambda = (pos.broadcast_mul(for_pos)? + neg.broadcast_mul(for_neg)?)?;
        Ok(())
    }

    /// The bound over the input box: `min` (lower) or `max` of `Λ·x + b`, `N × S`.
    fn concretize(&self, centre: &Tensor, radius: &Tensor, lower: bool) -> Result<Tensor> {
        let lam = self.flat()?;
        let (c, r) = (centre.flatten_from(1)?, radius.flatten_from(1)?);
        let (value, spread) = if lam.dim(0)? == 1 {
            let lam = lam.squeeze(0)?.t()?; // D × S
            (c.matmul(&lam)?, r.matmul(&lam.abs()?)?)
        } else {
            let value = lam.matmul(&c.unsqueeze(2)?)?.squeeze(2)?;
            let spread = lam.abs()?.matmul(&r.unsqueeze(2)?)?.squeeze(2)?;
            (value, spread)
        };
        let bound = if lower {
            (value - spread)?
        } else {
            (value + spread)?
        };
        Ok(match &self.bias {
            Some(b) => bound.broadcast_add(b)?,
            None => bound,
        })
    }
}

/// The two lines enclosing ReLU on `[l, u]`, per neuron, shaped `N × 1 × shape` to broadcast
/// over the specification rows.
struct Relaxation {
    lower_slope: Tensor,
    upper_slope: Tensor,
    upper_bias: Tensor,
}

impl Relaxation {
    /// auto_LiRPA's formulas (`BoundRelu._backward_relaxation`, option "adaptive"), including
    /// their guard against `u = l`: `l' = min(l, 0)`, `u' = max(u, 0, l' + 1e-8)`, upper slope
    /// `u'/(u' − l')` with intercept `−l'·slope`, lower slope 1 iff the upper slope is `> 1/2`.
    /// Stable neurons come out as the identity (l ≥ 0) or zero (u ≤ 0) without a special case.
    fn new(l: &Tensor, u: &Tensor) -> Result<Self> {
        let l = l.minimum(0f32)?;
        let u = u.maximum(0f32)?.maximum(&(&l + 1e-8)?)?;
        let upper_slope = (&u / (&u - &l)?)?;
        let upper_bias = (l.neg()? * &upper_slope)?;
        let lower_slope = upper_slope.gt(0.5f32)?.to_dtype(upper_slope.dtype())?;
        let expand = |t: Tensor| t.unsqueeze(1);
        Ok(Relaxation {
            lower_slope: expand(lower_slope)?,
            upper_slope: expand(upper_slope)?,
            upper_bias: expand(upper_bias)?,
        })
    }
}

/// Linear bounds of non-overlapping max-pooling on its input interval `[l, u]`, per window
/// (auto_LiRPA's `BoundMaxPool.bound_backward`): the lower bound is the element `i*` with the
/// largest lower bound (the first on ties, row-major); the upper bound is that element too when
/// its lower bound is at least every other element's upper bound (the max is then linear), else
/// the constant `max_j u_j`.
struct PoolRelaxation {
    kernel: usize,
    /// `N × 1 × C × H × W`: 1 at each window's `i*`.
    chosen: Tensor,
    /// `N × 1 × C × oh × ow`: 1 where the window is linear.
    linear: Tensor,
    /// `N × 1 × C × oh × ow`: `max_j u_j` where the window is not linear, else 0.
    constant: Tensor,
}

impl PoolRelaxation {
    fn new(l: &Tensor, u: &Tensor, k: usize) -> Result<Self> {
        let (n, c, h, w) = l.dims4()?;
        let (oh, ow) = (h / k, w / k);
        let lv = l.flatten_all()?.to_vec1::<f32>()?;
        let uv = u.flatten_all()?.to_vec1::<f32>()?;
        let mut chosen = vec![0f32; n * c * h * w];
        let mut linear = vec![0f32; n * c * oh * ow];
        let mut constant = vec![0f32; n * c * oh * ow];
        for plane in 0..n * c {
            let base = plane * h * w;
            for oy in 0..oh {
                for ox in 0..ow {
                    let cells: Vec<usize> = (0..k * k)
                        .map(|i| base + (oy * k + i / k) * w + ox * k + i % k)
                        .collect();
                    let mut best = cells[0];
                    for &i in &cells[1..] {
                        if lv[i] > lv[best] {
                            best = i;
                        }
                    }
                    let others = cells
                        .iter()
                        .filter(|&&i| i != best)
                        .map(|&i| uv[i])
                        .fold(f32::NEG_INFINITY, f32::max);
                    let window = (plane * oh + oy) * ow + ox;
                    chosen[best] = 1.0;
                    if lv[best] >= others {
                        linear[window] = 1.0;
                    } else {
                        constant[window] = others.max(uv[best]);
                    }
                }
            }
        }
        let dev = l.device();
        let make = |v: Vec<f32>, hh: usize, ww: usize| -> Result<Tensor> {
            Ok(Tensor::from_vec(v, (n, 1, c, hh, ww), dev)?.to_dtype(l.dtype())?)
        };
        Ok(PoolRelaxation {
            kernel: k,
            chosen: make(chosen, h, w)?,
            linear: make(linear, oh, ow)?,
            constant: make(constant, oh, ow)?,
        })
    }
}

/// Bounds of `spec · (value entering layer end)` over the input box: `(lower, upper)`, each
/// `N × S`. With `both = false` only the lower bound is computed (the upper is a copy).
fn backward(
    net: &Sequential,
    end: usize,
    spec: Tensor,
    relax: &[Option<Relax>],
    lower: &Tensor,
    upper: &Tensor,
    both: bool,
) -> Result<(Tensor, Tensor)> {
    let mut lo = Linear {
        lambda: spec,
        bias: None,
    };
    // The upper pass equals the lower one until the first ReLU on the way back.
    let mut hi: Option<Linear> = None;
    for j in (0..end).rev() {
        let layer = &net.layers()[j];
        let input_shape = net.shape_before(j);
        match (layer, &relax[j]) {
            (Layer::Relu | Layer::MaxPool2d { .. }, Some(r)) => {
                if both && hi.is_none() {
                    hi = Some(Linear {
                        lambda: lo.lambda.clone(),
                        bias: lo.bias.clone(),
                    });
                }
                lo.through(r, true, input_shape)?;
                if let Some(hi) = hi.as_mut() {
                    hi.through(r, false, input_shape)?;
                }
            }
            (Layer::Relu | Layer::MaxPool2d { .. }, None) => {
                unreachable!("relaxations are computed for every nonlinear layer first")
            }
            _ => {
                lo.through_affine(layer, input_shape)?;
                if let Some(hi) = hi.as_mut() {
                    hi.through_affine(layer, input_shape)?;
                }
            }
        }
    }
    let centre = ((upper + lower)? * 0.5)?;
    let radius = ((upper - lower)? * 0.5)?;
    let lb = lo.concretize(&centre, &radius, true)?;
    let ub = match (&hi, both) {
        (Some(hi), _) => hi.concretize(&centre, &radius, false)?,
        (None, true) => lo.concretize(&centre, &radius, false)?,
        (None, false) => lb.clone(),
    };
    let batch = lower.dim(0)?;
    let broadcast = |t: Tensor| -> Result<Tensor> {
        let rows = t.dim(1)?;
        Ok(t.broadcast_as((batch, rows))?.contiguous()?)
    };
    Ok((broadcast(lb)?, broadcast(ub)?))
}

#[cfg(test)]
mod should {
    use candle_core::{Device, Module};

    use super::*;
    use crate::nn::testing::random_network;
    use crate::Rng;

    /// Networks with every layer CROWN relaxes: strided and padded convolutions, max-pooling
    /// followed by a ReLU of its own, batch norm, average pooling, a last layer with a ReLU
    /// before it and none after.
    fn networks() -> Result<Vec<Sequential>> {
        let image = Sequential::builder(&[2, 8, 8])
            .conv2d(4, 3, 1, 1)
            .relu()
            .max_pool2d(2)
            .relu()
            .batch_norm()
            .conv2d(5, 4, 2, 1)
            .relu()
            .avg_pool2d(2)
            .flatten()
            .linear(7)
            .relu()
            .linear(4);
        let strided = Sequential::builder(&[1, 12, 12])
            .conv2d(3, 4, 2, 1)
            .relu()
            .conv2d(4, 4, 2, 1)
            .relu()
            .flatten()
            .linear(6)
            .relu()
            .linear(3);
        let flat = Sequential::builder(&[10])
            .linear(8)
            .relu()
            .linear(8)
            .relu()
            .linear(5);
        Ok(vec![
            random_network(image, 1)?,
            random_network(strided, 2)?,
            random_network(flat, 3)?,
        ])
    }

    /// A batch of boxes of radius `eps` around uniform points, clipped to `[0, 1]`.
    fn boxes(net: &Sequential, n: usize, eps: f32, seed: u64) -> Result<(Tensor, Tensor)> {
        let mut dims = vec![n];
        dims.extend(net.input_shape());
        let size: usize = dims.iter().product();
        let mut rng = Rng::seed_from_u64(seed);
        let x = rng.uniform_vec(size, 0.0, 1.0);
        let x = Tensor::from_vec(x, dims.as_slice(), &Device::Cpu)?;
        Ok((
            (&x - eps as f64)?.clamp(0f32, 1f32)?,
            (&x + eps as f64)?.clamp(0f32, 1f32)?,
        ))
    }

    fn assert_close(engine: &Tensor, tensor: &Tensor, what: &str) -> Result<()> {
        let (a, b) = (
            engine.flatten_all()?.to_vec1::<f32>()?,
            tensor.flatten_all()?.to_vec1::<f32>()?,
        );
        assert_eq!(a.len(), b.len());
        for (i, (a, b)) in a.iter().zip(&b).enumerate() {
            if a.is_infinite() || b.is_infinite() {
                assert_eq!(a, b, "{what} [{i}]");
                continue;
            }
            let tol = 1e-5 * a.abs().max(b.abs()).max(1.0);
            assert!(
                (a - b).abs() <= tol,
                "{what} [{i}]: engine {a}, tensors {b}"
            );
        }
        Ok(())
    }

    #[test]
    fn give_the_tensor_versions_bounds_on_the_engine() -> Result<()> {
        for (k, net) in networks()?.iter().enumerate() {
            assert!(net.engine().is_some(), "network {k} runs on the engine");
            // A box where many neurons are unstable, and one where few are.
            for (j, eps) in [0.3f32, 0.02].into_iter().enumerate() {
                let (l, u) = boxes(net, 5, eps, 10 * k as u64 + j as u64)?;
                let classes = net.output_shape().iter().product::<usize>();
                let labels: Vec<u32> = (0..5).map(|i| (i % classes) as u32).collect();
                for intermediate in [Intermediate::Full, Intermediate::UnstableOnly] {
                    let what = format!("network {k}, eps {eps}, {intermediate:?}");
                    let (el, eu) = output_bounds_with(net, &l, &u, intermediate)?;
                    let (tl, tu) = tensor_output_bounds(net, &l, &u, intermediate)?;
                    assert_close(&el, &tl, &format!("{what}: lower"))?;
                    assert_close(&eu, &tu, &format!("{what}: upper"))?;
                    let em = margin_lower_bounds_with(net, &l, &u, &labels, intermediate)?;
                    let spec = crate::certify::margin_spec(&labels, classes, &Device::Cpu)?;
                    let tm = tensor_margin_lower_bounds(net, &l, &u, &labels, spec, intermediate)?;
                    assert_close(&em, &tm, &format!("{what}: margins"))?;
                }
            }
        }
        Ok(())
    }

    #[test]
    fn bound_every_sampled_point_of_the_box_on_the_engine() -> Result<()> {
        for (k, net) in networks()?.iter().enumerate() {
            let (l, u) = boxes(net, 4, 0.1, 100 + k as u64)?;
            let (lb, ub) = output_bounds(net, &l, &u)?;
            let (lb, ub) = (lb.to_vec2::<f32>()?, ub.to_vec2::<f32>()?);
            let mut rng = Rng::seed_from_u64(7);
            for _ in 0..200 {
                // A random point of each box, corners included half the time.
                let (lv, uv) = (
                    l.flatten_all()?.to_vec1::<f32>()?,
                    u.flatten_all()?.to_vec1::<f32>()?,
                );
                let x: Vec<f32> = lv
                    .iter()
                    .zip(&uv)
                    .map(|(&a, &b)| {
                        let t = rng.uniform(0.0, 1.0) as f32;
                        let t = if rng.uniform(0.0, 1.0) < 0.5 {
                            t.round()
                        } else {
                            t
                        };
                        a + t * (b - a)
                    })
                    .collect();
                let z = net
                    .forward(&Tensor::from_vec(x, l.dims(), &Device::Cpu)?)?
                    .to_vec2::<f32>()?;
                for (s, row) in z.iter().enumerate() {
                    for (c, &v) in row.iter().enumerate() {
                        let slack = 1e-4 * v.abs().max(1.0);
                        assert!(
                            lb[s][c] - slack <= v && v <= ub[s][c] + slack,
                            "network {k}, sample {s}, logit {c}: {v} outside [{}, {}]",
                            lb[s][c],
                            ub[s][c]
                        );
                    }
                }
            }
        }
        Ok(())
    }
}
