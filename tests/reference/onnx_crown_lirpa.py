"""auto_LiRPA's CROWN bounds on the residual networks of `onnx_export.py` and the network with
concatenations of `onnx_concat_export.py`, read from their ONNX files, for `tests/onnx.rs`: the margin lower bounds `z_y − z_j` over the L∞ ε-ball clipped to
[0, 1], the specification `C` propagated backward as CROWN does.

    PYTHONPATH=/tmp/auto_lirpa_src /tmp/ref/bin/python tests/reference/onnx_crown_lirpa.py [NAME…]

(with names, only those networks are recomputed into the existing file).

The networks are the ONNX files themselves (`OnnxNet` below runs their nodes as a PyTorch
module), so the bounds are of exactly the weights robust reads, whose batch norms the exporter
folded into the convolutions; auto_LiRPA traces that module as it would any other.

- `resnet_small` (random weights, 3×32×32): the 4 seeded images of `onnx_torch.json`,
  labelled by the network's own predictions (as `onnx_lirpa.py`), at ε 1e-4 and 5e-4.
- `mnist_resnet` (trained): the first 8 digits of `mnist_test.safetensors` with their labels,
  at ε 2e-3 and 5e-3.
- `concat_small` (`onnx_concat_export.py`: concatenations of images and of vectors, a batch
  norm after one): its 4 seeded 3×16×16 inputs, labelled by its predictions, at ε 0.02 and
  0.1.

CROWN is auto_LiRPA's `method="CROWN"` with `sparse_intermediate_bounds` off: every
pre-activation bound by back-substitution (`bounds_lirpa.py`'s "full" variant; on networks of
ReLUs without max-pooling the default sparse variant gives the same bounds, since the
relaxation of a stable neuron does not depend on its bounds). Each case is computed in float32
(as robust runs) and in float64 (the exact value of the rules, which a float32
re-implementation is compared against).

Writes `tests/reference/onnx_crown_lirpa.json`: per network its labels, and per ε the 9 margin
lower bounds of each sample (classes `j ≠ y` in order) in both precisions.
"""

import json
import os
import sys

import onnx
import torch
import torch.nn.functional as F
from auto_LiRPA import BoundedModule, BoundedTensor
from auto_LiRPA.perturbations import PerturbationLpNorm
from onnx import numpy_helper
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(__file__))
from bounds_lirpa import margin_C  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


class OnnxNet(torch.nn.Module):
    """The nodes of an ONNX export (the operators these files use: Conv, Relu, Add, Concat,
    BatchNormalization, GlobalAveragePool, Flatten, Gemm) run in file order, with the
    initializers as parameters."""

    def __init__(self, path):
        super().__init__()
        model = onnx.load(path)
        graph = model.graph
        self.names = [t.name for t in graph.initializer]
        self.weights = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.from_numpy(numpy_helper.to_array(t).copy()), requires_grad=False)
             for t in graph.initializer])
        self.nodes = []
        for n in graph.node:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            if n.op_type == "BatchNormalization":
                # Inference: (x − mean)/√(var + ε)·γ + β = x·s + t per channel, s and t made
                # here (auto_LiRPA then sees a product and a sum with constants).
                gamma, beta, mean, var = (self.weights[self.names.index(i)].data for i in n.input[1:5])
                scale = gamma / torch.sqrt(var + attrs.get("epsilon", 1e-5))
                for suffix, value in [("scale", scale), ("shift", beta - mean * scale)]:
                    self.names.append(f"{n.output[0]}.{suffix}")
                    self.weights.append(torch.nn.Parameter(value.view(1, -1, 1, 1), requires_grad=False))
                self.nodes.append(("ChannelAffine", [n.input[0], f"{n.output[0]}.scale", f"{n.output[0]}.shift"],
                                   list(n.output), {}))
            else:
                self.nodes.append((n.op_type, list(n.input), list(n.output), attrs))
        self.input = graph.input[0].name
        self.output = graph.output[0].name

    def forward(self, x):
        env = {self.input: x}

        def value(name):
            return env[name] if name in env else self.weights[self.names.index(name)]

        for op, inputs, outputs, attrs in self.nodes:
            args = [value(i) for i in inputs]
            if op == "Conv":
                pads = attrs.get("pads", [0, 0, 0, 0])
                assert pads[:2] == pads[2:], "symmetric padding"
                y = F.conv2d(args[0], args[1], args[2] if len(args) > 2 else None,
                             stride=attrs.get("strides", [1, 1]), padding=pads[:2], groups=attrs.get("group", 1))
            elif op == "Relu":
                y = F.relu(args[0])
            elif op == "Add":
                y = args[0] + args[1]
            elif op == "GlobalAveragePool":
                y = F.adaptive_avg_pool2d(args[0], 1)
            elif op == "Flatten":
                y = torch.flatten(args[0], attrs.get("axis", 1))
            elif op == "Concat":
                y = torch.cat(args, dim=attrs["axis"])
            elif op == "ChannelAffine":
                y = args[0] * args[1] + args[2]
            elif op == "Gemm":
                assert attrs.get("transB", 0) == 1 and attrs.get("alpha", 1.0) == 1.0
                y = F.linear(args[0], args[1], args[2])
            else:
                raise ValueError(f"operator {op} is not read here")
            env[outputs[0]] = y
        return env[self.output]


