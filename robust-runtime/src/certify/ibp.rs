//! Interval bound propagation (Gowal et al. 2018, "On the Effectiveness of Interval Bound
//! Propagation for Training Verifiably Robust Models").
//!
//! Each layer maps a box `[l, u]` to a box that contains the images of all its points. Affine
//! layers work in centre/radius form, `c' = W c + b`, `r' = |W| r`, which is exact for one affine
//! map; monotone layers (ReLU, max- and average-pooling, flatten) map the two corners. The
//! computation is plain candle ops, so it runs on the model's device, batched, and is
//! differentiable: certified training ([`crate::certify`] docs) back-propagates through it.

use candle_core::Tensor;

use crate::nn::{channel_shape, Layer, Sequential};
use crate::Result;

/// The box of each layer's input, and of the output last: `result[i]` bounds what enters layer
/// `i` of `net` (so `result[0]` is the input box), `result[net.layers().len()]` the output.
pub fn layer_bounds(
    net: &Sequential,
    lower: &Tensor,
    upper: &Tensor,
) -> Result<Vec<(Tensor, Tensor)>> {
    let mut bounds = Vec::with_capacity(net.layers().len() + 1);
    bounds.push((lower.clone(), upper.clone()));
    for layer in net.layers() {
        let (l, u) = bounds.last().expect("starts with the input box");
        let next = layer_interval(layer, l, u)?;
        bounds.push(next);
    }
    Ok(bounds)
}

/// The output box of `net` for the input box `[lower, upper]` (both `N × input shape`).
pub fn output_bounds(net: &Sequential, lower: &Tensor, upper: &Tensor) -> Result<(Tensor, Tensor)> {
    if let Some(engine) = net.engine().filter(|e| e.accepts(lower)) {
        return Ok(engine.interval(lower, upper)?);
    }
    through(net.layers(), lower, upper)
}

/// The box after `layers`, layer by layer with tensor operations (any device, differentiable).
fn through(layers: &[Layer], lower: &Tensor, upper: &Tensor) -> Result<(Tensor, Tensor)> {
    let (mut l, mut u) = (lower.clone(), upper.clone());
    for layer in layers {
        (l, u) = layer_interval(layer, &l, &u)?;
    }
    Ok((l, u))
}

/// Lower bounds of the margins `z_y − z_j` (`N × classes`, `+∞` at `j = y`).
///
/// When the last layer is linear, it is merged with the margin specification (`(W_y − W_j)·h +
/// b_y − b_j` bounded over the box of its input `h`), as Gowal et al. do and auto_LiRPA does for
/// IBP with a specification matrix: tighter than `l_y − u_j` and just as cheap.
pub fn margin_lower_bounds(
    net: &Sequential,
    lower: &Tensor,
    upper: &Tensor,
    labels: &[u32],
) -> Result<Tensor> {
    if let Some(engine) = net.engine().filter(|e| e.accepts(lower)) {
        if let Some(m) = engine.interval_margins(lower, upper, labels)? {
            return Ok(m.to_dtype(lower.dtype())?);
        }
    }
    super::mask_label(&margins(net, lower, upper, labels)?, labels)
}

/// The worst-case logits of the box for IBP training (Gowal et al. 2018, eq. 7): `−lb(z_y − z_j)`
/// for `j ≠ y` and 0 for `y`, so that cross-entropy on them bounds the loss of every point of
/// the box. Differentiable in the weights.
pub fn worst_case_logits(
    net: &Sequential,
    lower: &Tensor,
    upper: &Tensor,
    labels: &[u32],
) -> Result<Tensor> {
    let m = margins(net, lower, upper, labels)?;
    let (n, classes) = m.dims2()?;
    let mut keep = vec![1f32; n * classes];
    for (i, &y) in labels.iter().enumerate() {
        keep[i * classes + y as usize] = 0.0;
    }
    let keep = Tensor::from_vec(keep, (n, classes), m.device())?.to_dtype(m.dtype())?;
    Ok(m.mul(&keep)?.neg()?)
}

/// Margin lower bounds without the label masked (its entry is an arbitrary non-positive value).
fn margins(net: &Sequential, lower: &Tensor, upper: &Tensor, labels: &[u32]) -> Result<Tensor> {
    let layers = net.layers();
    if let Some(Layer::Linear { weight, bias }) = layers.last() {
        // The box of the last layer's input: on the engine when it runs the network (plain
        // CPU weights), else layer by layer with tensor operations (certified training).
        let hidden = &layers[..layers.len() - 1];
        let (l, u) = match Sequential::from_layers(net.input_shape(), hidden.to_vec()) {
            Some(prefix) => output_bounds(&prefix, lower, upper)?,
            None => through(hidden, lower, upper)?,
        };
        let spec = super::margin_spec(labels, weight.dim(0)?, weight.device())?; // N × K × K
        let w = spec.broadcast_matmul(weight)?; // N × K × in
        let b = spec.broadcast_matmul(&bias.unsqueeze(1)?)?.squeeze(2)?; // N × K
        let c = ((&u + &l)? * 0.5)?.unsqueeze(2)?; // N × in × 1
        let r = ((&u - &l)? * 0.5)?.unsqueeze(2)?;
        let lb = (w.matmul(&c)? - w.abs()?.matmul(&r)?)?.squeeze(2)?;
        return Ok((lb + b)?);
    }
    let (l, u) = output_bounds(net, lower, upper)?;
    let index = Tensor::from_slice(labels, (labels.len(), 1), l.device())?;
    let ly = l.gather(&index, 1)?; // N × 1
    Ok(ly.broadcast_sub(&u)?)
}

