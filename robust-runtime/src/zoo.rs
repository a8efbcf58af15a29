//! Small reference models for MNIST, used by the tests, examples and benchmarks.
//!
//! Parameter names follow a PyTorch `nn.Sequential` of the same architecture (`1.weight`,
//! `3.bias`, …), so the same safetensors file loads in PyTorch (`model.load_state_dict(
//! safetensors.torch.load_file(path))`) and here. The committed weights under
//! `tests/fixtures/` are trained by `cargo xtask fixtures` on the 4,000 training digits of
//! [`Dataset::mnist_sample`](crate::data::Dataset::mnist_sample).
//!
//! ```no_run
//! use robust_runtime::prelude::*;
//! use candle_core::Device;
//!
//! let cnn = zoo::MnistCnn::load("tests/fixtures/mnist_cnn.safetensors", &Device::Cpu)?;
//! # Ok::<(), robust_runtime::Error>(())
//! ```

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use crate::nn::{relu_max_pool2d, Conv2d, Layer, Linear, Node, Sequential, Source};
use crate::{Error, Result};

/// The MLP 784-256-256-10 with ReLU activations, as
/// `nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))`.
#[derive(Debug, Clone)]
pub struct MnistMlp {
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
}

impl MnistMlp {
    /// Builds the model from a var builder (weights `1.*`, `3.*`, `5.*`).
    pub fn new(vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(MnistMlp {
            fc1: Linear::load(784, 256, vb.pp("1"))?,
            fc2: Linear::load(256, 256, vb.pp("3"))?,
            fc3: Linear::load(256, 10, vb.pp("5"))?,
        })
    }

    /// Loads weights from a safetensors file.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        load_with("MnistMlp", path.as_ref(), device, Self::new)
    }

    /// The same network as layers, for the engine.
    pub(crate) fn network(&self) -> Option<Sequential> {
        let layers = vec![
            Layer::Flatten,
            self.fc1.layer().ok()?,
            Layer::Relu,
            self.fc2.layer().ok()?,
            Layer::Relu,
            self.fc3.layer().ok()?,
        ];
        Sequential::from_layers(&[1, 28, 28], layers)
    }
}

impl Module for MnistMlp {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let xs = xs.flatten_from(1)?;
        let xs = self.fc1.forward(&xs)?.relu()?;
        let xs = self.fc2.forward(&xs)?.relu()?;
        self.fc3.forward(&xs)
    }
}

/// The classic MNIST CNN (Madry et al. 2018's architecture): conv 32 5×5 (padding 2), ReLU,
/// max-pool 2, conv 64 5×5 (padding 2), ReLU, max-pool 2, fc 1024, ReLU, fc 10. As PyTorch:
/// `nn.Sequential(nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 5, padding=2),
/// nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3136, 1024), nn.ReLU(), nn.Linear(1024, 10))`.
#[derive(Debug, Clone)]
pub struct MnistCnn {
    conv1: Conv2d,
    conv2: Conv2d,
    fc1: Linear,
    fc2: Linear,
}

impl MnistCnn {
    /// Builds the model from a var builder (weights `0.*`, `3.*`, `7.*`, `9.*`).
    pub fn new(vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(MnistCnn {
            conv1: Conv2d::load(1, 32, 5, 2, vb.pp("0"))?,
            conv2: Conv2d::load(32, 64, 5, 2, vb.pp("3"))?,
            fc1: Linear::load(7 * 7 * 64, 1024, vb.pp("7"))?,
            fc2: Linear::load(1024, 10, vb.pp("9"))?,
        })
    }

    /// Loads weights from a safetensors file.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        load_with("MnistCnn", path.as_ref(), device, Self::new)
    }

    /// The same network as layers, for the engine.
    pub(crate) fn network(&self) -> Option<Sequential> {
        let pool = Layer::MaxPool2d {
            kernel: 2,
            stride: 2,
        };
        let layers = vec![
            self.conv1.layer().ok()?,
            Layer::Relu,
            pool.clone(),
            self.conv2.layer().ok()?,
            Layer::Relu,
            pool,
            Layer::Flatten,
            self.fc1.layer().ok()?,
            Layer::Relu,
            self.fc2.layer().ok()?,
        ];
        Sequential::from_layers(&[1, 28, 28], layers)
    }
}