def crown_margins(net, x, labels, eps, dtype, conv_mode):
    torch.set_default_dtype(dtype)
    net = net.to(dtype)
    x = x.to(dtype)
    bmodel = BoundedModule(net, torch.empty_like(x[:1]), device="cpu",
                           bound_opts={"sparse_intermediate_bounds": False,
                                       "sparse_conv_intermediate_bounds": False,
                                       "conv_mode": conv_mode})
    margins = []
    for i in range(x.shape[0]):
        xi = x[i:i + 1]
        ptb = PerturbationLpNorm(norm=float("inf"), x_L=(xi - eps).clamp(min=0.0), x_U=(xi + eps).clamp(max=1.0))
        lb, _ = bmodel.compute_bounds(x=(BoundedTensor(xi, ptb),), C=margin_C(int(labels[i])).to(dtype),
                                      method="CROWN", bound_upper=False)
        margins.append([float(v) for v in lb.reshape(9)])
    torch.set_default_dtype(torch.float32)
    return margins


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(7)
    cifar = torch.rand(4, 3, 32, 32, generator=g)
    digits = load_file(os.path.join(ROOT, "tests", "reference", "mnist_test.safetensors"))
    mnist = digits["images"][:8].float().div(255.0)
    concat = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(37))
    out = os.path.join(ROOT, "tests", "reference", "onnx_crown_lirpa.json")
    # Networks named on the command line are recomputed into the existing file; none: all.
    only = sys.argv[1:]
    record = json.load(open(out)) if only else {"torch": torch.__version__, "networks": {}}
    for name, x, labels, radii in [
        ("resnet_small", cifar, None, [1e-4, 5e-4]),
        ("mnist_resnet", mnist, digits["labels"][:8].long(), [2e-3, 5e-3]),
        ("concat_small", concat, None, [0.02, 0.1]),
    ]:
        if only and name not in only:
            continue
        net = OnnxNet(os.path.join(ROOT, "tests", "fixtures", "onnx", f"{name}.onnx")).eval()
        with torch.no_grad():
            predicted = net(x).argmax(dim=1)
        labels = predicted if labels is None else labels
        cases = []
        for eps in radii:
            # auto_LiRPA's patches (its default for convolutions) fail on the batch norm's
            # constants after a concatenation (a shape error in `patches.matmul`): there the
            # coefficients stay matrices, as they are in robust.
            mode = "matrix" if name == "concat_small" else "patches"
            f32 = crown_margins(net, x, labels, eps, torch.float32, mode)
            f64 = crown_margins(net, x, labels, eps, torch.float64, mode)
            cases.append({"eps": eps, "margin_lb_f32": f32, "margin_lb_f64": f64})
            gap = max(abs(a - b) for r32, r64 in zip(f32, f64) for a, b in zip(r32, r64))
            print(name, eps, "min margins", [round(min(m), 4) for m in f64], f"f32 within {gap:.1e} of f64")
        record["networks"][name] = {"labels": labels.tolist(), "predicted": predicted.tolist(), "cases": cases}
    with open(out, "w") as f:
        json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
