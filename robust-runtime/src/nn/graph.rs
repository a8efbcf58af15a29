//! Networks whose layers form a graph: residual sums, and what an ONNX file describes.

use std::fmt;

use candle_core::{Module, Tensor};

use super::engine::{Node, Source};
use super::sequential::output_shape;
use super::{Layer, Sequential};
use crate::{Error, Result};

/// A network as a graph of [`Layer`]s, sums and concatenations: activation 0 is the input, and each node reads
/// activations made before it and makes the next one; the last activation is the logits.
/// A [`Sequential`] is the chain case: `Graph::from(&net)` is its graph, which the engine
/// compiles for both, and [`Graph::to_sequential`] gives a chain back.
///
/// A `Graph` is a candle [`Module`], so every attack runs on it, and a [`crate::Model`] made
/// of one runs on the engine on the CPU (residual sums included). [`Graph::from_onnx`] reads
/// one from a file PyTorch exported.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use robust_runtime::nn::{Graph, Layer};
/// let dev = Device::Cpu;
/// let w = Tensor::new(&[[1f32, 0.0], [0.0, 2.0]], &dev)?;
/// let mut g = Graph::new(&[2]);
/// let h = g.layer(0, Layer::Linear { weight: w.clone(), bias: Tensor::zeros(2, candle_core::DType::F32, &dev)? })?;
/// let h = g.layer(h, Layer::Relu)?;
/// let sum = g.add(h, 0)?; // relu(W x) + x
/// let y = candle_core::Module::forward(&g, &Tensor::new(&[[1f32, -1.0]], &dev)?)?;
/// assert_eq!(y.to_vec2::<f32>()?, vec![vec![2.0, -1.0]]);
/// assert_eq!(sum, 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Graph {
    /// Node `k` makes activation `k + 1` from activation `nodes[k].1` (and a sum's other one).
    nodes: Vec<(Node, usize)>,
    /// The per-sample shape of each activation.
    shapes: Vec<Vec<usize>>,
}

impl fmt::Debug for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Graph(input {:?}", self.shapes[0])?;
        for (k, (node, input)) in self.nodes.iter().enumerate() {
            match node {
                Node::Layer(layer) => write!(f, ", {}: {}({input})", k + 1, layer.kind())?,
                Node::Add(other) => write!(f, ", {}: Add({input}, {other})", k + 1)?,
                Node::Concat(other) => write!(f, ", {}: Concat({input}, {other})", k + 1)?,
            }
            write!(f, " → {:?}", self.shapes[k + 1])?;
        }
        write!(f, ")")
    }
}

impl Graph {
    /// A graph with no nodes yet, on inputs of per-sample shape `input_shape` (activation 0).
    pub fn new(input_shape: &[usize]) -> Self {
        Graph {
            nodes: Vec::new(),
            shapes: vec![input_shape.to_vec()],
        }
    }

    /// Appends `layer` applied to activation `input`; returns the activation it makes.
    pub fn layer(&mut self, input: usize, layer: Layer) -> Result<usize> {
        let shape = self.shape_of(input)?;
        // What each layer's weights expect of its input.
        let expects = match &layer {
            Layer::Linear { weight, .. } => {
                Some((weight.dims().get(1).copied(), shape.iter().product()))
            }
            Layer::Conv2d { weight, .. } => Some((
                weight.dims().get(1).copied(),
                shape.first().copied().unwrap_or(0),
            )),
            Layer::ChannelAffine { scale, .. } if scale.elem_count() > 1 => Some((
                Some(scale.elem_count()),
                shape.first().copied().unwrap_or(0),
            )),
            _ => None,
        };
        if let Some((Some(wants), has)) = expects.filter(|(w, h)| *w != Some(*h)) {
            return Err(Error::ModelConfig(format!(
                "graph node {}: a {} layer for {wants} input channels or features reads                  activation {input} of per-sample shape {shape:?} ({has})",
                self.nodes.len() + 1,
                layer.kind()
            )));
        }
        let Some(out) = output_shape(&layer, shape) else {
            return Err(Error::ModelConfig(format!(
                "graph node {}: a {} layer cannot read activation {input} of per-sample shape \
                 {shape:?}",
                self.nodes.len() + 1,
                layer.kind()
            )));
        };
        Ok(self.push(Node::Layer(layer), input, out))
    }

