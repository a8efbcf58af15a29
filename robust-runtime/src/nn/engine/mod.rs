//! The engine: a network whose layers we know, compiled once into a plan that runs the forward
//! pass and the input gradient (the vector–Jacobian product) directly on f32 buffers, on the
//! CPU.
//!
//! An attack needs the gradient of its objective with respect to the input and nothing else.
//! candle's autograd tape computes it through a graph of tensor operations, each allocating its
//! output, and its backward of `matmul` and `conv2d` also computes the weight gradients. The
//! plan instead:
//!
//! - keeps the weights as plain `Vec<f32>` and, per batch size, a workspace of activation and
//!   gradient buffers that every step reuses;
//! - fuses each layer's bias and a following ReLU into one pass over its output;
//! - runs linear layers as one matrix product over the batch (the `gemm` crate, AVX-512 where
//!   the CPU has it, on rayon's pool) and convolutions as im2col + one product per sample, in
//!   parallel over samples;
//! - keeps each max-pool window's first maximum for the backward pass (PyTorch's choice at
//!   ties, see [`crate::nn`]);
//! - computes only the input gradient, through the transposed weights.
//!
//! The numbers are those of the candle path up to float rounding (summation order);
//! `tests/engine.rs` checks logits and gradients against candle's autograd on every layer kind
//! and the attacks' results on the shipped models. Networks the engine does not know (a user's
//! own `Module`, a residual network, anything off the CPU, trainable weights) keep running
//! through candle.

mod conv;
mod crown;
pub(crate) mod gemm;
mod kernels;
mod winograd;

use std::sync::{Mutex, OnceLock};

use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

use self::conv::{Conv, Pooled};
pub(crate) use self::crown::Spec;
use self::gemm::{matmul, View};
use self::kernels::{ConvShape, PoolShape};
use self::winograd::Winograd;
use super::{cpu_values, Layer, Sequential};
use crate::domain::Normalize;
use crate::nn::simd::wide;

/// One step of the plan.
#[derive(Debug)]
enum Op {
    /// `y = x·Wᵀ + b` over the whole batch, then ReLU if `relu`.
    Linear {
        /// `d_out × d_in`, row-major: the backward pass's right-hand side.
        w: Vec<f32>,
        /// `Wᵀ`, `d_in × d_out`, row-major: the forward pass's right-hand side (a row-major
        /// operand packs faster: 154 against 96 GFLOP/s for the CNN's 3136 → 1024 layer).
        wt: Vec<f32>,
        b: Vec<f32>,
        d_in: usize,
        d_out: usize,
        relu: bool,
        /// `|Wᵀ|`, made when interval bounds first need it.
        abs_w: OnceLock<Vec<f32>>,
    },
    /// A convolution per sample as im2col + product, its bias, then ReLU if `relu`.
    Conv {
        /// `c_out × c_in·k·k`, row-major.
        w: Vec<f32>,
        /// `Wᵀ`, `c_in·k·k × c_out`, row-major, for the backward pass.
        wt: Vec<f32>,
        /// `W` channels-last, `c_out × k × k × c_in`, made when the backward pass through a
        /// max-pool first needs it (see [`Pooled`]).
        wk: OnceLock<Vec<f32>>,
        b: Vec<f32>,
        c_out: usize,
        g: ConvShape,
        relu: bool,
        /// `|W|`, made when interval bounds first need it.
        abs_w: OnceLock<Vec<f32>>,
        /// The filters transformed for Winograd's F(2×2, 3×3), where the convolution is 3×3
        /// of stride 1 and padding 1 with enough channels ([`winograd_applies`]).
        wino: Option<Winograd>,
    },
    /// `x + other` (a residual connection), then ReLU if `relu`.
    Add {
        /// The activation added to the op's input.
        other: usize,
        relu: bool,
    },
    /// `[x; other]` per sample: the input's values, then activation `other`'s (a
    /// concatenation along the first per-sample axis, channel-major).
    Concat {
        other: usize,
    },
    /// `max(x, 0)`, where no layer before it could take it.
    Relu,
    MaxPool(PoolShape),
    AvgPool(PoolShape),
    /// `x·scale + shift` per channel (batch norm, a `Normalize` layer of the network).
    Affine {
        scale: Vec<f32>,
        shift: Vec<f32>,
        /// Values per channel and sample.
        plane: usize,
    },
    /// `(x − mean) / std` per channel: the model's own normalisation, computed as
    /// [`Normalize::apply`] does.
    Normalize {
        mean: Vec<f32>,
        std: Vec<f32>,
        plane: usize,
    },
}

impl Op {
    /// Whether the backward pass reads this op's output (a ReLU mask).
    fn relu(&self) -> bool {
        matches!(
            self,
            Op::Relu
                | Op::Linear { relu: true, .. }
                | Op::Conv { relu: true, .. }
                | Op::Add { relu: true, .. }
        )
    }

    /// The activations the op reads when its input is activation `input`: that one, and a
    /// residual sum's other term.
    fn reads(&self, input: usize) -> impl Iterator<Item = usize> {
        let other = match self {
            Op::Add { other, .. } | Op::Concat { other } => Some(*other),
            _ => None,
        };
        std::iter::once(input).chain(other)
    }
}

/// `a + b`, element by element.
fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(a, b)| a + b).collect()
}

/// `[a; b]` per sample, for samples of `sizes.0` values in `a` and `sizes.1` in `b`.
fn concat(a: &[f32], b: &[f32], (sa, sb): (usize, usize)) -> Vec<f32> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    for (a, b) in a.chunks(sa.max(1)).zip(b.chunks(sb.max(1))) {
        out.extend_from_slice(a);
        out.extend_from_slice(b);
    }
    out
}

/// A compiled network (see the module docs).
#[derive(Debug)]
pub(crate) struct Engine {
    input: Vec<usize>,
    ops: Vec<Op>,
    /// `inputs[i]`: the activation op `i` reads. Activation 0 is the network's input and
    /// activation `i + 1` op `i`'s output; a chain reads `inputs[i] = i`.
    inputs: Vec<usize>,
    /// `sizes[j]`: values per sample of activation `j`; the last is the number of classes.
    sizes: Vec<usize>,
    /// `dims[j]`: the per-sample shape of activation `j` (`channels × h × w` for an image).
    dims: Vec<Vec<usize>>,
    /// `pooled[i]`: op `i` is a max-pool that alone reads a convolution's output, and the
    /// backward pass goes from the pool's output gradient to the convolution's input gradient
    /// in one step ([`Pooled`]).
    pooled: Vec<bool>,
    /// Workspaces of finished passes, for the next pass of the same batch size.
    spare: Mutex<Vec<Workspace>>,
}

/// The buffers of one pass over a batch.
#[derive(Debug)]
struct Workspace {
    batch: usize,
    /// `acts[i]`: op `i`'s output, `batch × sizes[i + 1]`.
    acts: Vec<Vec<f32>>,
    /// `args[i]`: op `i`'s max-pool positions (empty for other ops).
    args: Vec<Vec<u32>>,
    /// `grads[j]`: the gradient of activation `j`, `batch × sizes[j]`, summed over the ops
    /// that read it.
    grads: Vec<Vec<f32>>,
    /// Whether `grads[j]` holds a gradient yet in this backward pass.
    touched: Vec<bool>,
    /// One op's contribution to a gradient that another op already wrote.
    scratch: Vec<f32>,
}

/// A network the engine can compile: a chain of layers, or a graph of them.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    Chain(Sequential),
    /// The per-sample input shape and the nodes (see [`Engine::compile_graph`]).
    Graph(Vec<usize>, Vec<(Node, usize)>),
}

impl Source {
    /// The compiled plan, preceded by `normalize` (see [`Engine::compile`]).
    pub(crate) fn compile(&self, normalize: Option<&Normalize>) -> Option<Engine> {
        match self {
            Source::Chain(net) => Engine::compile(net, normalize),
            Source::Graph(input, nodes) => Engine::compile_graph(input, nodes, normalize),
        }
    }
}

/// One node of a network graph (see [`Engine::compile_graph`]).
#[derive(Debug, Clone)]
pub(crate) enum Node {
    /// A layer applied to the node's input.
    Layer(Layer),
    /// The node's input plus activation `other` (a residual connection).
    Add(usize),
    /// The node's input, then activation `other`, along the first per-sample axis.
    Concat(usize),
}

/// The values of a weight tensor as f32, if it is a plain CPU f32 tensor (not a variable that
/// training may still change).
fn values(t: &Tensor) -> Option<Vec<f32>> {
    if !t.device().is_cpu() || t.dtype() != DType::F32 || t.track_op() || t.is_variable() {
        return None;
    }
    t.flatten_all().ok()?.to_vec1::<f32>().ok()
}

/// Values per channel for a per-channel map with `channels` values on a per-sample `shape`:
/// one channel broadcasts over everything, else the channels are dimension 0 of `shape`.
fn channel_plane(shape: &[usize], channels: usize) -> Option<usize> {
    let total: usize = shape.iter().product();
    if channels == 1 {
        return Some(total);
    }
    (shape.first() == Some(&channels)).then(|| total / channels)
}

impl Engine {
    /// Compiles `net`, preceded by `normalize` when the model normalises inside. `None` when the
    /// engine cannot run it: weights off the CPU, not f32 or trainable, or an output that is
    /// not one vector of logits per sample.
    pub(crate) fn compile(net: &Sequential, normalize: Option<&Normalize>) -> Option<Engine> {
        crate::nn::Graph::from(net).source().compile(normalize)
    }

