//! A structured network: a [`Sequential`] of [`Layer`]s that is a candle [`Module`] *and* can be
//! bounded by the certifiers in [`crate::certify`].
//!
//! An opaque `Module` can be attacked but not certified: interval bound propagation and CROWN
//! need to see every layer. `Sequential` keeps the layers as data (weights are plain tensors, or
//! `Var`s when built from a `VarMap` for training) and is described by a [`SequentialBuilder`]
//! that mirrors PyTorch's `nn.Sequential`: layer `i` reads the tensors `i.weight`, `i.bias`, …, so
//! a file written by `safetensors.torch.save_file(model.state_dict(), path)` loads as-is.
//!
//! ```no_run
//! use robust_runtime::nn::Sequential;
//! use candle_core::Device;
//!
//! // PyTorch: nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256),
//! //                        nn.ReLU(), nn.Linear(256, 10))
//! let mlp = Sequential::builder(&[1, 28, 28])
//!     .flatten()
//!     .linear(256)
//!     .relu()
//!     .linear(256)
//!     .relu()
//!     .linear(10)
//!     .load("tests/fixtures/mnist_mlp.safetensors", &Device::Cpu)?;
//! assert_eq!(mlp.output_shape(), &[10]);
//! # Ok::<(), robust_runtime::Error>(())
//! ```
//!
//! Shapes are checked when the network is built, layer by layer, so a wrong architecture is an
//! error naming the layer, never a panic in the middle of an attack.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use super::engine::Engine;
use crate::domain::Normalize;
use crate::{Error, Result};

/// Variance epsilon of PyTorch's `BatchNorm1d`/`BatchNorm2d` default.
const BATCH_NORM_EPS: f64 = 1e-5;

/// One layer of a [`Sequential`], with its weights.
#[derive(Debug, Clone)]
pub enum Layer {
    /// `y = x·Wᵀ + b`, `weight` `out × in`, as `nn.Linear`.
    Linear {
        /// `out × in`.
        weight: Tensor,
        /// `out`.
        bias: Tensor,
    },
    /// 2-D convolution, as `nn.Conv2d` (square kernel, same stride and padding on both axes).
    Conv2d {
        /// `out_channels × in_channels × k × k`.
        weight: Tensor,
        /// `out_channels`.
        bias: Tensor,
        /// Stride of both axes.
        stride: usize,
        /// Zero padding of both axes.
        padding: usize,
    },
    /// `max(x, 0)`.
    Relu,
    /// `N × …` → `N × features`.
    Flatten,
    /// Max-pooling with a square window, no padding.
    MaxPool2d {
        /// Window size.
        kernel: usize,
        /// Stride.
        stride: usize,
    },
    /// Average pooling with a square window, no padding.
    AvgPool2d {
        /// Window size.
        kernel: usize,
        /// Stride.
        stride: usize,
    },
    /// `y = x·scale + shift` per channel (dimension 1): batch norm in eval mode and
    /// normalisation layers, folded into one affine map.
    ChannelAffine {
        /// One factor per channel.
        scale: Tensor,
        /// One offset per channel.
        shift: Tensor,
        /// Where it came from, for messages: `"BatchNorm"` or `"Normalize"`.
        kind: &'static str,
    },
}