/// One layer's interval map.
pub(crate) fn layer_interval(layer: &Layer, l: &Tensor, u: &Tensor) -> Result<(Tensor, Tensor)> {
    let affine = |c: Tensor, r: Tensor| -> Result<(Tensor, Tensor)> { Ok(((&c - &r)?, (c + r)?)) };
    let centre = || (u + l)? * 0.5;
    let radius = || (u - l)? * 0.5;
    match layer {
        Layer::Linear { weight, bias } => {
            let c = centre()?.matmul(&weight.t()?)?.broadcast_add(bias)?;
            let r = radius()?.matmul(&weight.abs()?.t()?)?;
            affine(c, r)
        }
        Layer::Conv2d {
            weight,
            bias,
            stride,
            padding,
        } => {
            let c = crate::nn::conv2d(&centre()?, weight, Some(bias), *padding, *stride)?;
            let r = crate::nn::conv2d(&radius()?, &weight.abs()?, None, *padding, *stride)?;
            affine(c, r)
        }
        Layer::ChannelAffine { scale, shift, .. } => {
            let shape = channel_shape(l.rank(), scale.elem_count());
            let (s, t) = (
                scale.reshape(shape.as_slice())?,
                shift.reshape(shape.as_slice())?,
            );
            let c = centre()?.broadcast_mul(&s)?.broadcast_add(&t)?;
            let r = radius()?.broadcast_mul(&s.abs()?)?;
            affine(c, r)
        }
        // Monotone non-decreasing in every input: the corners map to the corners.
        Layer::Relu | Layer::Flatten | Layer::MaxPool2d { .. } | Layer::AvgPool2d { .. } => {
            Ok((layer.forward(l)?, layer.forward(u)?))
        }
    }
}

#[cfg(test)]
mod should {
    use candle_core::Device;

    use super::*;
    use crate::nn::testing::{on_tensors_only, random_network};
    use crate::Rng;

    #[test]
    fn give_the_tensor_versions_boxes_and_margins_on_the_engine() -> Result<()> {
        let nets = [
            Sequential::builder(&[2, 9, 9])
                .conv2d(4, 3, 2, 1)
                .relu()
                .max_pool2d(2)
                .batch_norm()
                .relu()
                .flatten()
                .linear(6)
                .relu()
                .linear(4),
            Sequential::builder(&[1, 12, 12])
                .conv2d(3, 4, 2, 1)
                .relu()
                .conv2d(5, 4, 2, 1)
                .relu()
                .avg_pool2d(3)
                .flatten()
                .linear(3),
        ];
        for (k, builder) in nets.into_iter().enumerate() {
            let net = random_network(builder, 40 + k as u64)?;
            assert!(net.engine().is_some());
            let slow = on_tensors_only(&net)?;
            let mut dims = vec![6];
            dims.extend(net.input_shape());
            let mut rng = Rng::seed_from_u64(k as u64);
            let x = rng.uniform_vec(dims.iter().product(), 0.0, 1.0);
            let x = Tensor::from_vec(x, dims.as_slice(), &Device::Cpu)?;
            let (l, u) = super::super::input_box(&x, 0.05, Default::default())?;
            let labels: Vec<u32> = (0..6).map(|i| (i % 3) as u32).collect();
            let pairs = [
                (
                    output_bounds(&net, &l, &u)?.0,
                    output_bounds(&slow, &l, &u)?.0,
                ),
                (
                    output_bounds(&net, &l, &u)?.1,
                    output_bounds(&slow, &l, &u)?.1,
                ),
                (
                    margin_lower_bounds(&net, &l, &u, &labels)?,
                    margin_lower_bounds(&slow, &l, &u, &labels)?,
                ),
            ];
            for (i, (fast, slow)) in pairs.iter().enumerate() {
                let (a, b) = (
                    fast.flatten_all()?.to_vec1::<f32>()?,
                    slow.flatten_all()?.to_vec1::<f32>()?,
                );
                assert_eq!(a.len(), b.len());
                for (a, b) in a.iter().zip(&b) {
                    let close = a == b || (a - b).abs() <= 1e-5 * a.abs().max(b.abs()).max(1.0);
                    assert!(close, "network {k}, bound {i}: engine {a}, tensors {b}");
                }
            }
        }
        Ok(())
    }
}