impl Module for MnistCnn {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        // Our layers (see `crate::nn`): candle's max-pool gives tied maxima the full gradient,
        // and its conv2d / linear backward computes weight gradients an attack never uses.
        // ReLU then max-pool, fused into one graph node.
        let xs = relu_max_pool2d(&self.conv1.forward(xs)?, 2)?;
        let xs = relu_max_pool2d(&self.conv2.forward(&xs)?, 2)?;
        let xs = self.fc1.forward(&xs.flatten_from(1)?)?.relu()?;
        self.fc2.forward(&xs)
    }
}

/// ResNet-18 for 3×32×32 inputs (CIFAR-10's; He et al. 2016 with the 3×3 stem of the CIFAR
/// variants): a 3×3 convolution to 64 channels, four stages of two basic blocks (64, 128, 256,
/// 512 channels, the last three starting with stride 2 and a 1×1 projection shortcut), 4×4
/// average pooling and a linear layer. Batch norm runs in evaluation mode and is folded into
/// the convolution before it when the weights load, so each conv + BN is one convolution.
///
/// Parameter names are torchvision's `resnet18` (`conv1.weight`, `bn1.running_mean`,
/// `layer2.0.downsample.0.weight`, `fc.bias`, …); `tests/reference/bench_torch.py` defines the
/// same module in PyTorch. [`ResNet18::random_weights`] makes a seeded, untrained set of weights
/// for benchmarks (11.2 M parameters).
#[derive(Debug, Clone)]
pub struct ResNet18 {
    stem: Conv2d,
    blocks: Vec<BasicBlock>,
    fc: Linear,
}

/// Two 3×3 convolutions and the identity (or a 1×1 strided projection) added back.
#[derive(Debug, Clone)]
struct BasicBlock {
    conv1: Conv2d,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

/// Channels and first stride of ResNet-18's four stages.
const RESNET18_STAGES: [(usize, usize); 4] = [(64, 1), (128, 2), (256, 2), (512, 2)];

/// Batch norm's ε, PyTorch's default.
const BN_EPS: f64 = 1e-5;

impl ResNet18 {
    /// Builds the model from a var builder with torchvision's `resnet18` names and `classes`
    /// outputs.
    pub fn new(vb: VarBuilder, classes: usize) -> candle_core::Result<Self> {
        let stem = conv_bn(3, 64, 3, 1, vb.pp("conv1"), vb.pp("bn1"))?;
        let mut blocks = Vec::new();
        let mut c_in = 64;
        for (stage, (c_out, stride)) in RESNET18_STAGES.into_iter().enumerate() {
            for b in 0..2 {
                let vb = vb.pp(format!("layer{}.{b}", stage + 1));
                let s = if b == 0 { stride } else { 1 };
                let shortcut = if s != 1 || c_in != c_out {
                    Some(conv_bn(
                        c_in,
                        c_out,
                        1,
                        s,
                        vb.pp("downsample.0"),
                        vb.pp("downsample.1"),
                    )?)
                } else {
                    None
                };
                blocks.push(BasicBlock {
                    conv1: conv_bn(c_in, c_out, 3, s, vb.pp("conv1"), vb.pp("bn1"))?,
                    conv2: conv_bn(c_out, c_out, 3, 1, vb.pp("conv2"), vb.pp("bn2"))?,
                    shortcut,
                });
                c_in = c_out;
            }
        }
        let fc = Linear::load(512, classes, vb.pp("fc"))?;
        Ok(ResNet18 { stem, blocks, fc })
    }

    /// Loads 10-class weights from a safetensors file.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        load_with("ResNet18", path.as_ref(), device, |vb| Self::new(vb, 10))
    }

