//! ONNX files as [`Graph`]s: the networks PyTorch's exporter writes (`torch.onnx.export`, opsets
//! 11 to 17), read into robust's own layers so that every attack, the engine and the certifiers
//! run on them.
//!
//! The file is decoded with `prost` from the messages of `onnx.proto` declared in [`proto`]
//! (no `protoc` needed to build). Operators read:
//!
//! | ONNX | becomes |
//! |---|---|
//! | `Gemm` (`transA = 0`, `α = β = 1`), `MatMul` by a constant | [`Layer::Linear`] |
//! | `Conv` (square kernel, equal strides and symmetric pads, no dilation or groups) | [`Layer::Conv2d`] |
//! | `Relu` | [`Layer::Relu`] |
//! | `MaxPool`, `AveragePool` (square, no padding), `GlobalAveragePool` (square planes) | [`Layer::MaxPool2d`], [`Layer::AvgPool2d`] |
//! | `Flatten` (axis 1), `Reshape` to `[batch, features]` by a constant shape | [`Layer::Flatten`] |
//! | `Add` of two activations | a residual sum |
//! | `Add`, `Sub`, `Mul`, `Div` by a constant (a scalar, or one value per channel) | the bias of the layer before (an `Add` after a `MatMul`), or [`Layer::ChannelAffine`] |
//! | `BatchNormalization` (inference) | folded into the convolution or linear layer before it, else [`Layer::ChannelAffine`] |
//! | `Identity`, `Dropout` (inference), `Constant` | nothing, or a constant |
//!
//! Consecutive per-channel maps (a `Sub` then a `Div`: normalisation) become one. Anything else
//! is an [`Error::OnnxNode`] naming the node, its operator and what is supported.

pub(crate) mod proto;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use prost::Message;

use crate::nn::{Graph, Layer};
use crate::{Error, Result};

use proto::{AttributeProto, NodeProto, TensorProto};

/// The operators [`import`] reads, for messages.
pub const SUPPORTED: &str = "Conv, Gemm, MatMul, Relu, MaxPool, AveragePool, GlobalAveragePool, \
     Flatten, Reshape, Add, Concat, Sub, Mul, Div, BatchNormalization, Identity, Dropout, Constant";

/// A value of the ONNX graph: an activation of the [`Graph`], or a constant.
#[derive(Clone)]
enum Value {
    Act(usize),
    Const(Constant),
}

/// A constant tensor's shape and values (as f32 and, for integer tensors, as i64).
#[derive(Clone)]
struct Constant {
    dims: Vec<usize>,
    values: Vec<f32>,
    ints: Vec<i64>,
}

impl Graph {
    /// Reads a network from an ONNX file, its weights as tensors on `device` (see
    /// [`crate::onnx`] for the operators it reads and how).
    pub fn from_onnx(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        import(path.as_ref(), device)
    }
}