impl Layer {
    /// The layer's name as PyTorch prints it (`Linear`, `Conv2d`, `ReLU`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Layer::Linear { .. } => "Linear",
            Layer::Conv2d { .. } => "Conv2d",
            Layer::Relu => "ReLU",
            Layer::Flatten => "Flatten",
            Layer::MaxPool2d { .. } => "MaxPool2d",
            Layer::AvgPool2d { .. } => "AvgPool2d",
            Layer::ChannelAffine { kind, .. } => kind,
        }
    }

    /// Applies the layer to a batch.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Layer::Linear { weight, bias } => x.matmul(&weight.t()?)?.broadcast_add(bias),
            Layer::Conv2d {
                weight,
                bias,
                stride,
                padding,
            } => {
                let bias = bias.reshape((1, bias.elem_count(), 1, 1))?;
                if weight.track_op() || bias.track_op() {
                    // Training: candle's autograd, weight gradients included.
                    return x
                        .conv2d(weight, *padding, *stride, 1, 1)?
                        .broadcast_add(&bias);
                }
                // Attacks: only the input gradient, through our adjoint. candle's backward would
                // also compute the unused kernel gradient, take the input gradient through its
                // slow CPU `conv_transpose2d`, and get its shape wrong when the size formula
                // drops input rows.
                let y = super::conv2d(&x.detach(), weight, Some(&bias), *padding, *stride)?;
                let (weight, padding, stride) = (weight.clone(), *padding, *stride);
                super::graft::graft(x, y, "sequential-conv2d-input-grad", move |arg, _, grad| {
                    let (_, _, h, w) = arg.dims4()?;
                    super::conv_transpose2d(grad, &weight, padding, stride, (h, w))
                })
            }
            Layer::Relu => x.relu(),
            Layer::Flatten => x.flatten_from(1),
            Layer::MaxPool2d { kernel, stride } if kernel == stride => {
                super::max_pool2d(x, *kernel)
            }
            Layer::MaxPool2d { kernel, stride } => x.max_pool2d_with_stride(*kernel, *stride),
            Layer::AvgPool2d { kernel, stride } => x.avg_pool2d_with_stride(*kernel, *stride),
            Layer::ChannelAffine { scale, shift, .. } => {
                let shape = channel_shape(x.rank(), scale.elem_count());
                x.broadcast_mul(&scale.reshape(shape.as_slice())?)?
                    .broadcast_add(&shift.reshape(shape.as_slice())?)
            }
        }
    }
}

/// The per-sample shape `layer` makes of inputs of per-sample `shape`, as the builder infers it;
/// `None` when the layer does not fit the shape.
pub(crate) fn output_shape(layer: &Layer, shape: &[usize]) -> Option<Vec<usize>> {
    let window = |n: usize, k: usize, stride: usize, pad: usize| {
        (n + 2 * pad).checked_sub(k).map(|v| v / stride + 1)
    };
    Some(match (layer, shape) {
        (Layer::Linear { weight, .. }, [_]) => vec![weight.dim(0).ok()?],
        (
            Layer::Conv2d {
                weight,
                stride,
                padding,
                ..
            },
            &[_, h, w],
        ) => {
            let (c_out, k) = (weight.dim(0).ok()?, weight.dim(2).ok()?);
            let size = |n| window(n, k, *stride, *padding);
            vec![c_out, size(h)?, size(w)?]
        }
        (Layer::Relu | Layer::ChannelAffine { .. }, _) => shape.to_vec(),
        (Layer::Flatten, _) => vec![shape.iter().product()],
        (Layer::MaxPool2d { kernel, stride } | Layer::AvgPool2d { kernel, stride }, &[c, h, w]) => {
            let size = |n| window(n, *kernel, *stride, 0);
            vec![c, size(h)?, size(w)?]
        }
        _ => return None,
    })
}

/// `[1, channels, 1, …]` with `rank` entries: broadcasts a per-channel vector over a batch.
pub(crate) fn channel_shape(rank: usize, channels: usize) -> Vec<usize> {
    let mut shape = vec![1; rank.max(2)];
    shape[1] = channels;
    shape
}

/// A feed-forward network of [`Layer`]s with known shapes.
#[derive(Clone)]
pub struct Sequential {
    layers: Vec<Layer>,
    /// `shapes[i]` is the per-sample shape entering layer `i`; `shapes[len]` is the output's.
    shapes: Vec<Vec<usize>>,
    /// The network compiled for the engine on first use (`None`: it cannot run there), shared
    /// by clones: the layers never change once built, and certifying a batch after another
    /// should not copy and transform every weight again.
    engine: Arc<OnceLock<Option<Engine>>>,
}

impl fmt::Debug for Sequential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sequential(")?;
        for (i, (layer, shape)) in self.layers.iter().zip(&self.shapes[1..]).enumerate() {
            write!(
                f,
                "{}{i}: {} → {shape:?}",
                if i > 0 { ", " } else { "" },
                layer.kind()
            )?;
        }
        write!(f, ")")
    }
}

impl Sequential {
    /// Starts describing a network whose inputs have the per-sample shape `input_shape`
    /// (`[1, 28, 28]` for MNIST, `[784]` for flat vectors).
    pub fn builder(input_shape: &[usize]) -> SequentialBuilder {
        SequentialBuilder {
            input_shape: input_shape.to_vec(),
            specs: Vec::new(),
        }
    }

