"""Exports a network with concatenations to ONNX with PyTorch (`torch.cat` becomes `Concat`), and
records PyTorch's logits and input gradients on it, for `tests/onnx.rs`.

`concat_small` (seeded random weights, eval mode, on 3×16×16 inputs): an Inception-style block
(a 3×3 and a 1×1 convolution of the input, concatenated along the channels, then batch norm and
ReLU), a strided 3×3 convolution with ReLU, global average pooling, and two linear layers of the
pooled features concatenated before the last layer, i.e. concatenations of images and of
vectors, the first read by a later layer through a batch norm the exporter folds.

Writes `tests/fixtures/onnx/concat_small.onnx` (opset 13) and `tests/reference/onnx_concat_torch.json`:
the 4 seeded inputs, PyTorch's logits, the labels it predicts, and the input gradient of the
mean cross-entropy against those labels.

    /tmp/ref/bin/python tests/reference/onnx_concat_export.py
"""

import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from onnx_export import OUT, ROOT, export  # noqa: E402


class ConcatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.wide = nn.Conv2d(3, 6, 3, 1, 1)
        self.narrow = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(10)
        self.down = nn.Conv2d(10, 12, 3, 2, 1)
        self.a = nn.Linear(12, 8)
        self.b = nn.Linear(12, 5)
        self.fc = nn.Linear(13, 10)

    def forward(self, x):
        x = F.relu(self.bn(torch.cat([self.wide(x), self.narrow(x)], dim=1)))
        x = F.relu(self.down(x))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        x = F.relu(torch.cat([self.a(x), self.b(x)], dim=1))
        return self.fc(x)


def concat_small():
    torch.manual_seed(31)
    net = ConcatNet()
    net.bn.weight.data.uniform_(0.5, 1.5)
    net.bn.bias.data.uniform_(-0.1, 0.1)
    net.bn.running_mean.uniform_(-0.1, 0.1)
    net.bn.running_var.uniform_(0.5, 1.5)
    return net.eval()


def main():
    os.makedirs(OUT, exist_ok=True)
    net = concat_small()
    g = torch.Generator().manual_seed(37)
    x = torch.rand(4, 3, 16, 16, generator=g)
    export(net, "concat_small", x[:1], 13)
    xv = x.clone().requires_grad_(True)
    logits = net(xv)
    y = logits.argmax(dim=1)
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, y), xv)
    record = {
        "torch": torch.__version__,
        "shape": list(x.shape),
        "x": x.flatten().tolist(),
        "y": y.tolist(),
        "logits": logits.detach().flatten().tolist(),
        "grad": grad.flatten().tolist(),
    }
    with open(os.path.join(ROOT, "tests", "reference", "onnx_concat_torch.json"), "w") as f:
        json.dump(record, f)
    print("concat_small", y.tolist())


if __name__ == "__main__":
    main()
