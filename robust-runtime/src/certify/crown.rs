//! CROWN: linear relaxation-based bound propagation (Zhang et al. 2018, "Efficient Neural
//! Network Robustness Certification with General Activation Functions").
//!
//! A specification `C·z` of the network's output (the logits, or the margins `z_y − z_j`) is
//! propagated backwards as linear functions of each layer's output, `Λ·h + b`: affine layers
//! are composed exactly, and each ReLU is replaced by two lines that enclose it on its
//! pre-activation interval `[l, u]`:
//!
//! - upper line: the chord `u/(u − l)·(x − l)` (unstable), `x` (active), `0` (inactive);
//! - lower line: `x` or `0`, whichever is closer on `[l, u]` (slope 1 iff `u > −l`), the
//!   "adaptive" choice of the paper and of auto_LiRPA's default.
//!
//! Positive coefficients of a lower bound take the lower line and negative ones the upper line
//! (the other way round for the upper bound). At the input the linear function is minimised over
//! the box in closed form: `Λ·c − |Λ|·r + b`. The pre-activation intervals of every ReLU come
//! from the same backward pass started at that layer ("CROWN" in auto_LiRPA's terms, not
//! CROWN-IBP), so a network with `k` ReLU layers costs `k + 1` backward passes; the bounds agree
//! with auto_LiRPA's `method="CROWN"` (tests/reference/bounds_lirpa.json).
//!
//! Everything is batched tensor work on the model's device; the specification rows are processed
//! in chunks so that the coefficient tensors stay within [`MEMORY_BUDGET`] floats.

use candle_core::Tensor;

use crate::nn::{channel_shape, conv_transpose2d, Layer, Sequential};
use crate::{Error, Result};

/// Largest coefficient tensor (in values) one chunk of specification rows may create.
pub const MEMORY_BUDGET: usize = 1 << 25;

/// Lower and upper bounds of the output (`N × classes`) over the box `[lower, upper]`.
pub fn output_bounds(net: &Sequential, lower: &Tensor, upper: &Tensor) -> Result<(Tensor, Tensor)> {
    let pre = preactivation_bounds(net, lower, upper)?;
    identity_bounds(net, net.layers().len(), &pre, lower, upper)
}

/// Lower bounds of the margins `z_y − z_j` (`N × classes`, `+∞` at `j = y`), with the margin
/// specification propagated through the network (tighter than subtracting logit bounds).
pub fn margin_lower_bounds(
    net: &Sequential,
    lower: &Tensor,
    upper: &Tensor,
    labels: &[u32],
) -> Result<Tensor> {
    let pre = preactivation_bounds(net, lower, upper)?;
    let classes = net.output_shape().iter().product();
    let spec = super::margin_spec(labels, classes, lower.device())?;
    let (lb, _) = backward(net, net.layers().len(), spec, &pre, lower, upper, false)?;
    super::mask_label(&lb, labels)
}

/// The interval of the input of every ReLU (`None` for other layers), each from a backward
/// pass that uses the intervals before it.
fn preactivation_bounds(
    net: &Sequential,
    lower: &Tensor,
    upper: &Tensor,
) -> Result<Vec<Option<(Tensor, Tensor)>>> {
    if let Some((j, layer)) = net
        .layers()
        .iter()
        .enumerate()
        .find(|(_, l)| matches!(l, Layer::MaxPool2d { .. }))
    {
        return Err(unsupported(j, layer));
    }
    let mut pre = vec![None; net.layers().len()];
    let mut mixing = 0;
    let mut interval = (lower.clone(), upper.clone());
    for (j, layer) in net.layers().iter().enumerate() {
        if matches!(layer, Layer::Relu) {
            // Before the first ReLU, with at most one layer that mixes coordinates, the box
            // of interval arithmetic is the exact range, which is what the backward pass would
            // compute at far greater cost (one row per neuron).
            let bounds = if mixing <= 1 && pre.iter().all(Option::is_none) {
                interval.clone()
            } else {
                identity_bounds(net, j, &pre, lower, upper)?
            };
            pre[j] = Some(bounds);
        }
        if matches!(
            layer,
            Layer::Linear { .. } | Layer::Conv2d { .. } | Layer::AvgPool2d { .. }
        ) {
            mixing += 1;
        }
        if mixing <= 1 {
            interval = super::ibp::layer_interval(layer, &interval.0, &interval.1)?;
        }
    }
    Ok(pre)
}

fn unsupported(index: usize, layer: &Layer) -> Error {
    Error::UnsupportedLayer {
        certifier: "CROWN",
        index,
        layer: layer.kind(),
        hint: "IBP bounds it; for CROWN use a strided Conv2d or AvgPool2d instead",
    }
}

/// Bounds of every value entering layer `end` (`N × shape`), by backward passes from an identity
/// specification, `chunk` rows at a time.
fn identity_bounds(
    net: &Sequential,
    end: usize,
    pre: &[Option<(Tensor, Tensor)>],
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
    let chunk = (MEMORY_BUDGET / (batch * widest).max(1)).clamp(1, n);
    let (mut lows, mut highs) = (Vec::new(), Vec::new());
    for start in (0..n).step_by(chunk) {
        let rows = chunk.min(n - start);
        let mut eye = vec![0f32; rows * n];
        for r in 0..rows {
            eye[r * n + start + r] = 1.0;
        }
        let mut spec_shape = vec![1, rows];
        spec_shape.extend(&shape);
        let spec = Tensor::from_vec(eye, spec_shape, lower.device())?.to_dtype(lower.dtype())?;
        let (l, u) = backward(net, end, spec, pre, lower, upper, true)?;
        lows.push(l);
        highs.push(u);
    }
    let mut out_shape = vec![batch];
    out_shape.extend(&shape);
    let l = Tensor::cat(&lows, 1)?.reshape(out_shape.as_slice())?;
    let u = Tensor::cat(&highs, 1)?.reshape(out_shape.as_slice())?;
    Ok((l, u))
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
    fn new(l: &Tensor, u: &Tensor) -> Result<Self> {
        // With l clamped to ≤ 0 and u to ≥ 0 the chord formula covers all three cases: slope 1
        // for active neurons, 0 for inactive ones, u/(u − l) for unstable ones.
        let l = l.minimum(0f32)?;
        let u = u.maximum(0f32)?;
        let upper_slope = (&u / (&u - &l)?.maximum(1e-8f32)?)?;
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

/// Bounds of `spec · (value entering layer end)` over the input box: `(lower, upper)`, each
/// `N × S`. With `both = false` only the lower bound is computed (the upper is a copy).
fn backward(
    net: &Sequential,
    end: usize,
    spec: Tensor,
    pre: &[Option<(Tensor, Tensor)>],
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
        match layer {
            Layer::Relu => {
                let (l, u) = pre[j]
                    .as_ref()
                    .expect("bounds of every ReLU input are computed first");
                let relax = Relaxation::new(l, u)?;
                if both && hi.is_none() {
                    hi = Some(Linear {
                        lambda: lo.lambda.clone(),
                        bias: lo.bias.clone(),
                    });
                }
                lo.through_relu(&relax, true)?;
                if let Some(hi) = hi.as_mut() {
                    hi.through_relu(&relax, false)?;
                }
            }
            Layer::MaxPool2d { .. } => return Err(unsupported(j, layer)),
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