/// Reads `path` (see the module docs).
pub(crate) fn import(path: &Path, device: &Device) -> Result<Graph> {
    let bytes = std::fs::read(path).map_err(|source| Error::io(path, source))?;
    let model = proto::ModelProto::decode(bytes.as_slice()).map_err(|e| format_error(path, e))?;
    let Some(graph) = model.graph else {
        return Err(format_error(path, "the model has no graph"));
    };
    let mut values: HashMap<String, Value> = HashMap::new();
    for t in &graph.initializer {
        values.insert(t.name.clone(), Value::Const(constant(path, t)?));
    }
    // The data input: the one graph input that is not a weight (older exporters list the
    // weights as inputs too).
    let inputs: Vec<_> = (graph.input.iter())
        .filter(|i| !values.contains_key(&i.name))
        .collect();
    let [input] = inputs.as_slice() else {
        return Err(format_error(
            path,
            format!(
                "expected one data input, found {}: {:?}",
                inputs.len(),
                inputs.iter().map(|i| &i.name).collect::<Vec<_>>()
            ),
        ));
    };
    let dims = (input.r#type.as_ref())
        .and_then(|t| t.tensor_type.as_ref())
        .and_then(|t| t.shape.as_ref())
        .map(|s| s.dim.iter().map(|d| d.dim_value).collect::<Vec<_>>())
        .unwrap_or_default();
    // Dimension 0 is the batch (fixed or dynamic); the rest must be known.
    let shape: Option<Vec<usize>> = (dims.iter().skip(1))
        .map(|d| d.filter(|&v| v > 0).map(|v| v as usize))
        .collect();
    let shape = match shape {
        Some(shape) if !dims.is_empty() => shape,
        _ => {
            return Err(format_error(
                path,
                format!(
                    "input `{}` has shape {dims:?}; expected a batch dimension and known sizes \
                     after it (export with a fixed example input)",
                    input.name
                ),
            ))
        }
    };
    values.insert(input.name.clone(), Value::Act(0));
    // Readers of each value, a pass-through's readers counted as its input's.
    let mut alias: HashMap<&str, &str> = HashMap::new();
    for node in &graph.node {
        if let ("Identity" | "Dropout", Some(i), Some(o)) = (
            node.op_type.as_str(),
            node.input.first(),
            node.output.first(),
        ) {
            let i = alias.get(i.as_str()).copied().unwrap_or(i.as_str());
            alias.insert(o.as_str(), i);
        }
    }
    let mut readers: HashMap<String, usize> = HashMap::new();
    let names = (graph.node.iter())
        .filter(|n| !matches!(n.op_type.as_str(), "Identity" | "Dropout"))
        .flat_map(|n| n.input.iter())
        .chain(graph.output.iter().map(|o| &o.name));
    for name in names {
        let name = alias.get(name.as_str()).copied().unwrap_or(name.as_str());
        *readers.entry(name.to_string()).or_default() += 1;
    }
    let alias: HashMap<String, String> = (alias.into_iter())
        .map(|(o, i)| (o.to_string(), i.to_string()))
        .collect();
    let mut net = Importer {
        path,
        device,
        graph: Graph::new(&shape),
        values,
        readers,
        alias,
    };
    for node in &graph.node {
        net.node(node)?;
    }
    let [output] = graph.output.as_slice() else {
        return Err(format_error(
            path,
            format!("expected one output, found {}", graph.output.len()),
        ));
    };
    match net.values.get(&output.name) {
        Some(Value::Act(k)) if *k == net.graph.len() && *k > 0 => Ok(net.graph),
        _ => Err(format_error(
            path,
            format!(
                "output `{}` is not the last node's activation; expected the logits to be \
                 computed last",
                output.name
            ),
        )),
    }
}

fn format_error(path: &Path, reason: impl ToString) -> Error {
    Error::Format {
        format: "ONNX",
        path: path.into(),
        reason: reason.to_string(),
    }
}

/// The values of an initializer or `Constant` (inline data, f32, f64 or integers).
fn constant(path: &Path, t: &TensorProto) -> Result<Constant> {
    let bad = |reason: String| format_error(path, format!("tensor `{}`: {reason}", t.name));
    if t.data_location == 1 || !t.external_data.is_empty() {
        return Err(bad(
            "its data is in an external file; expected the weights inside the model file \
             (export without `external_data`)"
                .into(),
        ));
    }
    if t.dims.iter().any(|&d| d < 0) {
        return Err(bad(format!("negative dimension in {:?}", t.dims)));
    }
    let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    let Some(count) = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) else {
        return Err(bad(format!("shape {dims:?} has more values than memory")));
    };
    let raw = |width: usize| -> Result<Vec<&[u8]>> {
        if Some(t.raw_data.len()) != count.checked_mul(width) {
            return Err(bad(format!(
                "{} bytes of raw data for {count} values of {width} bytes",
                t.raw_data.len()
            )));
        }
        Ok(t.raw_data.chunks_exact(width).collect())
    };
    let (values, ints): (Vec<f32>, Vec<i64>) = match t.data_type {
        proto::FLOAT if !t.raw_data.is_empty() => (
            raw(4)?
                .iter()
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Vec::new(),
        ),
        proto::FLOAT => (t.float_data.clone(), Vec::new()),
        proto::DOUBLE if !t.raw_data.is_empty() => (
            raw(8)?
                .iter()
                .map(|b| f64::from_le_bytes(b[..8].try_into().unwrap_or_default()) as f32)
                .collect(),
            Vec::new(),
        ),
        proto::DOUBLE => (
            t.double_data.iter().map(|&v| v as f32).collect(),
            Vec::new(),
        ),
        proto::INT64 => {
            let ints: Vec<i64> = if t.raw_data.is_empty() {
                t.int64_data.clone()
            } else {
                (raw(8)?.iter())
                    .map(|b| i64::from_le_bytes(b[..8].try_into().unwrap_or_default()))
                    .collect()
            };
            (ints.iter().map(|&v| v as f32).collect(), ints)
        }
        proto::INT32 => {
            let ints: Vec<i64> = if t.raw_data.is_empty() {
                t.int32_data.iter().map(|&v| v as i64).collect()
            } else {
                (raw(4)?.iter())
                    .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
                    .collect()
            };
            (ints.iter().map(|&v| v as f32).collect(), ints)
        }
        other => {
            return Err(bad(format!(
                "element type {other}; expected float (1), double (11), int32 (6) or int64 (7)"
            )))
        }
    };
    if values.len() != count {
        return Err(bad(format!("{} values for shape {dims:?}", values.len())));
    }
    if let Some(v) = values.iter().find(|v| !v.is_finite()) {
        return Err(bad(format!("holds {v}; expected finite weights")));
    }
    Ok(Constant { dims, values, ints })
}