    /// Compiles a network graph on inputs of per-sample shape `input`: node `k` is applied to
    /// activation `nodes[k].1` and makes activation `k + 1` (activation 0 is the input); the
    /// last node's output is the logits. A ReLU is fused into the layer (or sum) before it
    /// when nothing else reads that layer's output.
    pub(crate) fn compile_graph(
        input: &[usize],
        nodes: &[(Node, usize)],
        normalize: Option<&Normalize>,
    ) -> Option<Engine> {
        let mut ops = Vec::new();
        let mut inputs = Vec::new();
        let mut sizes = vec![input.iter().product::<usize>()];
        let mut dims = vec![input.to_vec()];
        // Per node activation: its shape, the engine activation holding it, and whether that
        // activation is another node's too (a flatten, a fused ReLU).
        let mut shapes = vec![input.to_vec()];
        let mut map = vec![0];
        let mut alias = vec![false];
        if let Some(n) = normalize {
            let (mean, std) = (n.mean().to_vec(), n.std().to_vec());
            let plane = channel_plane(input, mean.len())?;
            ops.push(Op::Normalize { mean, std, plane });
            inputs.push(0);
            sizes.push(sizes[0]);
            dims.push(input.to_vec());
            map[0] = 1;
        }
        let mut readers = vec![0usize; nodes.len() + 1];
        for (node, a) in nodes {
            *readers.get_mut(*a)? += 1;
            if let Node::Add(other) | Node::Concat(other) = node {
                *readers.get_mut(*other)? += 1;
            }
        }
        for (node, a) in nodes {
            let shape = shapes.get(*a)?.clone();
            let source = map[*a];
            let layer = match node {
                Node::Add(other) => {
                    if shapes.get(*other)? != &shape {
                        return None;
                    }
                    ops.push(Op::Add {
                        other: map[*other],
                        relu: false,
                    });
                    inputs.push(source);
                    sizes.push(sizes[source]);
                    dims.push(dims[source].clone());
                    shapes.push(shape);
                    map.push(ops.len());
                    alias.push(false);
                    continue;
                }
                Node::Concat(other) => {
                    let b = shapes.get(*other)?;
                    if shape.is_empty() || b.len() != shape.len() || b[1..] != shape[1..] {
                        return None;
                    }
                    let mut next = shape.clone();
                    next[0] += b[0];
                    ops.push(Op::Concat { other: map[*other] });
                    inputs.push(source);
                    sizes.push(next.iter().product());
                    dims.push(next.clone());
                    shapes.push(next);
                    map.push(ops.len());
                    alias.push(false);
                    continue;
                }
                Node::Layer(layer) => layer,
            };
            let next = super::sequential::output_shape(layer, &shape)?;
            let op = match layer {
                Layer::Flatten => None,
                Layer::Relu => {
                    let fusable = readers[*a] == 1 && !alias[*a] && source > 0;
                    match ops.get_mut(source.wrapping_sub(1)) {
                        Some(
                            Op::Linear { relu, .. } | Op::Conv { relu, .. } | Op::Add { relu, .. },
                        ) if fusable && !*relu => {
                            *relu = true;
                            None
                        }
                        _ => Some(Op::Relu),
                    }
                }
                Layer::Linear { weight, bias } => {
                    let (d_in, d_out) = (shape.iter().product(), next.iter().product());
                    let w = values(weight)?;
                    Some(Op::Linear {
                        wt: transpose(&w, d_out, d_in),
                        w,
                        b: values(bias)?,
                        d_in,
                        d_out,
                        relu: false,
                        abs_w: OnceLock::new(),
                    })
                }
                Layer::Conv2d {
                    weight,
                    bias,
                    stride,
                    padding,
                } => {
                    let (&[c_in, h, w], &[c_out, oh, ow]) = (&shape[..], &next[..]) else {
                        return None;
                    };
                    let g = ConvShape {
                        c_in,
                        h,
                        w,
                        k: weight.dim(2).ok()?,
                        stride: *stride,
                        pad: *padding,
                        oh,
                        ow,
                    };
                    let w = values(weight)?;
                    Some(Op::Conv {
                        wt: transpose(&w, c_out, g.rows()),
                        wk: OnceLock::new(),
                        wino: winograd_applies(&g, c_out).then(|| Winograd::new(&w, c_out, c_in)),
                        w,
                        b: values(bias)?,
                        c_out,
                        g,
                        relu: false,
                        abs_w: OnceLock::new(),
                    })
                }
                Layer::MaxPool2d { kernel, stride } | Layer::AvgPool2d { kernel, stride } => {
                    let (&[_, h, w], &[_, oh, ow]) = (&shape[..], &next[..]) else {
                        return None;
                    };
                    let g = PoolShape {
                        h,
                        w,
                        k: *kernel,
                        stride: *stride,
                        oh,
                        ow,
                    };
                    Some(match layer {
                        Layer::MaxPool2d { .. } => Op::MaxPool(g),
                        _ => Op::AvgPool(g),
                    })
                }
                Layer::ChannelAffine { scale, shift, .. } => {
                    let (scale, shift) = (values(scale)?, values(shift)?);
                    let plane = channel_plane(&shape, scale.len())?;
                    Some(Op::Affine {
                        scale,
                        shift,
                        plane,
                    })
                }
            };
            match op {
                Some(op) => {
                    ops.push(op);
                    inputs.push(source);
                    sizes.push(next.iter().product());
                    dims.push(next.clone());
                    map.push(ops.len());
                    alias.push(false);
                }
                // A flatten or a fused ReLU: the same values under another name.
                None => {
                    map.push(source);
                    alias.push(true);
                }
            }
            shapes.push(next);
        }
        let last = shapes.last()?;
        if last.len() != 1 || ops.is_empty() || *map.last()? != ops.len() {
            return None;
        }
        let mut read = vec![0usize; sizes.len()];
        for (op, &j) in ops.iter().zip(&inputs) {
            for j in op.reads(j) {
                read[j] += 1;
            }
        }
        let pooled = (0..ops.len())
            .map(|i| {
                matches!(ops[i], Op::MaxPool(_))
                    && i > 0
                    && inputs[i] == i
                    && read[i] == 1
                    && matches!(&ops[i - 1], Op::Conv { g, .. } if g.k * g.c_in >= POOLED_RUN)
            })
            .collect();
        Some(Engine {
            input: input.to_vec(),
            ops,
            inputs,
            sizes,
            dims,
            pooled,
            spare: Mutex::new(Vec::new()),
        })
    }

    /// The same plan with every backward pass through dense products: the slow, obvious path
    /// that [`Pooled`]'s must agree with.
    #[cfg(test)]
    fn dense(mut self) -> Engine {
        self.pooled.fill(false);
        self
    }

    /// Whether `x` is a batch the plan runs: contiguous-able f32 on the CPU with the network's
    /// per-sample shape.
    pub(crate) fn accepts(&self, x: &Tensor) -> bool {
        x.device().is_cpu()
            && x.dtype() == DType::F32
            && x.rank() == self.input.len() + 1
            && x.dims()[1..] == self.input[..]
    }

    /// Classes per sample.
    fn classes(&self) -> usize {
        self.sizes[self.sizes.len() - 1]
    }