    /// The same network with its weights detached from any autograd graph: what certification
    /// (not certified training) runs on, so that no intermediate bound is kept alive for a
    /// backward pass that never comes.
    pub fn detach(&self) -> Sequential {
        self.map_tensors(|t| Ok(t.detach()))
            .expect("detaching a tensor cannot fail")
    }

    /// The same network with `f` applied to every weight tensor (the shapes as they are).
    pub(crate) fn map_tensors(&self, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Sequential> {
        let layers = self
            .layers
            .iter()
            .map(|layer| {
                Ok(match layer {
                    Layer::Linear { weight, bias } => Layer::Linear {
                        weight: f(weight)?,
                        bias: f(bias)?,
                    },
                    Layer::Conv2d {
                        weight,
                        bias,
                        stride,
                        padding,
                    } => Layer::Conv2d {
                        weight: f(weight)?,
                        bias: f(bias)?,
                        stride: *stride,
                        padding: *padding,
                    },
                    Layer::ChannelAffine { scale, shift, kind } => Layer::ChannelAffine {
                        scale: f(scale)?,
                        shift: f(shift)?,
                        kind,
                    },
                    other => other.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Sequential {
            layers,
            shapes: self.shapes.clone(),
            engine: Arc::default(),
        })
    }

    /// The device of the weights (the CPU for a network without any).
    pub fn device(&self) -> Device {
        self.layers
            .iter()
            .find_map(|layer| match layer {
                Layer::Linear { weight, .. } | Layer::Conv2d { weight, .. } => {
                    Some(weight.device().clone())
                }
                Layer::ChannelAffine { scale, .. } => Some(scale.device().clone()),
                _ => None,
            })
            .unwrap_or(Device::Cpu)
    }

    /// The network on the engine, compiled on first use; `None` where the engine cannot run it
    /// (weights off the CPU, not f32, or trainable).
    pub(crate) fn engine(&self) -> Option<&Engine> {
        self.engine
            .get_or_init(|| Engine::compile(self, None))
            .as_ref()
    }

    /// The layers, in order.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Per-sample shape of the input.
    pub fn input_shape(&self) -> &[usize] {
        &self.shapes[0]
    }

    /// Per-sample shape of the output (`[classes]` for a classifier).
    pub fn output_shape(&self) -> &[usize] {
        &self.shapes[self.layers.len()]
    }

    /// Per-sample shape entering layer `i` (`i == layers().len()`: the output).
    pub fn shape_before(&self, i: usize) -> &[usize] {
        &self.shapes[i]
    }

    /// The network of `layers` on inputs of per-sample shape `input`, with the shapes the
    /// builder would infer; `None` when a layer does not fit the shape before it. How the zoo
    /// models describe themselves to the engine.
    pub(crate) fn from_layers(input: &[usize], layers: Vec<Layer>) -> Option<Sequential> {
        let mut shapes = vec![input.to_vec()];
        for layer in &layers {
            let next = output_shape(layer, shapes.last()?)?;
            shapes.push(next);
        }
        Some(Sequential {
            layers,
            shapes,
            engine: Arc::default(),
        })
    }

    /// The same network with `normalize` applied first, as one more affine layer: what a
    /// certifier bounds when the [`Model`](crate::Model) normalises inside.
    pub fn with_normalize_first(&self, normalize: &Normalize, device: &Device) -> Result<Self> {
        let (scale, shift) = normalize.as_affine();
        let channels = scale.len();
        let input = self.input_shape();
        if channels > 1 && input.first() != Some(&channels) {
            return Err(Error::ModelConfig(format!(
                "normalize has {channels} channels but the network's input shape is {input:?}; expected {channels} channels first"
            )));
        }
        let layer = Layer::ChannelAffine {
            scale: Tensor::new(scale, device)?,
            shift: Tensor::new(shift, device)?,
            kind: "Normalize",
        };
        let mut layers = Vec::with_capacity(self.layers.len() + 1);
        layers.push(layer);
        layers.extend(self.layers.iter().cloned());
        let mut shapes = vec![input.to_vec()];
        shapes.extend(self.shapes.iter().cloned());
        Ok(Sequential {
            layers,
            shapes,
            engine: Arc::default(),
        })
    }
}

impl Module for Sequential {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = xs.clone();
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        Ok(x)
    }
}

/// One layer as described, before its weights are read.
#[derive(Debug, Clone, PartialEq)]
enum Spec {
    Linear {
        out: usize,
    },
    Conv2d {
        out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    },
    Relu,
    Flatten,
    MaxPool2d {
        kernel: usize,
        stride: usize,
    },
    AvgPool2d {
        kernel: usize,
        stride: usize,
    },
    BatchNorm,
    Normalize(Normalize),
}

/// Describes a [`Sequential`] layer by layer, then reads its weights. Input sizes are inferred
/// from the shapes, as in `nn.LazyLinear`; only output sizes are given.
#[derive(Debug, Clone)]
pub struct SequentialBuilder {
    input_shape: Vec<usize>,
    specs: Vec<Spec>,
}

impl SequentialBuilder {
    /// `nn.Linear(in, out)` (with bias; `in` is the flattened input size).
    pub fn linear(mut self, out: usize) -> Self {
        self.specs.push(Spec::Linear { out });
        self
    }

    /// `nn.Conv2d(in, out, kernel, stride, padding)` (with bias).
    pub fn conv2d(mut self, out: usize, kernel: usize, stride: usize, padding: usize) -> Self {
        self.specs.push(Spec::Conv2d {
            out,
            kernel,
            stride,
            padding,
        });
        self
    }

    /// `nn.ReLU()`.
    pub fn relu(mut self) -> Self {
        self.specs.push(Spec::Relu);
        self
    }

    /// `nn.Flatten()`.
    pub fn flatten(mut self) -> Self {
        self.specs.push(Spec::Flatten);
        self
    }

    /// `nn.MaxPool2d(kernel)` (stride = kernel).
    pub fn max_pool2d(self, kernel: usize) -> Self {
        self.max_pool2d_with_stride(kernel, kernel)
    }

    /// `nn.MaxPool2d(kernel, stride)`.
    pub fn max_pool2d_with_stride(mut self, kernel: usize, stride: usize) -> Self {
        self.specs.push(Spec::MaxPool2d { kernel, stride });
        self
    }

    /// `nn.AvgPool2d(kernel)` (stride = kernel).
    pub fn avg_pool2d(self, kernel: usize) -> Self {
        self.avg_pool2d_with_stride(kernel, kernel)
    }

    /// `nn.AvgPool2d(kernel, stride)`.
    pub fn avg_pool2d_with_stride(mut self, kernel: usize, stride: usize) -> Self {
        self.specs.push(Spec::AvgPool2d { kernel, stride });
        self
    }

    /// `nn.BatchNorm1d`/`nn.BatchNorm2d` in eval mode: reads `weight`, `bias`, `running_mean`,
    /// `running_var` (ε = 1e-5, PyTorch's default).
    pub fn batch_norm(mut self) -> Self {
        self.specs.push(Spec::BatchNorm);
        self
    }

    /// A parameter-free normalisation layer `(x − mean) / std` per channel.
    pub fn normalize(mut self, normalize: Normalize) -> Self {
        self.specs.push(Spec::Normalize(normalize));
        self
    }

    /// Reads the weights from a safetensors file written by PyTorch for the same
    /// `nn.Sequential` (float32; other float types are converted).
    pub fn load(self, path: impl AsRef<Path>, device: &Device) -> Result<Sequential> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        // SAFETY: the file is only read; mmap is what candle's loaders use.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, device) }
            .map_err(|source| Error::Weights {
                model: "Sequential".into(),
                path: path.to_path_buf(),
                source,
            })?;
        crate::data::check_finite_weights("Sequential", path)?;
        self.build(vb).map_err(|e| match e {
            Error::Candle(source) => crate::data::weights_error("Sequential", path, source),
            other => other,
        })
    }

    /// Builds the network from a var builder: layer `i` reads `i.weight`, `i.bias`, …
    /// With a `VarMap`-backed builder the weights are trainable `Var`s.
    pub fn build(self, vb: VarBuilder) -> Result<Sequential> {
        let mut shape = self.input_shape.clone();
        if shape.is_empty() || shape.contains(&0) {
            return Err(Error::ModelConfig(format!(
                "input shape {shape:?}; expected non-empty dimensions, e.g. [1, 28, 28]"
            )));
        }
        let mut layers = Vec::with_capacity(self.specs.len());
        let mut shapes = vec![shape.clone()];
        for (i, spec) in self.specs.into_iter().enumerate() {
            let vb = vb.pp(i.to_string());
            let bad = |expected: &str| {
                Error::ModelConfig(format!(
                    "layer {i} ({spec:?}) gets inputs of shape {shape:?}; expected {expected}"
                ))
            };
            let positive = |what: &str, v: usize| {
                if v == 0 {
                    Err(Error::ModelConfig(format!(
                        "layer {i} ({spec:?}) has {what} 0; expected at least 1"
                    )))
                } else {
                    Ok(())
                }
            };
            let (layer, next) = match &spec {
                Spec::Linear { out } => {
                    positive("output size", *out)?;
                    let [features] = shape[..] else {
                        return Err(bad("flat features (add .flatten() before it)"));
                    };
                    let weight = vb.get((*out, features), "weight")?;
                    let bias = vb.get(*out, "bias")?;
                    (Layer::Linear { weight, bias }, vec![*out])
                }
                Spec::Conv2d {
                    out,
                    kernel,
                    stride,
                    padding,
                } => {
                    positive("output channels", *out)?;
                    positive("kernel size", *kernel)?;
                    positive("stride", *stride)?;
                    let [c, h, w] = shape[..] else {
                        return Err(bad("channels × height × width"));
                    };
                    if h + 2 * padding < *kernel || w + 2 * padding < *kernel {
                        return Err(bad("an image at least as large as the kernel"));
                    }
                    let weight = vb.get((*out, c, *kernel, *kernel), "weight")?;
                    let bias = vb.get(*out, "bias")?;
                    let size = |n: usize| (n + 2 * padding - kernel) / stride + 1;
                    let layer = Layer::Conv2d {
                        weight,
                        bias,
                        stride: *stride,
                        padding: *padding,
                    };
                    (layer, vec![*out, size(h), size(w)])
                }
                Spec::Relu => (Layer::Relu, shape.clone()),
                Spec::Flatten => (Layer::Flatten, vec![shape.iter().product()]),
                Spec::MaxPool2d { kernel, stride } | Spec::AvgPool2d { kernel, stride } => {
                    positive("kernel size", *kernel)?;
                    positive("stride", *stride)?;
                    let [c, h, w] = shape[..] else {
                        return Err(bad("channels × height × width"));
                    };
                    if h < *kernel || w < *kernel {
                        return Err(bad("an image at least as large as the window"));
                    }
                    let size = |n: usize| (n - kernel) / stride + 1;
                    let layer = match spec {
                        Spec::MaxPool2d { .. } => Layer::MaxPool2d {
                            kernel: *kernel,
                            stride: *stride,
                        },
                        _ => Layer::AvgPool2d {
                            kernel: *kernel,
                            stride: *stride,
                        },
                    };
                    (layer, vec![c, size(h), size(w)])
                }
                Spec::BatchNorm => {
                    let c = shape[0];
                    let gamma = vb.get(c, "weight")?;
                    let beta = vb.get(c, "bias")?;
                    let mean = vb.get(c, "running_mean")?;
                    let var = vb.get(c, "running_var")?;
                    let scale = gamma.broadcast_div(&(var + BATCH_NORM_EPS)?.sqrt()?)?;
                    let shift = (beta - mean.mul(&scale)?)?;
                    let layer = Layer::ChannelAffine {
                        scale,
                        shift,
                        kind: "BatchNorm",
                    };
                    (layer, shape.clone())
                }
                Spec::Normalize(normalize) => {
                    let (scale, shift) = normalize.as_affine();
                    if scale.len() > 1 && scale.len() != shape[0] {
                        return Err(bad(&format!("{} channels first", scale.len())));
                    }
                    let layer = Layer::ChannelAffine {
                        scale: Tensor::new(scale, vb.device())?,
                        shift: Tensor::new(shift, vb.device())?,
                        kind: "Normalize",
                    };
                    (layer, shape.clone())
                }
            };
            layers.push(layer);
            shape = next;
            shapes.push(shape.clone());
        }
        Ok(Sequential {
            layers,
            shapes,
            engine: Arc::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    fn zeros(builder: SequentialBuilder) -> Result<Sequential> {
        let varmap = VarMap::new();
        builder.build(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))
    }

    #[test]
    fn infers_shapes_like_pytorch() -> Result<()> {
        let net = zeros(
            Sequential::builder(&[1, 28, 28])
                .conv2d(16, 4, 2, 1)
                .relu()
                .conv2d(32, 4, 2, 1)
                .relu()
                .avg_pool2d(7)
                .flatten()
                .linear(10),
        )?;
        assert_eq!(net.shape_before(1), &[16, 14, 14]);
        assert_eq!(net.shape_before(3), &[32, 7, 7]);
        assert_eq!(net.shape_before(5), &[32, 1, 1]);
        assert_eq!(net.output_shape(), &[10]);
        let y = net.forward(&Tensor::zeros((3, 1, 28, 28), DType::F32, &Device::Cpu)?)?;
        assert_eq!(y.dims(), &[3, 10]);
        Ok(())
    }

    /// Attacks differentiate the network with respect to its input only; the grafted gradient
    /// of a strided convolution is the one candle's autograd computes where candle gets it
    /// right, and has the input's shape where candle's does not (a 9 × 9 input at stride 2).
    #[test]
    fn give_strided_convolutions_the_input_gradient_of_autograd() -> Result<()> {
        let dev = Device::Cpu;
        for size in [28, 9] {
            let mut tensors = std::collections::HashMap::new();
            tensors.insert(
                "0.weight".to_string(),
                Tensor::randn(0f32, 1.0, (4, 2, 4, 4), &dev)?,
            );
            tensors.insert("0.bias".to_string(), Tensor::randn(0f32, 1.0, 4, &dev)?);
            let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
            let net = Sequential::builder(&[2, size, size])
                .conv2d(4, 4, 2, 1)
                .build(vb)?;
            let x = candle_core::Var::from_tensor(&Tensor::randn(
                0f32,
                1.0,
                (3, 2, size, size),
                &dev,
            )?)?;
            let y = net.forward(x.as_tensor())?;
            let g = Tensor::randn(0f32, 1.0, y.dims(), &dev)?;
            let grads = (y * &g)?.sum_all()?.backward()?;
            let ours = grads.get(&x).expect("input gradient");
            assert_eq!(ours.dims(), x.dims());
            if size == 28 {
                let Layer::Conv2d { weight, .. } = &net.layers()[0] else {
                    unreachable!()
                };
                let plain = candle_core::Var::from_tensor(x.as_tensor())?;
                let y = plain.as_tensor().conv2d(weight, 1, 2, 1, 1)?;
                let grads = (y * &g)?.sum_all()?.backward()?;
                let candle = grads.get(&plain).expect("input gradient");
                let diff = (ours - candle)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(diff < 1e-4, "{diff}");
            }
        }
        Ok(())
    }

    #[test]
    fn a_linear_layer_on_an_image_is_an_error_naming_the_layer() {
        let err = zeros(Sequential::builder(&[1, 28, 28]).linear(10)).unwrap_err();
        assert!(err.to_string().contains("layer 0"), "{err}");
        assert!(err.to_string().contains("flatten"), "{err}");
    }

    #[test]
    fn a_zero_kernel_is_an_error() {
        let err = zeros(Sequential::builder(&[1, 8, 8]).conv2d(4, 0, 1, 0)).unwrap_err();
        assert!(err.to_string().contains("kernel size 0"), "{err}");
    }

    #[test]
    fn batch_norm_folds_into_one_affine_map() -> Result<()> {
        let dev = Device::Cpu;
        let mut tensors = std::collections::HashMap::new();
        tensors.insert("0.weight".to_string(), Tensor::new(&[2f32, 1.0], &dev)?);
        tensors.insert("0.bias".to_string(), Tensor::new(&[0.5f32, 0.0], &dev)?);
        tensors.insert(
            "0.running_mean".to_string(),
            Tensor::new(&[1f32, -1.0], &dev)?,
        );
        tensors.insert(
            "0.running_var".to_string(),
            Tensor::new(&[4f32, 1.0], &dev)?,
        );
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
        let net = Sequential::builder(&[2]).batch_norm().build(vb)?;
        let y = net.forward(&Tensor::new(&[[3f32, 1.0]], &dev)?)?;
        let y = y.to_vec2::<f32>()?;
        let expect0 = 2.0 * (3.0 - 1.0) / (4.0f32 + 1e-5).sqrt() + 0.5;
        let expect1 = (1.0 + 1.0) / (1.0f32 + 1e-5).sqrt();
        assert!((y[0][0] - expect0).abs() < 1e-6 && (y[0][1] - expect1).abs() < 1e-6);
        Ok(())
    }
}