struct Importer<'a> {
    path: &'a Path,
    device: &'a Device,
    graph: Graph,
    values: HashMap<String, Value>,
    /// How many nodes (and graph outputs) read each value, pass-throughs resolved.
    readers: HashMap<String, usize>,
    /// What each pass-through (`Identity`, `Dropout`) passes on.
    alias: HashMap<String, String>,
}

impl Importer<'_> {
    fn unsupported(&self, node: &NodeProto, reason: impl Into<String>) -> Error {
        Error::OnnxNode {
            path: self.path.into(),
            node: node.name.clone(),
            op: node.op_type.clone(),
            reason: reason.into(),
        }
    }

    fn value(&self, node: &NodeProto, i: usize) -> Result<Value> {
        let name = node.input.get(i).filter(|n| !n.is_empty());
        match name.and_then(|n| self.values.get(n)) {
            Some(v) => Ok(v.clone()),
            None => Err(self.unsupported(
                node,
                format!("input {i} ({name:?}) is not produced before this node"),
            )),
        }
    }

    fn act(&self, node: &NodeProto, i: usize) -> Result<usize> {
        match self.value(node, i)? {
            Value::Act(a) => Ok(a),
            Value::Const(_) => Err(self.unsupported(
                node,
                format!("input {i} is a constant; expected an activation"),
            )),
        }
    }

    fn constant(&self, node: &NodeProto, i: usize) -> Result<Constant> {
        match self.value(node, i)? {
            Value::Const(c) => Ok(c),
            Value::Act(_) => Err(self.unsupported(
                node,
                format!("input {i} is computed from the data; expected a constant (a weight)"),
            )),
        }
    }

    fn optional_constant(&self, node: &NodeProto, i: usize) -> Result<Option<Constant>> {
        match node.input.get(i).filter(|n| !n.is_empty()) {
            Some(_) => self.constant(node, i).map(Some),
            None => Ok(None),
        }
    }

    fn tensor(&self, c: &Constant, dims: &[usize]) -> Result<Tensor> {
        Ok(Tensor::from_vec(c.values.clone(), dims, self.device)?)
    }

    /// Whether activation `a`, input `i` of `node`, is read by this one node only (so that the
    /// layer making it may absorb what the node does).
    fn read_once(&self, node: &NodeProto, i: usize, a: usize) -> bool {
        let name = &node.input[i];
        let resolved = self.alias.get(name).unwrap_or(name);
        a > 0
            && self.readers.get(resolved) == Some(&1)
            && node.input.iter().filter(|n| *n == name).count() == 1
    }

    fn define(&mut self, node: &NodeProto, value: Value) {
        if let Some(out) = node.output.first() {
            self.values.insert(out.clone(), value);
        }
    }

    fn push(&mut self, node: &NodeProto, input: usize, layer: Layer) -> Result<()> {
        let a = self.graph.layer(input, layer).map_err(|e| match e {
            Error::ModelConfig(reason) => self.unsupported(node, reason),
            e => e,
        })?;
        self.define(node, Value::Act(a));
        Ok(())
    }

    fn node(&mut self, node: &NodeProto) -> Result<()> {
        if !(node.domain.is_empty() || node.domain == "ai.onnx") {
            return Err(self.unsupported(
                node,
                format!(
                    "operator domain `{}`; expected the default ONNX domain",
                    node.domain
                ),
            ));
        }
        match node.op_type.as_str() {
            "Constant" => {
                let Some(t) = attribute(node, "value").and_then(|a| a.t.as_ref()) else {
                    return Err(self.unsupported(node, "expected a `value` tensor attribute"));
                };
                let c = constant(self.path, t)?;
                self.define(node, Value::Const(c));
            }
            "Identity" | "Dropout" => {
                let v = self.value(node, 0)?;
                self.define(node, v);
            }
            "Relu" => {
                let a = self.act(node, 0)?;
                self.push(node, a, Layer::Relu)?;
            }
            "Gemm" => self.gemm(node)?,
            "MatMul" => {
                let a = self.act(node, 0)?;
                let w = self.constant(node, 1)?;
                let [d_in, d_out] = w.dims[..] else {
                    return Err(self
                        .unsupported(node, format!("weight of shape {:?}; expected 2-D", w.dims)));
                };
                let weight = self.tensor(&w, &[d_in, d_out])?.t()?.contiguous()?;
                let bias = Tensor::zeros(d_out, DType::F32, self.device)?;
                self.push(node, a, Layer::Linear { weight, bias })?;
            }
            "Conv" => self.conv(node)?,
            "MaxPool" | "AveragePool" => self.pool(node)?,
            "GlobalAveragePool" => {
                let a = self.act(node, 0)?;
                let shape = self.graph_shape(a);
                let &[_, h, w] = shape.as_slice() else {
                    return Err(self.unsupported(
                        node,
                        format!("input of per-sample shape {shape:?}; expected C × H × W"),
                    ));
                };
                if h != w {
                    return Err(
                        self.unsupported(node, format!("{h} × {w} planes; expected square ones"))
                    );
                }
                self.push(
                    node,
                    a,
                    Layer::AvgPool2d {
                        kernel: h,
                        stride: h,
                    },
                )?;
            }
            "Flatten" => {
                let a = self.act(node, 0)?;
                let axis = attribute(node, "axis").map_or(1, |a| a.i);
                if axis != 1 {
                    return Err(self
                        .unsupported(node, format!("axis = {axis}; expected 1 (keep the batch)")));
                }
                self.flatten(node, a)?;
            }
            "Reshape" => {
                let a = self.act(node, 0)?;
                let target = self.constant(node, 1)?.ints;
                let features: usize = self.graph_shape(a).iter().product();
                let flat = matches!(target[..], [b, f] if (b == -1 || b == 0 || b > 0)
                    && (f == -1 || f == features as i64));
                if !flat {
                    return Err(self.unsupported(
                        node,
                        format!(
                            "target shape {target:?}; expected [batch, {features}] (a flatten: \
                             export `torch.flatten(x, 1)` or `nn.Flatten()`)"
                        ),
                    ));
                }
                self.flatten(node, a)?;
            }
            "Add" => match (self.value(node, 0)?, self.value(node, 1)?) {
                (Value::Act(a), Value::Act(b)) => {
                    let sum = self.graph.add(a, b).map_err(|e| match e {
                        Error::ModelConfig(reason) => self.unsupported(node, reason),
                        e => e,
                    })?;
                    self.define(node, Value::Act(sum));
                }
                (Value::Act(a), Value::Const(c)) => {
                    self.channel_map(node, (0, a), &c, |_| 1.0, |v| v)?
                }
                (Value::Const(c), Value::Act(a)) => {
                    self.channel_map(node, (1, a), &c, |_| 1.0, |v| v)?
                }
                _ => return Err(self.unsupported(node, "both inputs are constants")),
            },
            "Concat" => self.concat(node)?,
            "Sub" | "Mul" | "Div" => {
                let a = self.act(node, 0)?;
                let c = self.constant(node, 1)?;
                if node.op_type == "Div" && c.values.contains(&0.0) {
                    return Err(self.unsupported(node, "division by a constant that holds 0"));
                }
                match node.op_type.as_str() {
                    "Sub" => self.channel_map(node, (0, a), &c, |_| 1.0, |v| -v)?,
                    "Mul" => self.channel_map(node, (0, a), &c, |v| v, |_| 0.0)?,
                    _ => self.channel_map(node, (0, a), &c, |v| 1.0 / v, |_| 0.0)?,
                }
            }
            "BatchNormalization" => self.batch_norm(node)?,
            op => {
                return Err(self.unsupported(
                    node,
                    format!("operator `{op}` is not supported; supported: {SUPPORTED}"),
                ))
            }
        }
        Ok(())
    }

    /// `Concat` of activations along the channels (or features): axis 1, in pairs from the
    /// first input on.
    fn concat(&mut self, node: &NodeProto) -> Result<()> {
        let parts = (0..node.input.len())
            .map(|i| self.act(node, i))
            .collect::<Result<Vec<usize>>>()?;
        let Some((&first, rest)) = parts.split_first() else {
            return Err(self.unsupported(node, "no inputs; expected at least one activation"));
        };
        let rank = self.graph_shape(first).len() as i64 + 1;
        let axis = attribute(node, "axis").map(|a| a.i);
        if axis.map(|a| if a < 0 { a + rank } else { a }) != Some(1) {
            return Err(self.unsupported(
                node,
                format!(
                    "axis = {axis:?} on inputs of rank {rank}; expected 1 (the channels or \
                     features)"
                ),
            ));
        }
        let mut at = first;
        for &b in rest {
            at = self.graph.concat(at, b).map_err(|e| match e {
                Error::ModelConfig(reason) => self.unsupported(node, reason),
                e => e,
            })?;
        }
        self.define(node, Value::Act(at));
        Ok(())
    }

    fn graph_shape(&self, a: usize) -> Vec<usize> {
        self.graph.activation_shape(a).to_vec()
    }

    /// A flatten, or nothing when the activation is flat already.
    fn flatten(&mut self, node: &NodeProto, a: usize) -> Result<()> {
        if self.graph_shape(a).len() == 1 {
            self.define(node, Value::Act(a));
            return Ok(());
        }
        self.push(node, a, Layer::Flatten)
    }

    fn gemm(&mut self, node: &NodeProto) -> Result<()> {
        let a = self.act(node, 0)?;
        let w = self.constant(node, 1)?;
        let float = |name: &str| attribute(node, name).map_or(1.0, |a| a.f);
        let int = |name: &str| attribute(node, name).map_or(0, |a| a.i);
        if float("alpha") != 1.0 || float("beta") != 1.0 || int("transA") != 0 {
            return Err(self.unsupported(
                node,
                format!(
                    "alpha = {}, beta = {}, transA = {}; expected 1, 1 and 0 (as `nn.Linear` \
                     exports)",
                    float("alpha"),
                    float("beta"),
                    int("transA")
                ),
            ));
        }
        let [r, c] = w.dims[..] else {
            return Err(
                self.unsupported(node, format!("weight of shape {:?}; expected 2-D", w.dims))
            );
        };
        let weight = if int("transB") == 1 {
            self.tensor(&w, &[r, c])?
        } else {
            self.tensor(&w, &[r, c])?.t()?.contiguous()?
        };
        let d_out = weight.dim(0)?;
        let bias = match self.optional_constant(node, 2)? {
            Some(b) if b.values.len() == d_out => self.tensor(&b, &[d_out])?,
            Some(b) => {
                return Err(self.unsupported(
                    node,
                    format!("bias of shape {:?}; expected {d_out} values", b.dims),
                ))
            }
            None => Tensor::zeros(d_out, DType::F32, self.device)?,
        };
        self.push(node, a, Layer::Linear { weight, bias })
    }

    fn conv(&mut self, node: &NodeProto) -> Result<()> {
        let a = self.act(node, 0)?;
        let w = self.constant(node, 1)?;
        let &[c_out, c_in, kh, kw] = w.dims.as_slice() else {
            return Err(self.unsupported(
                node,
                format!(
                    "weight of shape {:?}; expected 4-D (2-D convolution)",
                    w.dims
                ),
            ));
        };
        let ints = |name: &str, default: Vec<i64>| {
            attribute(node, name).map_or(default, |a| a.ints.clone())
        };
        let strides = ints("strides", vec![1, 1]);
        let pads = ints("pads", vec![0; 4]);
        let dilations = ints("dilations", vec![1, 1]);
        let group = attribute(node, "group").map_or(1, |a| a.i);
        let auto_pad = attribute(node, "auto_pad").map_or(Vec::new(), |a| a.s.clone());
        let square = kh == kw
            && strides.len() == 2
            && strides[0] == strides[1]
            && strides[0] > 0
            && pads.len() == 4
            && pads.iter().all(|&p| p == pads[0] && p >= 0)
            && dilations.iter().all(|&d| d == 1)
            && group == 1
            && (auto_pad.is_empty() || auto_pad == b"NOTSET");
        if !square {
            return Err(self.unsupported(
                node,
                format!(
                    "kernel {kh} × {kw}, strides {strides:?}, pads {pads:?}, dilations \
                     {dilations:?}, group {group}; expected a square kernel, equal strides, the \
                     same padding on every side, no dilation and one group"
                ),
            ));
        }
        let weight = self.tensor(&w, &[c_out, c_in, kh, kw])?;
        let bias = match self.optional_constant(node, 2)? {
            Some(b) if b.values.len() == c_out => self.tensor(&b, &[c_out])?,
            Some(b) => {
                return Err(self.unsupported(
                    node,
                    format!("bias of shape {:?}; expected {c_out} values", b.dims),
                ))
            }
            None => Tensor::zeros(c_out, DType::F32, self.device)?,
        };
        let layer = Layer::Conv2d {
            weight,
            bias,
            stride: strides[0] as usize,
            padding: pads[0] as usize,
        };
        self.push(node, a, layer)
    }

    fn pool(&mut self, node: &NodeProto) -> Result<()> {
        let a = self.act(node, 0)?;
        let ints = |name: &str| attribute(node, name).map(|a| a.ints.clone());
        let kernel = ints("kernel_shape").unwrap_or_default();
        let strides = ints("strides").unwrap_or_else(|| vec![1; kernel.len()]);
        let pads = ints("pads").unwrap_or_default();
        let dilations = ints("dilations").unwrap_or_default();
        let ceil = attribute(node, "ceil_mode").map_or(0, |a| a.i);
        let ok = kernel.len() == 2
            && kernel[0] == kernel[1]
            && kernel[0] > 0
            && strides.len() == 2
            && strides[0] == strides[1]
            && strides[0] > 0
            && pads.iter().all(|&p| p == 0)
            && dilations.iter().all(|&d| d == 1)
            && ceil == 0
            && node.output.len() == 1;
        if !ok {
            return Err(self.unsupported(
                node,
                format!(
                    "kernel {kernel:?}, strides {strides:?}, pads {pads:?}, ceil_mode {ceil}; \
                     expected a square window, equal strides, no padding, floor mode and no \
                     indices output"
                ),
            ));
        }
        let (kernel, stride) = (kernel[0] as usize, strides[0] as usize);
        let layer = if node.op_type == "MaxPool" {
            Layer::MaxPool2d { kernel, stride }
        } else {
            Layer::AvgPool2d { kernel, stride }
        };
        self.push(node, a, layer)
    }

    /// Activation `a` times `scale(c)` plus `shift(c)` per channel (or per feature of a flat
    /// activation), for a constant `c` that is a scalar or one value per channel: folded into
    /// the layer before where that layer is read here only (a bias after a `MatMul`, a second
    /// per-channel map), else a new [`Layer::ChannelAffine`].
    fn channel_map(
        &mut self,
        node: &NodeProto,
        (i, a): (usize, usize),
        c: &Constant,
        scale: impl Fn(f32) -> f32,
        shift: impl Fn(f32) -> f32,
    ) -> Result<()> {
        let shape = self.graph_shape(a);
        let channels = shape.first().copied().unwrap_or(1);
        // Broadcast from the right over `batch × shape`: every axis 1 but the channel axis.
        let mut dims = c.dims.clone();
        if dims.len() > shape.len() + 1 {
            return Err(self.unsupported(
                node,
                format!(
                    "constant of shape {:?} for activations of per-sample shape {shape:?}",
                    c.dims
                ),
            ));
        }
        while dims.len() < shape.len() + 1 {
            dims.insert(0, 1);
        }
        let per_channel = dims
            .iter()
            .enumerate()
            .all(|(i, &d)| d == 1 || (i == 1 && d == channels));
        if !per_channel {
            return Err(self.unsupported(
                node,
                format!(
                    "constant of shape {:?} on activations of per-sample shape {shape:?}; \
                     expected a scalar or one value per channel",
                    c.dims
                ),
            ));
        }
        let value = |i: usize| c.values[if c.values.len() == 1 { 0 } else { i }];
        let scale: Vec<f32> = (0..channels).map(|i| scale(value(i))).collect();
        let shift: Vec<f32> = (0..channels).map(|i| shift(value(i))).collect();
        self.affine(node, (i, a), (scale, shift), "Normalize")
    }

    /// `x·scale + shift` per channel on activation `a` (input `i` of `node`): folded into the
    /// layer making `a` where this node alone reads it, else a [`Layer::ChannelAffine`].
    fn affine(
        &mut self,
        node: &NodeProto,
        (i, a): (usize, usize),
        (scale, shift): (Vec<f32>, Vec<f32>),
        kind: &'static str,
    ) -> Result<()> {
        if self.read_once(node, i, a) {
            if let Some(layer) = self.graph.layer_making(a) {
                if absorb(layer, &scale, &shift)? {
                    self.define(node, Value::Act(a));
                    return Ok(());
                }
            }
        }
        let layer = Layer::ChannelAffine {
            scale: Tensor::new(scale, self.device)?,
            shift: Tensor::new(shift, self.device)?,
            kind,
        };
        self.push(node, a, layer)
    }

    fn batch_norm(&mut self, node: &NodeProto) -> Result<()> {
        let a = self.act(node, 0)?;
        if attribute(node, "training_mode").is_some_and(|t| t.i != 0) || node.output.len() > 1 {
            return Err(self.unsupported(
                node,
                "training mode; expected inference (`model.eval()` before export)",
            ));
        }
        let eps = attribute(node, "epsilon").map_or(1e-5, |e| e.f);
        let [gamma, beta, mean, var] = [1, 2, 3, 4].map(|i| self.constant(node, i));
        let (gamma, beta, mean, var) = (gamma?, beta?, mean?, var?);
        let channels = self.graph_shape(a).first().copied().unwrap_or(0);
        if [&gamma, &beta, &mean, &var]
            .iter()
            .any(|c| c.values.len() != channels)
        {
            return Err(self.unsupported(node, format!("expected {channels} values per statistic")));
        }
        // y = (x − mean)/√(var + ε)·γ + β = x·s + t, in f64 as PyTorch folds it.
        let s: Vec<f64> = (gamma.values.iter().zip(&var.values))
            .map(|(&g, &v)| g as f64 / (v as f64 + eps as f64).sqrt())
            .collect();
        let t: Vec<f32> = (beta.values.iter().zip(&mean.values).zip(&s))
            .map(|((&b, &m), &s)| (b as f64 - m as f64 * s) as f32)
            .collect();
        let s: Vec<f32> = s.iter().map(|&s| s as f32).collect();
        self.affine(node, (0, a), (s, t), "BatchNorm")
    }
}