    /// Appends the sum of activations `a` and `b` (a residual connection); returns it.
    pub fn add(&mut self, a: usize, b: usize) -> Result<usize> {
        let (sa, sb) = (self.shape_of(a)?, self.shape_of(b)?);
        if sa != sb {
            return Err(Error::ModelConfig(format!(
                "graph node {}: cannot add activation {a} (per-sample shape {sa:?}) and \
                 activation {b} ({sb:?}); expected equal shapes",
                self.nodes.len() + 1
            )));
        }
        let shape = sa.to_vec();
        Ok(self.push(Node::Add(b), a, shape))
    }

    /// Appends the concatenation of activations `a` and `b` along their first per-sample axis
    /// (the channels of an image, the features of a vector; ONNX's `Concat` on axis 1);
    /// returns it.
    pub fn concat(&mut self, a: usize, b: usize) -> Result<usize> {
        let (sa, sb) = (self.shape_of(a)?, self.shape_of(b)?);
        if sa.is_empty() || sa.len() != sb.len() || sa[1..] != sb[1..] {
            return Err(Error::ModelConfig(format!(
                "graph node {}: cannot concatenate activation {a} (per-sample shape {sa:?}) and \
                 activation {b} ({sb:?}); expected shapes equal but in their first axis",
                self.nodes.len() + 1
            )));
        }
        let mut shape = sa.to_vec();
        shape[0] += sb[0];
        Ok(self.push(Node::Concat(b), a, shape))
    }

    fn push(&mut self, node: Node, input: usize, shape: Vec<usize>) -> usize {
        self.nodes.push((node, input));
        self.shapes.push(shape);
        self.nodes.len()
    }

    fn shape_of(&self, activation: usize) -> Result<&[usize]> {
        self.shapes
            .get(activation)
            .map(Vec::as_slice)
            .ok_or_else(|| {
                Error::ModelConfig(format!(
                    "graph node {} reads activation {activation}, which does not exist yet \
                     (the graph has activations 0..={})",
                    self.nodes.len() + 1,
                    self.nodes.len()
                ))
            })
    }

    /// Per-sample shape of the input.
    pub fn input_shape(&self) -> &[usize] {
        &self.shapes[0]
    }

    /// Per-sample shape of the output (the last activation).
    pub fn output_shape(&self) -> &[usize] {
        &self.shapes[self.nodes.len()]
    }

    /// Nodes (layers and sums).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the graph has no node (its output is its input).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The same network as a [`Sequential`] when it is a chain (each node a layer reading the
    /// activation before it): what the certifiers bound.
    pub fn to_sequential(&self) -> Option<Sequential> {
        let layers = (self.nodes.iter().enumerate())
            .map(|(k, (node, input))| match node {
                Node::Layer(layer) if *input == k => Some(layer.clone()),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        Sequential::from_layers(self.input_shape(), layers)
    }

    /// Per-sample shape of activation `a` (`a ≤ len()`).
    pub(crate) fn activation_shape(&self, a: usize) -> &[usize] {
        &self.shapes[a]
    }

    /// The layer that makes activation `a`, if a layer (not the input or a sum) makes it. Its
    /// weights may change, not its output's shape.
    pub(crate) fn layer_making(&mut self, a: usize) -> Option<&mut Layer> {
        match self.nodes.get_mut(a.checked_sub(1)?)? {
            (Node::Layer(layer), _) => Some(layer),
            _ => None,
        }
    }

    /// The graph for the engine.
    pub(crate) fn source(&self) -> Source {
        Source::Graph(self.input_shape().to_vec(), self.nodes.clone())
    }
}

/// A chain as the graph it is: each layer reading the activation before it (the inverse of
/// [`Graph::to_sequential`]).
impl From<&Sequential> for Graph {
    fn from(net: &Sequential) -> Graph {
        let mut shapes = vec![net.input_shape().to_vec()];
        let nodes = (net.layers().iter().enumerate())
            .map(|(k, layer)| {
                let next = output_shape(layer, &shapes[k]).expect("a Sequential's layers fit");
                shapes.push(next);
                (Node::Layer(layer.clone()), k)
            })
            .collect();
        Graph { nodes, shapes }
    }
}

impl Module for Graph {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut acts = vec![xs.clone()];
        for (node, input) in &self.nodes {
            let y = match node {
                Node::Layer(layer) => layer.forward(&acts[*input])?,
                Node::Add(other) => (&acts[*input] + &acts[*other])?,
                Node::Concat(other) => Tensor::cat(&[&acts[*input], &acts[*other]], 1)?,
            };
            acts.push(y);
        }
        Ok(acts.pop().expect("the input at least"))
    }
}
