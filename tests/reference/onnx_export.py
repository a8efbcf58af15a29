"""Exports networks to ONNX with PyTorch, as a user would, and records PyTorch's logits and
input gradients on them, for `tests/onnx.rs` (`Graph::from_onnx`).

The networks:
- `mnist_mlp`, `mnist_cnn`, `mnist_ibp`: the shipped fixtures (`tests/fixtures/*.safetensors`),
  loaded into the same PyTorch modules as `bench_torch.py`.
- `mnist_mlp_normalized`: the MLP behind `(x - 0.1307) / 0.3081`, exported as `Sub` and `Div`.
- `mnist_resnet`: the same network on MNIST (`SmallResNet(channels=1)`), trained here on the
  shipped sample's 4,000 training digits (12 epochs of Adam, seeded).
- `resnet_small`: a CIFAR-shaped residual network with batch norm (two basic blocks, one of them
  strided with a 1×1 projection; global average pooling), seeded random weights and batch-norm
  statistics, in eval mode.

Writes `tests/fixtures/onnx/<name>.onnx` (opset 13; the IBP-trained CNN and the
residual network also at opset 17, and the residual network once more with its
`BatchNormalization` nodes kept, `resnet_small_batchnorm`) and
`tests/reference/onnx_torch.json`: per network, its inputs (the first 8 digits of
`tests/reference/mnist_test.safetensors` scaled to [0, 1], or 4 seeded 3×32×32 images), labels, PyTorch's logits
and the input gradient of the mean cross-entropy.

    python -m venv /tmp/ref && /tmp/ref/bin/pip install torch safetensors numpy onnx onnxscript
    /tmp/ref/bin/python tests/reference/onnx_export.py
"""

import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(__file__))
from bench_torch import BasicBlock, cnn, mlp, small_cnn  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "onnx")


class Normalized(nn.Module):
    def __init__(self, inner, mean, std):
        super().__init__()
        self.inner, self.mean, self.std = inner, mean, std

    def forward(self, x):
        return self.inner((x - self.mean) / self.std)


class SmallResNet(nn.Module):
    """A small residual network: a 3×3 stem with batch norm, a basic block at 16 channels and a
    strided one at 32, global average pooling, a linear layer. On 3×32×32 inputs (`resnet_small`)
    or, with `channels = 1`, on MNIST (`mnist_resnet`, 28 → 14 pixels in the strided block)."""

    def __init__(self, channels=3):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = BasicBlock(16, 16, 1)
        self.layer2 = BasicBlock(16, 32, 2)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def mnist_training_digits():
    """The 4,000 digits of the shipped sample (`robust-runtime/data/mnist-5k`) that are not in
    its test split (`mnist_test.safetensors`): the training split `Dataset::mnist_sample()`
    makes, in file order."""
    import gzip

    import numpy as np

    data = os.path.join(ROOT, "robust-runtime", "data", "mnist-5k")
    with gzip.open(os.path.join(data, "images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(os.path.join(data, "labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    test = load_file(os.path.join(ROOT, "tests", "reference", "mnist_test.safetensors"))["images"].numpy()
    held_out = {t.tobytes() for t in test}
    keep = [i for i in range(len(images)) if images[i].tobytes() not in held_out]
    x = torch.from_numpy(images[keep].astype(np.float32) / 255.0)
    y = torch.from_numpy(labels[keep].astype(np.int64))
    return x, y


def mnist_resnet():
    """`SmallResNet(channels=1)` trained here: Adam (lr 1e-3), batch 64, 12 epochs on the
    training digits, seeded; then eval mode."""
    torch.manual_seed(23)
    net = SmallResNet(channels=1)
    x, y = mnist_training_digits()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(23)
    net.train()
    for _ in range(12):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            batch = order[i:i + 64]
            opt.zero_grad()
            F.cross_entropy(net(x[batch]), y[batch]).backward()
            opt.step()
    return net.eval(), len(x)


def loaded(module, name):
    module.load_state_dict(load_file(os.path.join(ROOT, "tests", "fixtures", f"{name}.safetensors")))
    return module.eval()


def resnet_small():
    torch.manual_seed(19)
    net = SmallResNet()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            # Statistics away from (0, 1), so that folding them into the convolutions is tested.
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def export(net, name, example, opset, keep_batch_norm=False):
    path = os.path.join(OUT, f"{name}.onnx")
    kwargs = dict(input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "batch"}},
                  opset_version=opset)
    if keep_batch_norm:
        # The exporter folds batch norm into the convolutions in eval mode; PRESERVE keeps the
        # `BatchNormalization` nodes (the module is in eval mode, so they use the running
        # statistics), for the importer's own folding.
        kwargs.update(training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    try:
        torch.onnx.export(net, (example,), path, dynamo=False, **kwargs)
    except TypeError:  # a torch without the `dynamo` switch
        torch.onnx.export(net, (example,), path, **kwargs)
    return path


def main():
    os.makedirs(OUT, exist_ok=True)
    digits = load_file(os.path.join(ROOT, "tests", "reference", "mnist_test.safetensors"))
    x_mnist = digits["images"][:8].float().div(255.0)
    y_mnist = digits["labels"][:8].long()
    g = torch.Generator().manual_seed(7)
    x_cifar = torch.rand(4, 3, 32, 32, generator=g)
    y_cifar = torch.tensor([3, 1, 4, 1])
    nets = [
        ("mnist_mlp", loaded(mlp(), "mnist_mlp"), x_mnist, y_mnist, [13]),
        ("mnist_cnn", loaded(cnn(), "mnist_cnn"), x_mnist, y_mnist, [13]),
        ("mnist_ibp", loaded(small_cnn(), "mnist_ibp"), x_mnist, y_mnist, [13, 17]),
        ("mnist_mlp_normalized", Normalized(loaded(mlp(), "mnist_mlp"), 0.1307, 0.3081).eval(), x_mnist, y_mnist,
         [13]),
        ("resnet_small", resnet_small(), x_cifar, y_cifar, [13, 17]),
    ]
    trained, n_train = mnist_resnet()
    with torch.no_grad():
        test = load_file(os.path.join(ROOT, "tests", "reference", "mnist_test.safetensors"))
        accuracy = (trained(test["images"].float() / 255.0).argmax(1) == test["labels"]).float().mean().item()
    print(f"mnist_resnet: trained on {n_train} digits, test accuracy {accuracy:.4f}")
    nets.append(("mnist_resnet", trained, x_mnist, y_mnist, [13]))
    export(nets[4][1], "resnet_small_batchnorm", x_cifar[:1], 13, keep_batch_norm=True)
    record = {"torch": torch.__version__, "mnist_resnet_test_accuracy": accuracy, "models": {}}
    for name, net, x, y, opsets in nets:
        files = []
        for opset in opsets:
            stem = name if opset == opsets[0] else f"{name}_opset{opset}"
            export(net, stem, x[:1], opset)
            files.append(f"tests/fixtures/onnx/{stem}.onnx")
        xv = x.clone().requires_grad_(True)
        logits = net(xv)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, y), xv)
        record["models"][name] = {
            "files": files,
            "shape": list(x.shape),
            "x": x.flatten().tolist(),
            "y": y.tolist(),
            "logits": logits.detach().flatten().tolist(),
            "grad": grad.flatten().tolist(),
        }
        print(name, files, logits.shape)
    with open(os.path.join(ROOT, "tests", "reference", "onnx_torch.json"), "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    main()