/// Folds the per-channel map `x·scale + shift` into `layer` where it is affine in its output
/// channels (a linear layer, a convolution, a per-channel map); `false` otherwise.
fn absorb(layer: &mut Layer, scale: &[f32], shift: &[f32]) -> candle_core::Result<bool> {
    let dev = match layer {
        Layer::Linear { bias, .. } | Layer::Conv2d { bias, .. } => bias.device().clone(),
        Layer::ChannelAffine { shift, .. } => shift.device().clone(),
        _ => return Ok(false),
    };
    let s = Tensor::new(scale, &dev)?;
    let t = Tensor::new(shift, &dev)?;
    let identity = scale.iter().all(|&v| v == 1.0);
    match layer {
        Layer::Linear { weight, bias } | Layer::Conv2d { weight, bias, .. } => {
            if bias.elem_count() != scale.len() {
                return Ok(false);
            }
            if !identity {
                let mut per = vec![1; weight.rank()];
                per[0] = scale.len();
                *weight = weight.broadcast_mul(&s.reshape(per.as_slice())?)?;
                *bias = (bias.mul(&s)?.add(&t))?;
            } else {
                *bias = bias.add(&t)?;
            }
        }
        Layer::ChannelAffine {
            scale: s0,
            shift: t0,
            ..
        } => {
            if s0.elem_count() != scale.len() {
                return Ok(false);
            }
            *s0 = s0.mul(&s)?;
            *t0 = t0.mul(&s)?.add(&t)?;
        }
        _ => return Ok(false),
    }
    Ok(true)
}