    /// The logits of `x` (`N × classes`).
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.with_pass(x, |pass| pass.logits())
    }

    /// The logits of `x`, `extra` and the gradient with respect to `x` of `Σ_n ⟨g_n, z_n⟩`,
    /// where `(extra, g) = at_logits(logits)`: `g` is the objective's gradient at the logits
    /// (`N × classes`).
    pub(crate) fn forward_backward<R>(
        &self,
        x: &Tensor,
        at_logits: impl FnOnce(&Tensor) -> crate::Result<(R, Tensor)>,
    ) -> crate::Result<(Tensor, R, Tensor)> {
        self.with_pass(x, |pass| {
            let logits = pass.logits()?;
            let (extra, g) = at_logits(&logits)?;
            let grad = pass.input_grad(&g)?;
            Ok((logits, extra, grad))
        })
    }

    /// The logits of `x` and the input gradient of every class logit, `N × classes × …`.
    pub(crate) fn class_grads(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        self.with_pass(x, |pass| {
            let logits = pass.logits()?;
            let (n, classes) = (pass.ws.batch, self.classes());
            let mut grads = Vec::with_capacity(classes);
            for k in 0..classes {
                let mut onehot = vec![0f32; n * classes];
                onehot
                    .iter_mut()
                    .skip(k)
                    .step_by(classes)
                    .for_each(|v| *v = 1.0);
                grads.push(pass.input_grad(&Tensor::from_vec(
                    onehot,
                    (n, classes),
                    &Device::Cpu,
                )?)?);
            }
            Ok((logits, Tensor::stack(&grads, 1)?))
        })
    }

    /// Runs the forward pass of `x` in a workspace, then `f` on it.
    fn with_pass<R, E: From<candle_core::Error>>(
        &self,
        x: &Tensor,
        f: impl FnOnce(&mut Pass<'_>) -> std::result::Result<R, E>,
    ) -> std::result::Result<R, E> {
        let batch = x.dim(0)?;
        let mut ws = self.workspace(batch);
        let x = x.contiguous()?;
        cpu_values(&x, "engine input", |xv: &[f32]| {
            self.run_forward(xv, &mut ws);
            Ok(())
        })?;
        let mut pass = Pass {
            engine: self,
            ws,
            dims: x.dims().to_vec(),
        };
        let out = f(&mut pass);
        if let Ok(mut spare) = self.spare.lock() {
            // A few sizes at most: the attack batch and its tail.
            if spare.len() < 4 {
                spare.push(pass.ws);
            }
        }
        out
    }

    /// A workspace for `batch` samples: a spare one of that size, or a new one.
    fn workspace(&self, batch: usize) -> Workspace {
        if let Ok(mut spare) = self.spare.lock() {
            if let Some(i) = spare.iter().position(|ws| ws.batch == batch) {
                return spare.swap_remove(i);
            }
        }
        let widest = self.sizes.iter().copied().max().unwrap_or(0);
        Workspace {
            batch,
            acts: self.sizes[1..]
                .iter()
                .map(|s| vec![0.0; batch * s])
                .collect(),
            args: self
                .ops
                .iter()
                .zip(&self.sizes[1..])
                .map(|(op, s)| match op {
                    Op::MaxPool(_) => vec![0; batch * s],
                    _ => Vec::new(),
                })
                .collect(),
            grads: self.sizes.iter().map(|s| vec![0.0; batch * s]).collect(),
            touched: vec![false; self.sizes.len()],
            scratch: vec![0.0; batch * widest],
        }
    }

    /// Every op's output for the batch `x` into `ws.acts`: in parts of the batch on rayon's
    /// threads (see [`Engine::parts`]), each running every op on its samples.
    fn run_forward(&self, x: &[f32], ws: &mut Workspace) {
        let (batch, per) = (ws.batch, self.part_size(ws.batch));
        let acts = split_rows(&mut ws.acts, &self.sizes[1..], batch, per);
        let args = split_rows(&mut ws.args, &self.sizes[1..], batch, per);
        let inputs = x[..batch * self.sizes[0]].chunks(per * self.sizes[0]);
        if acts.len() == 1 {
            let (mut acts, mut args) = (acts, args);
            return self.forward_part(x, &mut acts[0], &mut args[0]);
        }
        (inputs.zip(acts).zip(args).collect::<Vec<_>>())
            .into_par_iter()
            .for_each(|((x, mut acts), mut args)| self.forward_part(x, &mut acts, &mut args));
    }

    /// Samples per part of a batch: the batch split over rayon's threads, each part large
    /// enough that its products stay efficient. One thread per part, running every op in turn,
    /// has no synchronisation between ops: the MLP's small products spent more time waiting at
    /// the end of each parallel product than multiplying.
    fn part_size(&self, batch: usize) -> usize {
        let parts = rayon::current_num_threads().min(batch / PART).max(1);
        batch.div_ceil(parts).max(1)
    }

    /// [`Engine::run_forward`] on one part: `acts[i]` and `args[i]` are op `i`'s rows for the
    /// part's samples `x`.
    fn forward_part(&self, x: &[f32], acts: &mut [&mut [f32]], args: &mut [&mut [u32]]) {
        for (i, op) in self.ops.iter().enumerate() {
            let (done, rest) = acts.split_at_mut(i);
            let act = |j: usize| if j == 0 { x } else { &done[j - 1][..] };
            let (src, out) = (act(self.inputs[i]), &mut rest[0][..]);
            let other = match op {
                Op::Add { other, .. } | Op::Concat { other } => act(*other),
                _ => &[],
            };
            let sizes = (self.sizes[self.inputs[i]], self.sizes[i + 1]);
            apply(op, Weights::Signed, (src, other), out, args[i], sizes);
        }
    }

    /// The backward pass of [`Pass::input_grad`] on one part of the batch: `grads[j]`,
    /// `acts[i]` and `args[i]` are the part's rows; `touched[j]` says whether activation `j`
    /// holds a gradient yet (the logits' does).
    fn backward_part(
        &self,
        grads: &mut [&mut [f32]],
        scratch: &mut [f32],
        acts: &[&mut [f32]],
        args: &[&mut [u32]],
        touched: &mut [bool],
    ) {
        for (i, op) in self.ops.iter().enumerate().rev() {
            if !touched[i + 1] {
                continue; // nothing downstream reads this op's output
            }
            let s_out = self.sizes[i + 1];
            let (before, after) = grads.split_at_mut(i + 1);
            let gout = &mut *after[0];
            // A max-pool over a convolution: both in one step, to the convolution's input.
            if let (
                true,
                Some(
                    conv @ Op::Conv {
                        w, wk, c_out, g, ..
                    },
                ),
            ) = (self.pooled[i], i.checked_sub(1).map(|c| &self.ops[c]))
            {
                let pooled = Pooled {
                    wk: wk.get_or_init(|| conv::channels_last(w, *c_out, g)),
                    c_out: *c_out,
                    g,
                    windows: s_out / c_out,
                };
                let mask = conv.relu().then_some(&*acts[i - 1]);
                let j = self.inputs[i - 1];
                add_into(before[j], scratch, &mut touched[j], |gin| {
                    pooled.backward(gout, args[i], mask, gin)
                });
                continue;
            }
            if op.relu() {
                gout.par_chunks_mut(s_out)
                    .zip(acts[i].par_chunks(s_out))
                    .for_each(|(g, y)| relu_mask(g, y));
            }
            let gout = &*after[0];
            if let Op::Concat { other } = op {
                // Each part of the gradient to the activation it came from.
                let (a, s_a) = (self.inputs[i], self.sizes[self.inputs[i]]);
                for (j, from) in [(a, 0), (*other, s_a)] {
                    let s = self.sizes[j];
                    add_into(before[j], scratch, &mut touched[j], |gin| {
                        for (gin, gout) in gin.chunks_mut(s).zip(gout.chunks(s_out)) {
                            gin.copy_from_slice(&gout[from..from + s]);
                        }
                    });
                }
                continue;
            }
            for j in op.reads(self.inputs[i]) {
                add_into(before[j], scratch, &mut touched[j], |gin| {
                    backward_op(op, gout, gin, args[i], (self.sizes[j], s_out))
                });
            }
        }
    }

    /// Interval bound propagation (see [`crate::certify`]'s `ibp`) through the plan: the box
    /// of the logits for the input box `[lower, upper]`, with the arithmetic of the tensor
    /// version (centre `(u + l)·0.5`, radius `(u − l)·0.5`, `W c + b ± |W| r` for affine maps,
    /// corners through monotone ones, the sum of the boxes at a residual sum).
    pub(crate) fn interval(&self, lower: &Tensor, upper: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = lower.dim(0)?;
        let (l, u) = self.interval_before(lower, upper, self.ops.len())?;
        let shape = (n, self.classes());
        Ok((
            Tensor::from_vec(l, shape, &Device::Cpu)?,
            Tensor::from_vec(u, shape, &Device::Cpu)?,
        ))
    }

    /// The box of activation `end` (in a chain, the input of op `end`), batch-major.
    fn interval_before(
        &self,
        lower: &Tensor,
        upper: &Tensor,
        end: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let n = lower.dim(0)?;
        let (lower, upper) = (lower.contiguous()?, upper.contiguous()?);
        let l = cpu_values(&lower, "interval lower bound", |v: &[f32]| Ok(v.to_vec()))?;
        let u = cpu_values(&upper, "interval upper bound", |v: &[f32]| Ok(v.to_vec()))?;
        // In parts of the batch, one per thread, as the forward pass ([`Engine::part_size`]).
        let (per, s0) = (self.part_size(n), self.sizes[0]);
        if per >= n {
            return Ok(self.interval_rows((l, u), n, end));
        }
        let parts: Vec<(Vec<f32>, Vec<f32>)> = (l.par_chunks(per * s0).zip(u.par_chunks(per * s0)))
            .map(|(l, u)| self.interval_rows((l.to_vec(), u.to_vec()), l.len() / s0, end))
            .collect();
        let (mut lo, mut hi) = (Vec::new(), Vec::new());
        for (l, u) in parts {
            lo.extend_from_slice(&l);
            hi.extend_from_slice(&u);
        }
        Ok((lo, hi))
    }

    /// The box of op `i`'s output before any ReLU of its own, from the boxes of the activations
    /// it reads (`boxes[j]`, `n` samples each): the corners through a ReLU (monotone), the sum
    /// of the boxes at a residual sum, both boxes at a concatenation, [`pre_relu_interval`]
    /// through any other op.
    fn box_before_relu(
        &self,
        i: usize,
        boxes: &[Option<(Vec<f32>, Vec<f32>)>],
        n: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        let box_of = |j: usize| boxes[j].as_ref().expect("an input made before");
        let j = self.inputs[i];
        let (l, u) = box_of(j);
        match &self.ops[i] {
            Op::Relu => (l.clone(), u.clone()),
            Op::Add { other, .. } => {
                let (lo, uo) = box_of(*other);
                (add(l, lo), add(u, uo))
            }
            Op::Concat { other } => {
                let (lo, uo) = box_of(*other);
                let s = (self.sizes[j], self.sizes[*other]);
                (concat(l, lo, s), concat(u, uo, s))
            }
            op => pre_relu_interval(op, (l, u), n, (self.sizes[j], self.sizes[i + 1])),
        }
    }

    /// Stores op `i`'s output box, and drops the boxes op `i` was the last to read
    /// (`last_read`, [`Engine::last_reads`]): a chain keeps one box at a time.
    fn keep_box(
        &self,
        i: usize,
        boxes: &mut [Option<(Vec<f32>, Vec<f32>)>],
        last_read: &[usize],
        made: (Vec<f32>, Vec<f32>),
    ) {
        for j in self.ops[i].reads(self.inputs[i]) {
            if last_read[j] == i {
                boxes[j] = None;
            }
        }
        boxes[i + 1] = Some(made);
    }

    /// `last[j]`: the last of ops `0..end` to read activation `j` (0 if none does).
    fn last_reads(&self, end: usize) -> Vec<usize> {
        let mut last = vec![0; self.sizes.len()];
        for (i, op) in self.ops.iter().enumerate().take(end) {
            for j in op.reads(self.inputs[i]) {
                last[j] = i;
            }
        }
        last
    }

    /// [`Engine::interval_before`] on `n` samples' boxes: the box of activation `end`.
    fn interval_rows(
        &self,
        input: (Vec<f32>, Vec<f32>),
        n: usize,
        end: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        // Every activation's box, while a later op still reads it (a chain keeps one).
        let last_read = self.last_reads(end);
        let mut boxes: Vec<Option<(Vec<f32>, Vec<f32>)>> = vec![None; self.sizes.len()];
        boxes[0] = Some(input);
        for (i, op) in self.ops.iter().enumerate().take(end) {
            let (mut l, mut u) = self.box_before_relu(i, &boxes, n);
            if op.relu() {
                relu_in_place(&mut l);
                relu_in_place(&mut u);
            }
            self.keep_box(i, &mut boxes, &last_read, (l, u));
        }
        boxes[end]
            .take()
            .expect("the box of the activation asked for")
    }

    /// Interval bounds of the margins `z_y − z_j` (`N × classes`, `+∞` at `j = y`) with the
    /// last layer merged into the specification, as `certify`'s `ibp` defines them: `(W_y −
    /// W_j)·c − |W_y − W_j|·r + b_y − b_j` over the box `c ± r` of that layer's input. `None`
    /// when the plan does not end in a linear layer without ReLU.
    pub(crate) fn interval_margins(
        &self,
        lower: &Tensor,
        upper: &Tensor,
        labels: &[u32],
    ) -> Result<Option<Tensor>> {
        let Some(Op::Linear {
            w,
            b,
            d_in,
            d_out,
            relu: false,
            ..
        }) = self.ops.last()
        else {
            return Ok(None);
        };
        if labels.iter().any(|&y| y as usize >= *d_out) {
            return Ok(None);
        }
        // The box of what the last layer reads (in a chain, the activation before it).
        let (l, u) = self.interval_before(lower, upper, self.inputs[self.ops.len() - 1])?;
        let mut margins = vec![f32::INFINITY; labels.len() * d_out];
        (margins.par_chunks_mut(*d_out).zip(labels.par_iter()))
            .zip(l.par_chunks(*d_in).zip(u.par_chunks(*d_in)))
            .for_each(|((out, &y), (l, u))| {
                let y = y as usize;
                let wy = &w[y * d_in..][..*d_in];
                for (j, out) in out.iter_mut().enumerate().filter(|&(j, _)| j != y) {
                    let wj = &w[j * d_in..][..*d_in];
                    let (mut value, mut spread) = (0f32, 0f32);
                    for (((&a, &c), &l), &u) in wy.iter().zip(wj).zip(l).zip(u) {
                        let d = a - c;
                        value += d * ((u + l) * 0.5);
                        spread += d.abs() * ((u - l) * 0.5);
                    }
                    *out = value - spread + (b[y] - b[j]);
                }
            });
        Ok(Some(Tensor::from_vec(
            margins,
            (labels.len(), *d_out),
            &Device::Cpu,
        )?))
    }
}