    /// The same network as a graph of layers, for the engine: each block's sum reads its
    /// input (or the projection of it) besides the second convolution.
    pub(crate) fn graph(&self) -> Option<Source> {
        let mut nodes: Vec<(Node, usize)> = Vec::new();
        // Adds a node reading activation `input`; returns the activation it makes.
        let mut push = |node: Node, input: usize| {
            nodes.push((node, input));
            nodes.len()
        };
        let stem = push(Node::Layer(self.stem.layer().ok()?), 0);
        let mut x = push(Node::Layer(Layer::Relu), stem);
        for block in &self.blocks {
            let a = push(Node::Layer(block.conv1.layer().ok()?), x);
            let a = push(Node::Layer(Layer::Relu), a);
            let out = push(Node::Layer(block.conv2.layer().ok()?), a);
            let skip = match &block.shortcut {
                Some(conv) => push(Node::Layer(conv.layer().ok()?), x),
                None => x,
            };
            let sum = push(Node::Add(skip), out);
            x = push(Node::Layer(Layer::Relu), sum);
        }
        let pool = Layer::AvgPool2d {
            kernel: 4,
            stride: 4,
        };
        let x = push(Node::Layer(pool), x);
        let x = push(Node::Layer(Layer::Flatten), x);
        push(Node::Layer(self.fc.layer().ok()?), x);
        Some(Source::Graph(vec![3, 32, 32], nodes))
    }

    /// Untrained weights for `classes` outputs drawn from `rng`, by torchvision's names: He
    /// (fan-out) normal convolutions, batch-norm scales in [0.5, 1.5], shifts, means in
    /// ±0.1 and variances in [0.5, 1.5] (so that folding them is exercised), PyTorch's default
    /// uniform init for the linear layer. On the CPU; for benchmarks and tests.
    pub fn random_weights(
        rng: &mut crate::Rng,
        classes: usize,
    ) -> Result<std::collections::HashMap<String, Tensor>> {
        let mut w = std::collections::HashMap::new();
        let mut tensor = |name: String, values: Vec<f32>, shape: &[usize]| -> Result<()> {
            w.insert(name, Tensor::from_vec(values, shape, &Device::Cpu)?);
            Ok(())
        };
        let mut conv_bn = |conv: String, bn: String, c_in: usize, c_out: usize, k: usize| {
            let std = (2.0 / (c_out * k * k) as f64).sqrt() as f32;
            let n = c_out * c_in * k * k;
            let weight = rng.normal_vec(n).into_iter().map(|v| v * std).collect();
            tensor(format!("{conv}.weight"), weight, &[c_out, c_in, k, k])?;
            let mut uniform = |lo: f64, hi: f64| rng.uniform_vec(c_out, lo, hi);
            let (g, b, m, v) = (
                uniform(0.5, 1.5),
                uniform(-0.1, 0.1),
                uniform(-0.1, 0.1),
                uniform(0.5, 1.5),
            );
            tensor(format!("{bn}.weight"), g, &[c_out])?;
            tensor(format!("{bn}.bias"), b, &[c_out])?;
            tensor(format!("{bn}.running_mean"), m, &[c_out])?;
            tensor(format!("{bn}.running_var"), v, &[c_out])
        };
        conv_bn("conv1".into(), "bn1".into(), 3, 64, 3)?;
        let mut c_in = 64;
        for (stage, (c_out, stride)) in RESNET18_STAGES.into_iter().enumerate() {
            for b in 0..2 {
                let p = format!("layer{}.{b}", stage + 1);
                let s = if b == 0 { stride } else { 1 };
                conv_bn(format!("{p}.conv1"), format!("{p}.bn1"), c_in, c_out, 3)?;
                conv_bn(format!("{p}.conv2"), format!("{p}.bn2"), c_out, c_out, 3)?;
                if s != 1 || c_in != c_out {
                    let (conv, bn) = (format!("{p}.downsample.0"), format!("{p}.downsample.1"));
                    conv_bn(conv, bn, c_in, c_out, 1)?;
                }
                c_in = c_out;
            }
        }
        let bound = 1.0 / (512f64).sqrt();
        let mut uniform = |n: usize| rng.uniform_vec(n, -bound, bound);
        let (weight, bias) = (uniform(classes * 512), uniform(classes));
        tensor("fc.weight".into(), weight, &[classes, 512])?;
        tensor("fc.bias".into(), bias, &[classes])?;
        Ok(w)
    }
}