fn attribute<'n>(node: &'n NodeProto, name: &str) -> Option<&'n AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

#[cfg(test)]
mod should {
    use super::proto::*;
    use super::*;

    fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
        let dim = (dims.iter())
            .map(|&d| Dimension {
                dim_value: (d > 0).then_some(d),
                dim_param: (d <= 0).then(|| "batch".to_string()),
            })
            .collect();
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                tensor_type: Some(TensorTypeProto {
                    elem_type: FLOAT,
                    shape: Some(TensorShapeProto { dim }),
                }),
            }),
        }
    }

    fn weight(name: &str, dims: &[i64]) -> TensorProto {
        let count = dims.iter().product::<i64>() as usize;
        TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: FLOAT,
            float_data: (0..count).map(|i| (i as f32 * 0.37).sin()).collect(),
            ..TensorProto::default()
        }
    }

    fn node(op: &str, inputs: &[&str], attribute: Vec<AttributeProto>) -> NodeProto {
        NodeProto {
            name: format!("/{op}_0"),
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec!["y".into()],
            attribute,
            ..NodeProto::default()
        }
    }

    fn ints(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            ints: v.to_vec(),
            ..AttributeProto::default()
        }
    }

    /// Imports a one-node model on inputs of shape `dims`.
    fn import_one(dims: &[i64], node: NodeProto, initializer: Vec<TensorProto>) -> Result<Graph> {
        import_nodes(dims, vec![node], initializer)
    }

    /// Imports a model of `nodes` (the last one's output `y`) on inputs `x` of shape `dims`.
    fn import_nodes(
        dims: &[i64],
        nodes: Vec<NodeProto>,
        initializer: Vec<TensorProto>,
    ) -> Result<Graph> {
        let model = ModelProto {
            ir_version: 8,
            graph: Some(GraphProto {
                node: nodes,
                initializer,
                input: vec![value_info("x", dims)],
                output: vec![value_info("y", &[])],
                ..GraphProto::default()
            }),
            ..ModelProto::default()
        };
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
        let path = dir.path().join("model.onnx");
        std::fs::write(&path, model.encode_to_vec()).map_err(|e| Error::io(&path, e))?;
        import(&path, &Device::Cpu)
    }

    fn assert_node_error(result: Result<Graph>, op: &str, says: &str) {
        match result {
            Err(Error::OnnxNode {
                node,
                op: found,
                reason,
                ..
            }) => {
                assert_eq!(found, op);
                assert_eq!(node, format!("/{op}_0"));
                assert!(reason.contains(says), "{reason}");
            }
            other => panic!("expected an error naming the {op} node, got {other:?}"),
        }
    }

    #[test]
    fn name_the_node_and_operator_it_cannot_read() {
        // An operator it does not have.
        let softmax = node("Softmax", &["x"], vec![]);
        assert_node_error(
            import_one(&[0, 4], softmax, vec![]),
            "Softmax",
            "supported: Conv",
        );
        // A grouped convolution.
        let conv = node("Conv", &["x", "w"], vec![ints("group", &[2])]);
        let w = weight("w", &[4, 1, 3, 3]);
        assert_node_error(
            import_one(&[0, 2, 6, 6], conv, vec![w]),
            "Conv",
            "one group",
        );
        // A padded max-pool.
        let pool = node(
            "MaxPool",
            &["x"],
            vec![ints("kernel_shape", &[2, 2]), ints("pads", &[1, 1, 1, 1])],
        );
        assert_node_error(
            import_one(&[0, 2, 6, 6], pool, vec![]),
            "MaxPool",
            "no padding",
        );
        // A division by zero.
        let zero = TensorProto {
            name: "z".into(),
            dims: vec![],
            data_type: FLOAT,
            float_data: vec![0.0],
            ..TensorProto::default()
        };
        let div = node("Div", &["x", "z"], vec![]);
        assert_node_error(import_one(&[0, 4], div, vec![zero]), "Div", "holds 0");
        // A reshape that is not a flatten.
        let shape = TensorProto {
            name: "s".into(),
            dims: vec![3],
            data_type: INT64,
            int64_data: vec![-1, 2, 18],
            ..TensorProto::default()
        };
        let reshape = node("Reshape", &["x", "s"], vec![]);
        assert_node_error(
            import_one(&[0, 2, 6, 3], reshape, vec![shape]),
            "Reshape",
            "flatten",
        );
    }

    #[test]
    fn read_a_concatenation_along_the_channels_only() -> Result<()> {
        let axis = |a: i64| AttributeProto {
            name: "axis".into(),
            i: a,
            ..AttributeProto::default()
        };
        for a in [1, -1] {
            let graph = import_one(
                &[0, 3],
                node("Concat", &["x", "x", "x"], vec![axis(a)]),
                vec![],
            )?;
            assert_eq!(graph.output_shape(), &[9][..]);
            let x = Tensor::new(&[[1f32, 2.0, 3.0]], &Device::Cpu)?;
            let y = candle_core::Module::forward(&graph, &x)?.to_vec2::<f32>()?;
            assert_eq!(y, vec![vec![1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 1.0, 2.0, 3.0]]);
        }
        // Along the batch, and with a constant.
        let batch = node("Concat", &["x", "x"], vec![axis(0)]);
        assert_node_error(import_one(&[0, 3], batch, vec![]), "Concat", "expected 1");
        let constant = node("Concat", &["x", "w"], vec![axis(1)]);
        let w = weight("w", &[1, 3]);
        assert_node_error(
            import_one(&[0, 3], constant, vec![w]),
            "Concat",
            "a constant",
        );
        // Planes that differ.
        let pool = NodeProto {
            output: vec!["p".into()],
            ..node(
                "MaxPool",
                &["x"],
                vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
            )
        };
        let nodes = vec![pool, node("Concat", &["x", "p"], vec![axis(1)])];
        assert_node_error(
            import_nodes(&[0, 1, 4, 4], nodes, vec![]),
            "Concat",
            "expected shapes equal",
        );
        Ok(())
    }

    #[test]
    fn read_a_one_layer_model_and_refuse_what_is_no_onnx_file() -> Result<()> {
        let gemm = node(
            "Gemm",
            &["x", "w", "b"],
            vec![AttributeProto {
                name: "transB".into(),
                i: 1,
                ..AttributeProto::default()
            }],
        );
        let graph = import_one(&[0, 4], gemm, vec![weight("w", &[3, 4]), weight("b", &[3])])?;
        assert_eq!(
            (graph.input_shape(), graph.output_shape()),
            (&[4][..], &[3][..])
        );
        let x = Tensor::new(&[[1f32, 2.0, 3.0, 4.0]], &Device::Cpu)?;
        let y = candle_core::Module::forward(&graph, &x)?.to_vec2::<f32>()?;
        let w: Vec<f32> = (0..12).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..3).map(|i| (i as f32 * 0.37).sin()).collect();
        for (j, &v) in y[0].iter().enumerate() {
            let want: f32 = (0..4).map(|i| w[j * 4 + i] * (i + 1) as f32).sum::<f32>() + b[j];
            assert!((v - want).abs() < 1e-5, "{v} against {want}");
        }
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
        let path = dir.path().join("not.onnx");
        std::fs::write(&path, b"\xff\xff\xff\xff not protobuf").map_err(|e| Error::io(&path, e))?;
        assert!(matches!(
            import(&path, &Device::Cpu),
            Err(Error::Format { format: "ONNX", .. })
        ));
        Ok(())
    }
}