/// The interval of `op`'s output before any ReLU of its own, from its input's `[l, u]` (`n`
/// samples of `sizes.0` values): `W c + b ± |W| r` with centre `(u + l)·0.5` and radius
/// `(u − l)·0.5` for an affine op, the corners through a monotone one. (Not a residual sum,
/// whose box is the sum of its terms' boxes.)
fn pre_relu_interval(
    op: &Op,
    (l, u): (&[f32], &[f32]),
    n: usize,
    sizes: (usize, usize),
) -> (Vec<f32>, Vec<f32>) {
    let mut lo = vec![0f32; n * sizes.1];
    let mut hi = vec![0f32; n * sizes.1];
    let mut args = Vec::new();
    if matches!(op, Op::MaxPool(_)) {
        args.resize(n * sizes.1, 0);
    }
    match op {
        Op::Linear { .. } | Op::Conv { .. } | Op::Affine { .. } => {
            let mut centre = vec![0f32; l.len()];
            let mut radius = vec![0f32; l.len()];
            (centre
                .par_chunks_mut(CHUNK)
                .zip(radius.par_chunks_mut(CHUNK)))
            .zip(l.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(|((c, r), (l, u))| {
                for (((c, r), l), u) in c.iter_mut().zip(r).zip(l).zip(u) {
                    (*c, *r) = ((u + l) * 0.5, (u - l) * 0.5);
                }
            });
            apply(
                op,
                Weights::AffineOnly,
                (&centre, &[]),
                &mut lo,
                &mut args,
                sizes,
            );
            apply(op, Weights::Abs, (&radius, &[]), &mut hi, &mut args, sizes);
            (lo.par_chunks_mut(CHUNK).zip(hi.par_chunks_mut(CHUNK))).for_each(|(lo, hi)| {
                for (c, r) in lo.iter_mut().zip(hi) {
                    (*c, *r) = (*c - *r, *c + *r);
                }
            });
        }
        _ => {
            apply(op, Weights::Signed, (l, &[]), &mut lo, &mut args, sizes);
            apply(op, Weights::Signed, (u, &[]), &mut hi, &mut args, sizes);
        }
    }
    (lo, hi)
}

/// The shortest run of filter taps (`k·c_in`, a filter row across its input channels) for
/// which the backward pass through a max-pool scatters filters ([`Pooled`]): shorter runs fill
/// less than one AVX-512 vector, and the dense product with col2im measured faster (the MNIST
/// CNN's first layer, one input channel).
const POOLED_RUN: usize = 16;

/// Samples per part below which a batch is not split over threads ([`Engine::part_size`]).
const PART: usize = 16;

/// Each buffer of `bufs` (`batch × sizes[j]` rows, or empty) cut into parts of `per` samples:
/// `parts[p][j]` is buffer `j`'s rows for part `p` (empty for an empty buffer).
fn split_rows<'a, T>(
    bufs: &'a mut [Vec<T>],
    sizes: &[usize],
    batch: usize,
    per: usize,
) -> Vec<Vec<&'a mut [T]>> {
    let count = batch.div_ceil(per).max(1);
    let mut parts: Vec<Vec<&'a mut [T]>> = (0..count).map(|_| Vec::new()).collect();
    for (buf, &size) in bufs.iter_mut().zip(sizes) {
        if buf.is_empty() || size == 0 {
            parts.iter_mut().for_each(|p| p.push(&mut []));
            continue;
        }
        let chunks = buf[..batch * size].chunks_mut(per * size);
        for (part, chunk) in parts.iter_mut().zip(chunks) {
            part.push(chunk);
        }
    }
    parts
}

/// Whether a convolution runs by Winograd's F(2×2, 3×3) ([`Winograd`]): 3×3 of stride 1 and
/// padding 1 (its output the size of its input), with at least [`WINOGRAD_CHANNELS`] channels
/// in and out (a network's first layer, with 1 or 3 input channels, has too short a product
/// for the transforms to pay).
fn winograd_applies(g: &ConvShape, c_out: usize) -> bool {
    g.k == 3
        && g.stride == 1
        && g.pad == 1
        && (g.oh, g.ow) == (g.h, g.w)
        && g.c_in.min(c_out) >= WINOGRAD_CHANNELS
}

/// See [`winograd_applies`].
const WINOGRAD_CHANNELS: usize = 16;

/// Values per task of an element-wise pass.
const CHUNK: usize = 1 << 14;

/// `v = max(v, 0)` element-wise, in parallel.
fn relu_in_place(v: &mut [f32]) {
    v.par_chunks_mut(CHUNK).for_each(|v| {
        v.iter_mut()
            .for_each(|v| *v = if *v > 0.0 { *v } else { 0.0 })
    });
}

/// An affine map `y = W·x + b` in f64, `W` `d_out × d_in` row-major: one layer of the
/// network as [`Engine::affine_chain`] lowers it.
#[derive(Debug, Clone)]
pub(crate) struct AffineMap {
    pub w: Vec<f64>,
    pub b: Vec<f64>,
    pub d_in: usize,
    pub d_out: usize,
}

impl AffineMap {
    /// The identity on `n` values.
    fn identity(n: usize) -> Self {
        let mut w = vec![0.0; n * n];
        (0..n).for_each(|i| w[i * n + i] = 1.0);
        AffineMap {
            w,
            b: vec![0.0; n],
            d_in: n,
            d_out: n,
        }
    }

    /// `next ∘ self`: `W = W_next·W_self`, `b = W_next·b_self + b_next`.
    fn then(&self, next: &AffineMap) -> AffineMap {
        let (m, k, n) = (next.d_out, next.d_in, self.d_in);
        let mut w = vec![0.0; m * n];
        matmul(
            (m, n, k),
            &mut w,
            View::rows(&next.w, k),
            View::rows(&self.w, n),
            gemm::threads(),
        );
        let b = (0..m)
            .map(|i| {
                let row = &next.w[i * k..(i + 1) * k];
                row.iter().zip(&self.b).map(|(w, b)| w * b).sum::<f64>() + next.b[i]
            })
            .collect();
        AffineMap {
            w,
            b,
            d_in: n,
            d_out: m,
        }
    }
}

impl Engine {
    /// The network as affine maps with a ReLU between each two, in f64 (the weights exactly,
    /// consecutive affine ops composed): what α-CROWN and branch and bound run on
    /// ([`crate::verify`]). `Err` names what has no such form: a max-pool, a residual sum or a
    /// concatenation.
    pub(crate) fn affine_chain(&self) -> std::result::Result<Vec<AffineMap>, &'static str> {
        let mut chain = Vec::new();
        let mut current = AffineMap::identity(self.sizes[0]);
        for (i, op) in self.ops.iter().enumerate() {
            if self.inputs[i] != i {
                return Err(
                    "a graph whose activations are read twice (a residual sum or a concatenation)",
                );
            }
            let (s_in, s_out) = (self.sizes[i], self.sizes[i + 1]);
            let map = match op {
                Op::Relu => None,
                Op::Add { .. } | Op::Concat { .. } => {
                    return Err("residual sums and concatenations")
                }
                Op::MaxPool(_) => return Err("max-pooling"),
                Op::Linear {
                    w, b, d_in, d_out, ..
                } => Some(AffineMap {
                    w: w.iter().map(|&v| v as f64).collect(),
                    b: b.iter().map(|&v| v as f64).collect(),
                    d_in: *d_in,
                    d_out: *d_out,
                }),
                Op::Conv { w, b, c_out, g, .. } => Some(dense_conv(w, b, *c_out, g)),
                Op::AvgPool(_) => {
                    // Its map on the basis vectors: each output is an exact mean of inputs.
                    let mut basis = vec![0f32; s_in * s_in];
                    (0..s_in).for_each(|k| basis[k * s_in + k] = 1.0);
                    let mut out = vec![0f32; s_in * s_out];
                    apply(
                        op,
                        Weights::Signed,
                        (&basis, &[]),
                        &mut out,
                        &mut [],
                        (s_in, s_out),
                    );
                    let mut w = vec![0.0; s_out * s_in];
                    for k in 0..s_in {
                        for o in 0..s_out {
                            w[o * s_in + k] = out[k * s_out + o] as f64;
                        }
                    }
                    Some(AffineMap {
                        w,
                        b: vec![0.0; s_out],
                        d_in: s_in,
                        d_out: s_out,
                    })
                }
                Op::Affine {
                    scale,
                    shift,
                    plane,
                } => Some(diagonal(s_in, *plane, |c| {
                    (scale[c] as f64, shift[c] as f64)
                })),
                Op::Normalize { mean, std, plane } => Some(diagonal(s_in, *plane, |c| {
                    let s = std[c] as f64;
                    (1.0 / s, -(mean[c] as f64) / s)
                })),
            };
            if let Some(map) = map {
                current = current.then(&map);
            }
            if op.relu() {
                let n = current.d_out;
                chain.push(std::mem::replace(&mut current, AffineMap::identity(n)));
            }
        }
        chain.push(current);
        Ok(chain)
    }
}

/// A per-channel map `x·s_c + t_c` on `size` values in planes of `plane`.
fn diagonal(size: usize, plane: usize, st: impl Fn(usize) -> (f64, f64)) -> AffineMap {
    let mut map = AffineMap::identity(size);
    for k in 0..size {
        let (s, t) = st(k / plane.max(1));
        map.w[k * size + k] = s;
        map.b[k] = t;
    }
    map
}