/// A bias-free convolution followed by evaluation-mode batch norm, folded into one convolution:
/// `W·γ/√(σ²+ε)` per output channel, bias `β − μ·γ/√(σ²+ε)`.
fn conv_bn(
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    conv: VarBuilder,
    bn: VarBuilder,
) -> candle_core::Result<Conv2d> {
    let weight = conv.get((c_out, c_in, k, k), "weight")?;
    let (gamma, beta) = (bn.get(c_out, "weight")?, bn.get(c_out, "bias")?);
    let (mean, var) = (
        bn.get(c_out, "running_mean")?,
        bn.get(c_out, "running_var")?,
    );
    let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
    let bias = (beta - (mean * &scale)?)?;
    let weight = weight.broadcast_mul(&scale.reshape((c_out, 1, 1, 1))?)?;
    Conv2d::new(weight, Some(bias), k / 2)?.with_stride(stride)
}

impl Module for ResNet18 {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut xs = self.stem.forward(xs)?.relu()?;
        for block in &self.blocks {
            let out = block.conv1.forward(&xs)?.relu()?;
            let out = block.conv2.forward(&out)?;
            let skip = match &block.shortcut {
                Some(conv) => conv.forward(&xs)?,
                None => xs,
            };
            xs = (out + skip)?.relu()?;
        }
        let xs = xs.avg_pool2d(4)?.flatten_from(1)?;
        self.fc.forward(&xs)
    }
}

/// The same architectures as certifiable [`Sequential`](crate::nn::Sequential) networks (same
/// weight names, so the same files load), plus the small convolutional network that certified
/// training uses.
pub mod layers {
    use crate::nn::{Sequential, SequentialBuilder};

    /// [`MnistMlp`](super::MnistMlp) as layers.
    pub fn mnist_mlp() -> SequentialBuilder {
        Sequential::builder(&[1, 28, 28])
            .flatten()
            .linear(256)
            .relu()
            .linear(256)
            .relu()
            .linear(10)
    }

    /// [`MnistCnn`](super::MnistCnn) as layers.
    pub fn mnist_cnn() -> SequentialBuilder {
        Sequential::builder(&[1, 28, 28])
            .conv2d(32, 5, 1, 2)
            .relu()
            .max_pool2d(2)
            .conv2d(64, 5, 1, 2)
            .relu()
            .max_pool2d(2)
            .flatten()
            .linear(1024)
            .relu()
            .linear(10)
    }

    /// The "small" network of certified-training papers (Wong & Kolter 2018; Gowal et al. 2018):
    /// `nn.Sequential(nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 4,
    /// stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(1568, 100), nn.ReLU(),
    /// nn.Linear(100, 10))`: weights `0.*`, `2.*`, `5.*`, `7.*`. The committed
    /// `tests/fixtures/mnist_ibp.safetensors` (IBP-trained) and `mnist_noise.safetensors`
    /// (trained on Gaussian noise, for smoothing) use it.
    pub fn mnist_small_cnn() -> SequentialBuilder {
        Sequential::builder(&[1, 28, 28])
            .conv2d(16, 4, 2, 1)
            .relu()
            .conv2d(32, 4, 2, 1)
            .relu()
            .flatten()
            .linear(100)
            .relu()
            .linear(10)
    }
}

fn load_with<M>(
    model: &'static str,
    path: &Path,
    device: &Device,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<M>,
) -> Result<M> {
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        ));
    }
    // SAFETY: the file is memory-mapped read-only; like every mmap it must not be truncated
    // while the model is alive, which holds for weight files that nothing else writes.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, device) }.map_err(
        |source| Error::Weights {
            model,
            path: path.into(),
            source,
        },
    )?;
    crate::data::check_finite_weights(model, path)?;
    build(vb).map_err(|source| crate::data::weights_error(model, path, source))
}

#[cfg(test)]
mod should {
    use super::*;

    /// The residual graph on the engine against candle's forward pass and autograd: logits and
    /// the input gradient of a random linear function of them, on seeded random weights (batch
    /// norm folded, so every block's projection and identity shortcut is exercised).
    #[test]
    fn run_resnet18_on_the_engine_with_candles_logits_and_gradients() -> Result<()> {
        let mut rng = crate::Rng::seed_from_u64(3);
        let weights = ResNet18::random_weights(&mut rng, 10)?;
        let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
        let net = ResNet18::new(vb, 10)?;
        let engine = net
            .graph()
            .and_then(|g| g.compile(None))
            .expect("a known graph");
        let x = Tensor::from_vec(
            rng.uniform_vec(2 * 3072, 0.0, 1.0),
            (2, 3, 32, 32),
            &Device::Cpu,
        )?;
        let r = Tensor::from_vec(rng.normal_vec(20), (2, 10), &Device::Cpu)?;
        let var = candle_core::Var::from_tensor(&x)?;
        let logits = net.forward(var.as_tensor())?;
        let grads = (&logits * &r)?.sum_all()?.backward()?;
        let grad = grads.get(var.as_tensor()).expect("input gradient").clone();
        let (ours, (), our_grad) = engine.forward_backward(&x, |_| Ok(((), r.clone())))?;
        let max = |t: &Tensor| -> Result<f32> { Ok(t.abs()?.max_all()?.to_scalar::<f32>()?) };
        let (dl, dg) = (max(&(&ours - &logits)?)?, max(&(&our_grad - &grad)?)?);
        assert!(dl <= 1e-4 * max(&logits)?.max(1.0), "logits differ by {dl}");
        assert!(
            dg <= 1e-3 * max(&grad)?,
            "gradients differ by {dg} of {}",
            max(&grad)?
        );
        assert!(max(&grad)? > 0.0);
        Ok(())
    }

    #[test]
    fn name_a_missing_weight_file() {
        let err = MnistMlp::load("does/not/exist.safetensors", &Device::Cpu).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot access does/not/exist.safetensors"),
            "{err}"
        );
    }

    #[test]
    fn refuse_weights_holding_nan_and_name_the_tensor() {
        let dir = tempfile_dir("nan");
        let path = dir.join("nan.safetensors");
        let zeros = |dims: &[usize]| Tensor::zeros(dims, DType::F32, &Device::Cpu).unwrap();
        let mut w = vec![0.0f32; 256 * 256];
        w[7] = f32::NAN;
        let tensors: std::collections::HashMap<String, Tensor> = [
            ("1.weight", zeros(&[256, 784])),
            ("1.bias", zeros(&[256])),
            (
                "3.weight",
                Tensor::from_vec(w, (256, 256), &Device::Cpu).unwrap(),
            ),
            ("3.bias", zeros(&[256])),
            ("5.weight", zeros(&[10, 256])),
            ("5.bias", zeros(&[10])),
        ]
        .into_iter()
        .map(|(n, t)| (n.to_string(), t))
        .collect();
        candle_core::safetensors::save(&tensors, &path).unwrap();
        let err = MnistMlp::load(&path, &Device::Cpu).unwrap_err();
        assert!(
            matches!(&err, Error::NonFiniteWeight { tensor, index: 7, .. } if tensor == "3.weight"),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .ends_with("weight tensor `3.weight` holds NaN at flat index 7; expected finite weights (a corrupt file, or a training run that diverged?)"),
            "{err}"
        );
        // The same file through a Sequential of the same layers.
        let err = layers::mnist_mlp().load(&path, &Device::Cpu).unwrap_err();
        assert!(matches!(err, Error::NonFiniteWeight { .. }), "{err:?}");
        std::fs::remove_dir_all(&dir).ok();
    }

    fn tempfile_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("robust-zoo-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn name_the_missing_tensor_in_a_wrong_file() {
        let dir = std::env::temp_dir().join(format!("robust-zoo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("wrong.safetensors");
        let t = Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
        candle_core::safetensors::save(&[("0.weight", t)].into_iter().collect(), &path).unwrap();
        let err = MnistCnn::load(&path, &Device::Cpu).unwrap_err().to_string();
        assert!(
            err.contains("cannot load MnistCnn weights") && err.contains("0.weight"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