/// A convolution as the dense matrix it applies: row `(o, oy, ox)`, column `(c, iy, ix)`.
fn dense_conv(w: &[f32], b: &[f32], c_out: usize, g: &ConvShape) -> AffineMap {
    let (d_in, plane) = (g.c_in * g.h * g.w, g.oh * g.ow);
    let d_out = c_out * plane;
    let mut dense = vec![0.0; d_out * d_in];
    for o in 0..c_out {
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let row = &mut dense[(o * plane + oy * g.ow + ox) * d_in..][..d_in];
                for c in 0..g.c_in {
                    for ky in 0..g.k {
                        for kx in 0..g.k {
                            let (iy, ix) = (oy * g.stride + ky, ox * g.stride + kx);
                            let (Some(iy), Some(ix)) =
                                (iy.checked_sub(g.pad), ix.checked_sub(g.pad))
                            else {
                                continue;
                            };
                            if iy < g.h && ix < g.w {
                                row[(c * g.h + iy) * g.w + ix] +=
                                    w[((o * g.c_in + c) * g.k + ky) * g.k + kx] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    let b = (0..d_out).map(|i| b[i / plane] as f64).collect();
    AffineMap {
        w: dense,
        b,
        d_in,
        d_out,
    }
}

/// How an affine op is applied: as it is (bias and any fused ReLU), its affine map alone (the
/// centre of an interval), or its weights' absolute values without bias (the radius).
#[derive(Clone, Copy, PartialEq)]
enum Weights {
    Signed,
    AffineOnly,
    Abs,
}

/// One op on a batch: `src` (`batch × sizes.0`) to `out` (`batch × sizes.1`); `args` receives
/// a max-pool's positions. With [`Weights::Abs`], an affine op maps `src` by `|W|` (or
/// `|scale|`), without bias and ReLU.
fn apply(
    op: &Op,
    weights: Weights,
    (src, other): (&[f32], &[f32]),
    out: &mut [f32],
    args: &mut [u32],
    (s_in, s_out): (usize, usize),
) {
    let n = src.len() / s_in.max(1);
    let abs = weights == Weights::Abs;
    let relu = |relu: &bool| *relu && weights == Weights::Signed;
    match op {
        Op::Linear {
            wt,
            b,
            d_in,
            d_out,
            relu: relu_after,
            abs_w,
            ..
        } => {
            let wt = if abs {
                abs_w.get_or_init(|| absolute(wt))
            } else {
                wt
            };
            matmul(
                (n, *d_out, *d_in),
                out,
                View::rows(src, *d_in),
                View::rows(wt, *d_out),
                gemm::threads(),
            );
            if !abs {
                out.par_chunks_mut(*d_out)
                    .for_each(|row| bias_relu(row, b, 1, relu(relu_after)));
            }
        }
        Op::Conv {
            w,
            wt,
            b,
            c_out,
            g,
            relu: relu_after,
            abs_w,
            wino,
            ..
        } => {
            let epilogue = conv::Epilogue {
                bias: (!abs).then_some(&b[..]),
                relu: relu(relu_after),
            };
            if let (Some(wino), false) = (wino, abs) {
                return wino.forward(src, out, (g.h, g.w), epilogue);
            }
            let w = if abs {
                abs_w.get_or_init(|| absolute(w))
            } else {
                w
            };
            let conv = Conv {
                w,
                wt,
                c_out: *c_out,
                g,
            };
            conv.forward(src, out, epilogue);
        }
        Op::Add { relu, .. } => out
            .par_chunks_mut(s_out)
            .zip(src.par_chunks(s_in).zip(other.par_chunks(s_in)))
            .for_each(|(out, (a, b))| {
                for (o, (&a, &b)) in out.iter_mut().zip(a.iter().zip(b)) {
                    let y = a + b;
                    *o = if *relu && !(y > 0.0) { 0.0 } else { y };
                }
            }),
        Op::Concat { .. } => {
            let s_b = s_out - s_in;
            (out.par_chunks_mut(s_out))
                .zip(
                    src.par_chunks(s_in.max(1))
                        .zip(other.par_chunks(s_b.max(1))),
                )
                .for_each(|(out, (a, b))| {
                    out[..s_in].copy_from_slice(a);
                    out[s_in..].copy_from_slice(b);
                })
        }
        Op::Relu => out
            .par_chunks_mut(s_out)
            .zip(src.par_chunks(s_in))
            .for_each(|(out, src)| {
                for (o, &v) in out.iter_mut().zip(src) {
                    *o = v.max(0.0);
                }
            }),
        Op::MaxPool(g) => {
            let (plane_in, plane_out) = (g.h * g.w, g.oh * g.ow);
            out.par_chunks_mut(plane_out)
                .zip(args.par_chunks_mut(plane_out))
                .zip(src.par_chunks(plane_in))
                .for_each(|((out, arg), src)| kernels::max_pool(src, out, arg, g));
        }
        Op::AvgPool(g) => {
            let (plane_in, plane_out) = (g.h * g.w, g.oh * g.ow);
            out.par_chunks_mut(plane_out)
                .zip(src.par_chunks(plane_in))
                .for_each(|(out, src)| kernels::avg_pool(src, out, g));
        }
        Op::Affine {
            scale,
            shift,
            plane,
        } => {
            if abs {
                per_channel(src, out, s_in, *plane, |c, v| v * scale[c].abs())
            } else {
                per_channel(src, out, s_in, *plane, |c, v| v * scale[c] + shift[c])
            }
        }
        Op::Normalize { mean, std, plane } => {
            per_channel(src, out, s_in, *plane, |c, v| (v - mean[c]) / std[c])
        }
    }
}

/// The transpose of a `rows × cols` row-major matrix.
fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; w.len()];
    for (r, row) in w.chunks(cols).enumerate().take(rows) {
        for (c, &v) in row.iter().enumerate() {
            t[c * rows + r] = v;
        }
    }
    t
}

/// `|w|`, element by element.
fn absolute(w: &[f32]) -> Vec<f32> {
    w.iter().map(|v| v.abs()).collect()
}

/// `out[i] = f(channel of i, src[i])` over a batch of samples of `size` values with channels
/// of `plane` values each.
fn per_channel(
    src: &[f32],
    out: &mut [f32],
    size: usize,
    plane: usize,
    f: impl Fn(usize, f32) -> f32 + Sync,
) {
    out.par_chunks_mut(size)
        .zip(src.par_chunks(size))
        .for_each(|(out, src)| {
            for (c, (out, src)) in out.chunks_mut(plane).zip(src.chunks(plane)).enumerate() {
                for (o, &v) in out.iter_mut().zip(src) {
                    *o = f(c, v);
                }
            }
        });
}

wide! {
    /// Adds `bias[c]` to each run of `plane` values of `out` (channel `c`), then ReLU if `relu`.
    fn bias_relu(out: &mut [f32], bias: &[f32], plane: usize, relu: bool) {
        if plane == 1 {
            // One value per channel (a linear layer's row): element-wise, so that it vectorises.
            for (v, &b) in out.iter_mut().zip(bias) {
                *v = add_relu(*v, b, relu);
            }
            return;
        }
        for (run, &b) in out.chunks_mut(plane).zip(bias) {
            run.iter_mut().for_each(|v| *v = add_relu(*v, b, relu));
        }
    }
}

/// `v + b`, then ReLU if `relu`: a select rather than `f32::max` (which orders NaN), so that
/// it vectorises.
#[inline(always)]
fn add_relu(v: f32, b: f32, relu: bool) -> f32 {
    let y = v + b;
    if relu && !(y > 0.0) {
        0.0
    } else {
        y
    }
}

/// One part's rows of a workspace for [`Engine::backward_part`]: its gradients and scratch, and
/// its activations and max-pool positions.
type PartRows<'p, 'w> = (
    (&'p mut Vec<&'w mut [f32]>, &'p mut Vec<&'w mut [f32]>),
    (&'p mut Vec<&'w mut [f32]>, &'p mut Vec<&'w mut [u32]>),
);

/// A forward pass whose activations are in `ws`: its logits, and input gradients of any
/// gradient at the logits.
struct Pass<'a> {
    engine: &'a Engine,
    ws: Workspace,
    /// The input's dimensions, for the gradient's.
    dims: Vec<usize>,
}

impl Pass<'_> {
    fn logits(&self) -> Result<Tensor> {
        let out = self.ws.acts.last().map(|a| a.to_vec()).unwrap_or_default();
        Tensor::from_vec(out, (self.ws.batch, self.engine.classes()), &Device::Cpu)
    }

    /// The input gradient of `Σ_n ⟨g_n, z_n⟩` for `g` (`N × classes`): the ops in reverse,
    /// each adding its input's share to that activation's gradient (an activation read twice,
    /// as a residual block's input, sums both).
    fn input_grad(&mut self, g: &Tensor) -> Result<Tensor> {
        let (e, n) = (self.engine, self.ws.batch);
        let g = g.to_dtype(DType::F32)?.contiguous()?;
        let ws = &mut self.ws;
        let last = e.ops.len();
        ws.touched.fill(false);
        cpu_values(&g, "engine logit gradient", |gv: &[f32]| {
            ws.grads[last][..gv.len()].copy_from_slice(gv);
            Ok(())
        })?;
        ws.touched[last] = true;
        let per = e.part_size(n);
        let mut grads = split_rows(&mut ws.grads, &e.sizes, n, per);
        let widest = ws.scratch.len() / n.max(1);
        let mut scratch = split_rows(std::slice::from_mut(&mut ws.scratch), &[widest], n, per);
        // Read only, but cut as the forward pass cut them.
        let mut acts = split_rows(&mut ws.acts, &e.sizes[1..], n, per);
        let mut args = split_rows(&mut ws.args, &e.sizes[1..], n, per);
        let parts: Vec<_> = (grads.iter_mut().zip(&mut scratch))
            .zip(acts.iter_mut().zip(&mut args))
            .collect();
        let start = ws.touched.clone();
        let run = |((grads, scratch), (acts, args)): PartRows<'_, '_>| {
            let mut touched = start.clone();
            e.backward_part(grads, scratch[0], acts, args, &mut touched);
            touched
        };
        let touched: Vec<Vec<bool>> = if parts.len() == 1 {
            parts.into_iter().map(run).collect()
        } else {
            parts.into_par_iter().map(run).collect()
        };
        ws.touched.clone_from(&touched[0]);
        let size = n * e.sizes[0];
        if !ws.touched[0] {
            return Tensor::zeros(self.dims.as_slice(), DType::F32, &Device::Cpu);
        }
        Tensor::from_slice(&ws.grads[0][..size], self.dims.as_slice(), &Device::Cpu)
    }
}

wide! {
    /// `g = 0` where the ReLU's output `y` is not positive.
    fn relu_mask(g: &mut [f32], y: &[f32]) {
        for (g, &y) in g.iter_mut().zip(y) {
            *g = if y > 0.0 { *g } else { 0.0 };
        }
    }
}

/// `write` run on `grad` when it holds no gradient yet in this pass (`touched` false), else on
/// `scratch` and summed into `grad` (an activation read by more than one op).
fn add_into(
    grad: &mut [f32],
    scratch: &mut [f32],
    touched: &mut bool,
    write: impl FnOnce(&mut [f32]),
) {
    if !*touched {
        write(grad);
    } else {
        let scratch = &mut scratch[..grad.len()];
        write(scratch);
        grad.par_chunks_mut(CHUNK)
            .zip(scratch.par_chunks(CHUNK))
            .for_each(|(sum, add)| sum.iter_mut().zip(add).for_each(|(s, a)| *s += a));
    }
    *touched = true;
}

/// One op's backward pass: `gin` (`batch × s_in`, overwritten) from the gradient `gout` of its
/// output (already masked by a fused ReLU). For `Add`, the share of either summand.
fn backward_op(
    op: &Op,
    gout: &[f32],
    gin: &mut [f32],
    args: &[u32],
    (s_in, s_out): (usize, usize),
) {
    let n = gout.len() / s_out.max(1);
    match op {
        Op::Linear { w, d_in, d_out, .. } => matmul(
            (n, *d_in, *d_out),
            gin,
            View::rows(gout, *d_out),
            View::rows(w, *d_in),
            gemm::threads(),
        ),
        Op::Conv {
            wino: Some(wino),
            g,
            ..
        } => wino.backward(gout, gin, (g.h, g.w)),
        Op::Conv {
            w, wt, c_out, g, ..
        } => Conv {
            w,
            wt,
            c_out: *c_out,
            g,
        }
        .backward(gout, gin),
        Op::Relu | Op::Add { .. } => gin.copy_from_slice(gout),
        Op::Concat { .. } => unreachable!("a concatenation's gradient is split by its caller"),
        Op::MaxPool(g) => {
            let (plane_in, plane_out) = (g.h * g.w, g.oh * g.ow);
            gin.par_chunks_mut(plane_in)
                .zip(gout.par_chunks(plane_out))
                .zip(args.par_chunks(plane_out))
                .for_each(|((gin, gout), arg)| kernels::max_pool_back(gout, arg, gin));
        }
        Op::AvgPool(g) => {
            let (plane_in, plane_out) = (g.h * g.w, g.oh * g.ow);
            gin.par_chunks_mut(plane_in)
                .zip(gout.par_chunks(plane_out))
                .for_each(|(gin, gout)| kernels::avg_pool_back(gout, gin, g));
        }
        Op::Affine { scale, plane, .. } => {
            per_channel(gout, gin, s_in, *plane, |c, v| v * scale[c])
        }
        Op::Normalize { std, plane, .. } => per_channel(gout, gin, s_in, *plane, |c, v| v / std[c]),
    }
}

#[cfg(test)]
mod should {
    use candle_core::{Module, Var};
    use candle_nn::{VarBuilder, VarMap};

    use super::*;
    use crate::nn::testing::random_network as random;
    use crate::Rng;

    /// Convolutions whose only reader is a max-pool, with filter rows long enough for the
    /// scatter of [`Pooled`]: one followed by a ReLU, one strided and padded without, under
    /// windows of `k` at `stride` (candle's backward takes `k = stride` only).
    fn pooled(k: usize, stride: usize) -> crate::nn::SequentialBuilder {
        Sequential::builder(&[6, 13, 12])
            .conv2d(8, 3, 1, 1)
            .relu()
            .max_pool2d(2)
            .conv2d(7, 2, 2, 1)
            .max_pool2d_with_stride(k, stride)
            .flatten()
            .linear(3)
    }

    /// Every layer kind: normalisation, padded and strided convolutions, max pooling, a ReLU that
    /// no layer can absorb, batch norm, average pooling, a 1×1 convolution.
    fn networks() -> crate::Result<Vec<(Sequential, Option<Normalize>)>> {
        let image = Sequential::builder(&[3, 10, 9])
            .normalize(Normalize::new(vec![0.4, 0.5, 0.6], vec![0.2, 0.3, 0.25])?)
            .conv2d(4, 3, 1, 1)
            .relu()
            .max_pool2d(2)
            .relu()
            .batch_norm()
            .conv2d(5, 4, 2, 1)
            .avg_pool2d(2)
            .flatten()
            .linear(7)
            .relu()
            .linear(4);
        let flat = Sequential::builder(&[12])
            .batch_norm()
            .linear(6)
            .relu()
            .linear(3);
        let pointwise = Sequential::builder(&[2, 5, 5])
            .conv2d(3, 1, 1, 0)
            .relu()
            .max_pool2d(2)
            .flatten()
            .linear(3);
        Ok(vec![
            (random(pooled(2, 2), 4)?, None),
            (random(image, 1)?, None),
            (
                random(flat, 2)?,
                Some(Normalize::new(vec![0.5], vec![0.3])?),
            ),
            (
                random(pointwise, 3)?,
                Some(Normalize::new(vec![0.1, 0.2], vec![0.5, 2.0])?),
            ),
        ])
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> crate::Result<f32> {
        assert_eq!(a.dims(), b.dims());
        Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
    }

    fn max_abs(a: &Tensor) -> crate::Result<f32> {
        Ok(a.abs()?.max_all()?.to_scalar::<f32>()?)
    }

    /// CROWN of two plans of one function (every neuron bounded by back-substitution, so the
    /// same relaxations): the same logit and margin bounds.
    fn assert_same_crown(
        a: &Engine,
        b: &Engine,
        (lower, upper): (&Tensor, &Tensor),
        labels: &[u32],
    ) -> crate::Result<()> {
        for margins in [false, true] {
            let spec = || match margins {
                true => Spec::Margins(labels),
                false => Spec::Outputs,
            };
            let (al, au) = a.crown(lower, upper, spec(), true)?.expect("relaxable");
            let (bl, bu) = b.crown(lower, upper, spec(), true)?.expect("relaxable");
            // The margins' `+∞` at the label compared as large numbers.
            let finite = |t: &Tensor| t.clamp(-1e6, 1e6);
            let scale = max_abs(&finite(&bl)?)?.max(1.0);
            for (x, y, what) in [(&al, &bl, "lower"), (&au, &bu, "upper")] {
                let d = max_diff(&finite(x)?, &finite(y)?)?;
                assert!(
                    d <= 1e-5 * scale,
                    "CROWN {what} (margins: {margins}): off by {d}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn give_candles_logits_and_input_gradients_on_every_layer_kind() -> crate::Result<()> {
        // One sample (a product per sample) and six (samples side by side in one product).
        let kinds = networks()?.len();
        for (i, (net, normalize)) in networks()?.into_iter().chain(networks()?).enumerate() {
            let engine = Engine::compile(&net, normalize.as_ref()).expect("a known network");
            let mut rng = Rng::seed_from_u64(10 + i as u64);
            let batch = if i < kinds { 1 } else { 6 };
            let mut dims = vec![batch];
            dims.extend_from_slice(net.input_shape());
            let n = dims.iter().product();
            let x = Tensor::from_vec(rng.uniform_vec(n, 0.0, 1.0), dims.as_slice(), &Device::Cpu)?;
            let classes = net.output_shape()[0];
            let r = Tensor::from_vec(
                rng.normal_vec(batch * classes),
                (batch, classes),
                &Device::Cpu,
            )?;

            // The slow, obvious path: candle's operations and autograd.
            let var = Var::from_tensor(&x)?;
            let input = match &normalize {
                Some(n) => n.apply(var.as_tensor())?,
                None => var.as_tensor().clone(),
            };
            let logits = net.forward(&input)?;
            let grads = (&logits * &r)?.sum_all()?.backward()?;
            let grad = grads.get(var.as_tensor()).expect("input gradient").clone();

            let (ours, (), our_grad) = engine.forward_backward(&x, |_| Ok(((), r.clone())))?;
            let scale = max_abs(&logits)?.max(1.0);
            assert!(
                max_diff(&ours, &logits)? <= 1e-5 * scale,
                "network {i}: logits"
            );
            let scale = max_abs(&grad)?.max(1e-3);
            assert!(
                max_diff(&our_grad, &grad)? <= 1e-4 * scale,
                "network {i}: gradient"
            );
            assert!(
                max_abs(&grad)? > 0.0,
                "network {i}: a gradient that can tell"
            );

            // Every class logit's gradient, as DeepFool asks for them.
            let (_, jacobian) = engine.class_grads(&x)?;
            for k in [0, classes - 1] {
                let var = Var::from_tensor(&x)?;
                let input = match &normalize {
                    Some(n) => n.apply(var.as_tensor())?,
                    None => var.as_tensor().clone(),
                };
                let g = net
                    .forward(&input)?
                    .narrow(1, k, 1)?
                    .sum_all()?
                    .backward()?;
                let want = g.get(var.as_tensor()).expect("class gradient");
                let got = jacobian.narrow(1, k, 1)?.squeeze(1)?;
                let scale = max_abs(want)?.max(1e-3);
                assert!(
                    max_diff(&got, want)? <= 1e-4 * scale,
                    "network {i}: class {k}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn scatter_filters_through_a_pool_to_the_dense_products_gradient() -> crate::Result<()> {
        // Overlapping windows: a pixel can be the maximum of two.
        let net = random(pooled(3, 1), 6)?;
        let pooled = Engine::compile(&net, None).expect("a known network");
        // Both pools take the scatter; the slow, obvious path takes neither.
        assert_eq!(pooled.pooled, [false, true, false, true, false]);
        let dense = Engine::compile(&net, None)
            .expect("a known network")
            .dense();
        let mut rng = Rng::seed_from_u64(5);
        let x = Tensor::from_vec(
            rng.uniform_vec(5 * 6 * 13 * 12, 0.0, 1.0),
            (5, 6, 13, 12),
            &Device::Cpu,
        )?;
        let r = Tensor::from_vec(rng.normal_vec(5 * 3), (5, 3), &Device::Cpu)?;
        let (_, (), fast) = pooled.forward_backward(&x, |_| Ok(((), r.clone())))?;
        let (_, (), slow) = dense.forward_backward(&x, |_| Ok(((), r.clone())))?;
        let scale = max_abs(&slow)?;
        assert!(scale > 0.0);
        assert!(max_diff(&fast, &slow)? <= 1e-6 * scale);
        Ok(())
    }

    /// `n` inputs uniform in `[0, 1]` for `net` and a gradient at its logits, normal.
    fn batch_and_logit_gradient(
        net: &Sequential,
        n: usize,
        seed: u64,
    ) -> crate::Result<(Tensor, Tensor)> {
        let mut rng = Rng::seed_from_u64(seed);
        let mut dims = vec![n];
        dims.extend_from_slice(net.input_shape());
        let size = dims.iter().product();
        let x = Tensor::from_vec(
            rng.uniform_vec(size, 0.0, 1.0),
            dims.as_slice(),
            &Device::Cpu,
        )?;
        let classes = net.output_shape()[0];
        let r = Tensor::from_vec(rng.normal_vec(n * classes), (n, classes), &Device::Cpu)?;
        Ok((x, r))
    }

    #[test]
    fn split_a_batch_over_threads_to_the_unsplit_passs_numbers() -> crate::Result<()> {
        // 50 samples: three parts of 17, 17 and 16 on three threads, one part on one.
        for (i, (net, normalize)) in networks()?.into_iter().enumerate() {
            let engine = Engine::compile(&net, normalize.as_ref()).expect("a known network");
            let (x, r) = batch_and_logit_gradient(&net, 50, 30 + i as u64)?;
            let on = |threads: usize| -> crate::Result<(Tensor, Tensor)> {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("a thread pool");
                pool.install(|| {
                    assert_eq!(engine.part_size(50), 50usize.div_ceil(threads));
                    let (logits, (), grad) =
                        engine.forward_backward(&x, |_| Ok(((), r.clone())))?;
                    Ok((logits, grad))
                })
            };
            let ((split, split_grad), (whole, whole_grad)) = (on(3)?, on(1)?);
            // Interval bounds in parts too.
            let boxes = |threads: usize| -> crate::Result<(Tensor, Tensor)> {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("a thread pool");
                pool.install(|| Ok(engine.interval(&(&x - 0.05)?, &(&x + 0.05)?)?))
            };
            let ((split_l, split_u), (whole_l, whole_u)) = (boxes(3)?, boxes(1)?);
            let scale = max_abs(&whole_u)?.max(1.0);
            assert!(
                max_diff(&split_l, &whole_l)? <= 1e-6 * scale,
                "network {i}: lower"
            );
            assert!(
                max_diff(&split_u, &whole_u)? <= 1e-6 * scale,
                "network {i}: upper"
            );
            assert!(max_diff(&whole_l, &whole_u)? > 1e-3, "network {i}: width");
            let scale = max_abs(&whole)?.max(1.0);
            assert!(
                max_diff(&split, &whole)? <= 1e-6 * scale,
                "network {i}: logits"
            );
            let scale = max_abs(&whole_grad)?;
            assert!(scale > 0.0);
            assert!(
                max_diff(&split_grad, &whole_grad)? <= 1e-6 * scale,
                "network {i}: gradient"
            );
        }
        Ok(())
    }

    #[test]
    fn give_the_same_bits_on_the_avx512_copies_as_on_the_baseline_ones() -> crate::Result<()> {
        for (i, (net, normalize)) in networks()?.into_iter().enumerate() {
            let engine = Engine::compile(&net, normalize.as_ref()).expect("a known network");
            let (x, r) = batch_and_logit_gradient(&net, 40, 50 + i as u64)?;
            let run = || -> crate::Result<Vec<Vec<u32>>> {
                let (logits, (), grad) = engine.forward_backward(&x, |_| Ok(((), r.clone())))?;
                let (l, u) = engine.interval(&(&x - 0.05)?, &(&x + 0.05)?)?;
                [logits, grad, l, u]
                    .iter()
                    .map(|t| {
                        let v = t.flatten_all()?.to_vec1::<f32>()?;
                        Ok(v.iter().map(|v| v.to_bits()).collect())
                    })
                    .collect()
            };
            let (wide, baseline) = (run()?, crate::nn::simd::on_baseline(run)?);
            for (k, (a, b)) in wide.iter().zip(&baseline).enumerate() {
                assert!(a == b, "network {i}: output {k} differs between the copies");
            }
        }
        Ok(())
    }

    #[test]
    fn bound_intervals_through_residual_sums_as_the_tensor_boxes_do() -> crate::Result<()> {
        use crate::nn::Graph;
        let mut rng = Rng::seed_from_u64(61);
        let dev = Device::Cpu;
        let conv = |rng: &mut Rng, c_in: usize, c_out: usize| -> crate::Result<Layer> {
            Ok(Layer::Conv2d {
                weight: Tensor::from_vec(
                    rng.normal_vec(c_out * c_in * 9),
                    (c_out, c_in, 3, 3),
                    &dev,
                )?
                .affine(0.3, 0.0)?,
                bias: Tensor::from_vec(rng.uniform_vec(c_out, -0.1, 0.1), c_out, &dev)?,
                stride: 1,
                padding: 1,
            })
        };
        // x → conv → relu → conv, plus x → relu → conv (stride 2) … → linear: two residual sums,
        // one of them read twice.
        let mut g = Graph::new(&[2, 6, 6]);
        let a = g.layer(0, conv(&mut rng, 2, 2)?)?;
        let a = g.layer(a, Layer::Relu)?;
        let b = g.layer(a, conv(&mut rng, 2, 2)?)?;
        let s1 = g.add(b, 0)?;
        let r1 = g.layer(s1, Layer::Relu)?;
        let c = g.layer(r1, conv(&mut rng, 2, 2)?)?;
        let s2 = g.add(c, r1)?;
        let f = g.layer(s2, Layer::Flatten)?;
        let w = Tensor::from_vec(rng.normal_vec(5 * 72), (5, 72), &dev)?.affine(0.1, 0.0)?;
        let bias = Tensor::from_vec(rng.uniform_vec(5, -0.1, 0.1), 5, &dev)?;
        g.layer(f, Layer::Linear { weight: w, bias })?;
        let engine = g.source().compile(None).expect("a known graph");
        let x = Tensor::from_vec(rng.uniform_vec(20 * 72, 0.0, 1.0), (20, 2, 6, 6), &dev)?;
        let (lower, upper) = ((&x - 0.05)?, (&x + 0.05)?);
        let (l, u) = engine.interval(&lower, &upper)?;
        // The tensor version: each layer's box map, boxes summed at each sum.
        let Source::Graph(_, nodes) = g.source() else {
            unreachable!()
        };
        let mut boxes = vec![(lower.clone(), upper.clone())];
        for (node, input) in &nodes {
            let (li, ui) = boxes[*input].clone();
            boxes.push(match node {
                Node::Layer(layer) => crate::certify::ibp::layer_interval(layer, &li, &ui)?,
                Node::Add(other) => ((&li + &boxes[*other].0)?, (&ui + &boxes[*other].1)?),
                Node::Concat(other) => (
                    Tensor::cat(&[&li, &boxes[*other].0], 1)?,
                    Tensor::cat(&[&ui, &boxes[*other].1], 1)?,
                ),
            });
        }
        let (tl, tu) = boxes.pop().expect("the logits' box");
        let scale = max_abs(&tu)?.max(1.0);
        assert!(max_diff(&l, &tl)? <= 1e-5 * scale, "lower");
        assert!(max_diff(&u, &tu)? <= 1e-5 * scale, "upper");
        assert!(max_diff(&l, &u)? > 1e-2, "a box with width");
        // And the logits of the box's corners and centre lie inside it.
        for point in [&lower, &upper, &x] {
            let z = engine.forward(point)?;
            assert!((z.ge(&(&l - 1e-5)?)?.min_all()?.to_scalar::<u8>()? == 1));
            assert!((z.le(&(&u + 1e-5)?)?.min_all()?.to_scalar::<u8>()? == 1));
        }
        Ok(())
    }

    #[test]
    fn bound_with_crown_through_residual_sums_as_through_the_merged_chain() -> crate::Result<()> {
        use crate::nn::Graph;
        let mut rng = Rng::seed_from_u64(67);
        let dev = Device::Cpu;
        // Three 2 → 2 convolutions, 3×3 with padding 1.
        let filters: Vec<(Vec<f32>, Vec<f32>)> = (0..3)
            .map(|_| {
                let w = rng.normal_vec(36).iter().map(|v| v * 0.3).collect();
                (w, rng.uniform_vec(2, -0.1, 0.1))
            })
            .collect();
        let conv = |(w, b): &(Vec<f32>, Vec<f32>), identity: bool| -> crate::Result<Layer> {
            let mut w = w.clone();
            if identity {
                // Plus the identity: the centre tap from channel c to channel c.
                for c in 0..2 {
                    w[(c * 2 + c) * 9 + 4] += 1.0;
                }
            }
            Ok(Layer::Conv2d {
                weight: Tensor::from_vec(w, (2, 2, 3, 3), &dev)?,
                bias: Tensor::from_vec(b.clone(), 2, &dev)?,
                stride: 1,
                padding: 1,
            })
        };
        let w = Tensor::from_vec(rng.normal_vec(5 * 18), (5, 18), &dev)?.affine(0.3, 0.0)?;
        let bias = Tensor::from_vec(rng.uniform_vec(5, -0.1, 0.1), 5, &dev)?;
        let head = |g: &mut Graph, at: usize| -> crate::Result<usize> {
            let p = g.layer(
                at,
                Layer::MaxPool2d {
                    kernel: 2,
                    stride: 2,
                },
            )?;
            let f = g.layer(p, Layer::Flatten)?;
            let (weight, bias) = (w.clone(), bias.clone());
            g.layer(f, Layer::Linear { weight, bias })
        };
        // conv → ReLU → h, then relu(conv(h) + h) → r, then conv(r) + r → pool → linear…
        let mut g = Graph::new(&[2, 6, 6]);
        let a = g.layer(0, conv(&filters[0], false)?)?;
        let a = g.layer(a, Layer::Relu)?;
        let b = g.layer(a, conv(&filters[1], false)?)?;
        let s = g.add(b, a)?;
        let r = g.layer(s, Layer::Relu)?;
        let c = g.layer(r, conv(&filters[2], false)?)?;
        let s = g.add(c, r)?;
        head(&mut g, s)?;
        // …and the same network as a chain, each identity merged into its filters.
        let mut m = Graph::new(&[2, 6, 6]);
        let a = m.layer(0, conv(&filters[0], false)?)?;
        let a = m.layer(a, Layer::Relu)?;
        let b = m.layer(a, conv(&filters[1], true)?)?;
        let r = m.layer(b, Layer::Relu)?;
        let c = m.layer(r, conv(&filters[2], true)?)?;
        head(&mut m, c)?;
        let graph = g.source().compile(None).expect("a known graph");
        let chain = m.source().compile(None).expect("a known chain");
        assert!(graph
            .ops
            .iter()
            .any(|op| matches!(op, Op::Add { relu: true, .. })));
        assert!(!chain.ops.iter().any(|op| matches!(op, Op::Add { .. })));
        let n = 12;
        let x = Tensor::from_vec(rng.uniform_vec(n * 72, 0.0, 1.0), (n, 2, 6, 6), &dev)?;
        let labels: Vec<u32> = (0..n as u32).map(|i| i % 5).collect();
        let (lower, upper) = ((&x - 0.03)?, (&x + 0.03)?);
        // Every neuron bounded by back-substitution: the same relaxations, so the same bounds.
        assert_same_crown(&graph, &chain, (&lower, &upper), &labels)?;
        // Sound, sparse intermediate bounds or not, and tighter than intervals: the logits and
        // margins of points of each box, half of them corners, lie within.
        let (il, iu) = graph.interval(&lower, &upper)?;
        let width = |l: &Tensor, u: &Tensor| -> crate::Result<f32> {
            Ok((u - l)?.sum_all()?.to_scalar::<f32>()?)
        };
        let per = 400;
        let (lo, hi) = (
            lower.flatten_all()?.to_vec1::<f32>()?,
            upper.flatten_all()?.to_vec1::<f32>()?,
        );
        let mut points = Vec::with_capacity(n * per * 72);
        for b in 0..n {
            for k in 0..per {
                for (l, u) in lo[b * 72..][..72].iter().zip(&hi[b * 72..][..72]) {
                    let t = rng.uniform_vec(1, 0.0, 1.0)[0];
                    let t = if k % 2 == 0 { t } else { t.round() };
                    points.push(l + t * (u - l));
                }
            }
        }
        let z = graph.forward(&Tensor::from_vec(points, (n * per, 2, 6, 6), &dev)?)?;
        let z = z.to_vec2::<f32>()?;
        for full in [false, true] {
            let (l, u) = graph
                .crown(&lower, &upper, Spec::Outputs, full)?
                .expect("relaxable");
            let (margins, _) =
                (graph.crown(&lower, &upper, Spec::Margins(&labels), full)?).expect("relaxable");
            assert!(
                width(&l, &u)? < 0.9 * width(&il, &iu)?,
                "CROWN is tighter than IBP"
            );
            let (l, u, margins) = (
                l.to_vec2::<f32>()?,
                u.to_vec2::<f32>()?,
                margins.to_vec2::<f32>()?,
            );
            for (p, z) in z.iter().enumerate() {
                let b = p / per;
                let y = labels[b] as usize;
                for j in 0..5 {
                    assert!(
                        l[b][j] <= z[j] + 1e-5 && z[j] <= u[b][j] + 1e-5,
                        "sample {b} logit {j}"
                    );
                    if j != y {
                        assert!(margins[b][j] <= z[y] - z[j] + 1e-5, "sample {b} margin {j}");
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn run_and_bound_concatenations_as_the_stacked_layers_they_are() -> crate::Result<()> {
        use crate::nn::Graph;
        let mut rng = Rng::seed_from_u64(71);
        let dev = Device::Cpu;
        let mut values = |n: usize, scale: f32| -> Vec<f32> {
            rng.normal_vec(n).iter().map(|v| v * scale).collect()
        };
        let (wa, ba, wb, bb) = (
            values(36, 0.4),
            values(2, 0.1),
            values(54, 0.4),
            values(3, 0.1),
        );
        let (wc, bc) = (values(2 * 5 * 9, 0.3), values(2, 0.1));
        let (la, lba, lb, lbb) = (
            values(96, 0.3),
            values(3, 0.1),
            values(128, 0.3),
            values(4, 0.1),
        );
        let (wh, bh) = (values(28, 0.4), values(4, 0.1));
        let t = |v: &[f32], shape: &[usize]| Tensor::from_vec(v.to_vec(), shape, &dev);
        let conv = |w: &[f32], b: &[f32], c_out: usize, c_in: usize| -> crate::Result<Layer> {
            Ok(Layer::Conv2d {
                weight: t(w, &[c_out, c_in, 3, 3])?,
                bias: t(b, &[c_out])?,
                stride: 1,
                padding: 1,
            })
        };
        let linear = |w: &[f32], b: &[f32], d: usize, d_in: usize| -> crate::Result<Layer> {
            Ok(Layer::Linear {
                weight: t(w, &[d, d_in])?,
                bias: t(b, &[d])?,
            })
        };
        let stack = |a: &[f32], b: &[f32]| [a, b].concat();
        // Two convolutions of the input concatenated (2 + 3 channels), and two linear layers of
        // the features concatenated (3 + 4)…
        let mut g = Graph::new(&[2, 4, 4]);
        let a = g.layer(0, conv(&wa, &ba, 2, 2)?)?;
        let b = g.layer(0, conv(&wb, &bb, 3, 2)?)?;
        let c = g.concat(a, b)?;
        let r = g.layer(c, Layer::Relu)?;
        let h = g.layer(r, conv(&wc, &bc, 2, 5)?)?;
        let h = g.layer(h, Layer::Relu)?;
        let f = g.layer(h, Layer::Flatten)?;
        let (u, v) = (
            g.layer(f, linear(&la, &lba, 3, 32)?)?,
            g.layer(f, linear(&lb, &lbb, 4, 32)?)?,
        );
        let c = g.concat(u, v)?;
        let r = g.layer(c, Layer::Relu)?;
        g.layer(r, linear(&wh, &bh, 4, 7)?)?;
        // …are one convolution of 5 channels and one linear layer of 7 features, stacked.
        let mut m = Graph::new(&[2, 4, 4]);
        let a = m.layer(0, conv(&stack(&wa, &wb), &stack(&ba, &bb), 5, 2)?)?;
        let r = m.layer(a, Layer::Relu)?;
        let h = m.layer(r, conv(&wc, &bc, 2, 5)?)?;
        let h = m.layer(h, Layer::Relu)?;
        let f = m.layer(h, Layer::Flatten)?;
        let u = m.layer(f, linear(&stack(&la, &lb), &stack(&lba, &lbb), 7, 32)?)?;
        let r = m.layer(u, Layer::Relu)?;
        m.layer(r, linear(&wh, &bh, 4, 7)?)?;
        assert!(m.to_sequential().is_some() && g.to_sequential().is_none());
        let graph = g.source().compile(None).expect("a known graph");
        let chain = m.source().compile(None).expect("a known chain");
        let close = |a: &Tensor, b: &Tensor, what: &str| -> crate::Result<()> {
            let (a, b) = (a.clamp(-1e6, 1e6)?, b.clamp(-1e6, 1e6)?);
            let scale = max_abs(&b)?.max(1.0);
            assert!(max_diff(&a, &b)? <= 1e-5 * scale, "{what}");
            Ok(())
        };
        let n = 6;
        let x = Tensor::from_vec(rng.uniform_vec(n * 32, 0.0, 1.0), (n, 2, 4, 4), &dev)?;
        // Logits (also through candle) and input gradients.
        let r = Tensor::from_vec(rng.normal_vec(n * 4), (n, 4), &dev)?;
        let (z, (), grad) = graph.forward_backward(&x, |_| Ok(((), r.clone())))?;
        let (zc, (), grad_c) = chain.forward_backward(&x, |_| Ok(((), r.clone())))?;
        close(&z, &zc, "logits")?;
        close(&g.forward(&x)?, &zc, "candle's logits")?;
        close(&grad, &grad_c, "input gradients")?;
        assert!(max_abs(&grad)? > 0.0);
        // Interval and CROWN bounds, every neuron by back-substitution.
        let labels: Vec<u32> = (0..n as u32).map(|i| i % 4).collect();
        let (lower, upper) = ((&x - 0.05)?, (&x + 0.05)?);
        let (l, u) = graph.interval(&lower, &upper)?;
        let (lc, uc) = chain.interval(&lower, &upper)?;
        close(&l, &lc, "interval lower")?;
        close(&u, &uc, "interval upper")?;
        assert_same_crown(&graph, &chain, (&lower, &upper), &labels)?;
        Ok(())
    }

    #[test]
    fn bound_intervals_as_the_tensor_version_of_ibp_does() -> crate::Result<()> {
        for (i, (net, normalize)) in networks()?.into_iter().enumerate() {
            let engine = Engine::compile(&net, normalize.as_ref()).expect("a known network");
            let net = match &normalize {
                Some(n) => net.with_normalize_first(n, &Device::Cpu)?,
                None => net,
            };
            let mut rng = Rng::seed_from_u64(20 + i as u64);
            let mut dims = vec![5];
            dims.extend_from_slice(net.input_shape());
            let n: usize = dims.iter().product();
            let x = Tensor::from_vec(rng.uniform_vec(n, 0.0, 1.0), dims.as_slice(), &Device::Cpu)?;
            let (lower, upper) = ((&x - 0.05)?, (&x + 0.05)?);
            let (mut l, mut u) = (lower.clone(), upper.clone());
            for layer in net.layers() {
                (l, u) = crate::certify::ibp::layer_interval(layer, &l, &u)?;
            }
            let (ours_l, ours_u) = engine.interval(&lower, &upper)?;
            let scale = max_abs(&u)?.max(1.0);
            assert!(max_diff(&ours_l, &l)? <= 1e-5 * scale, "network {i}: lower");
            assert!(max_diff(&ours_u, &u)? <= 1e-5 * scale, "network {i}: upper");
            // A box, and not a point: the radius went through |W|.
            assert!(max_diff(&ours_l, &ours_u)? > 1e-3, "network {i}: width");
        }
        Ok(())
    }

    #[test]
    fn reuse_a_workspace_without_leaking_one_pass_into_the_next() -> crate::Result<()> {
        let (net, normalize) = networks()?.remove(1);
        let engine = Engine::compile(&net, normalize.as_ref()).expect("a known network");
        let mut rng = Rng::seed_from_u64(4);
        let x = |rng: &mut Rng| {
            Tensor::from_vec(
                rng.uniform_vec(3 * 270, 0.0, 1.0),
                (3, 3, 10, 9),
                &Device::Cpu,
            )
        };
        let (a, b) = (x(&mut rng)?, x(&mut rng)?);
        let first = engine.forward(&a)?.flatten_all()?.to_vec1::<f32>()?;
        engine.forward(&b)?;
        assert_eq!(engine.forward(&a)?.flatten_all()?.to_vec1::<f32>()?, first);
        Ok(())
    }

    #[test]
    fn refuse_what_it_cannot_run() -> crate::Result<()> {
        let (net, _) = networks()?.remove(2);
        let engine = Engine::compile(&net, None).expect("a known network");
        assert!(engine.accepts(&Tensor::zeros((2, 12), DType::F32, &Device::Cpu)?));
        assert!(!engine.accepts(&Tensor::zeros((2, 12), DType::F64, &Device::Cpu)?));
        assert!(!engine.accepts(&Tensor::zeros((2, 11), DType::F32, &Device::Cpu)?));
        // Trainable weights change under the engine's copy: candle runs those.
        let varmap = VarMap::new();
        let trainable = Sequential::builder(&[12])
            .linear(3)
            .build(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
        assert!(Engine::compile(&trainable, None).is_none());
        Ok(())
    }
}
