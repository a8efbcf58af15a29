"""auto_LiRPA's IBP bounds on the residual network of `onnx_export.py` (`resnet_small`, the
PyTorch module itself, not its ONNX export), for `tests/onnx.rs`: the margin lower bounds
`z_y − z_j` over the L∞ ε-ball clipped to [0, 1], with the specification merged into the last
layer (`C`), on the 4 seeded images of `onnx_torch.json`, labelled by the network's own
predictions.

    PYTHONPATH=/tmp/auto_lirpa_src /tmp/ref/bin/python tests/reference/onnx_lirpa.py

Writes `tests/reference/onnx_lirpa.json`: per ε, per sample, the 9 margin lower bounds (in the
order of the classes `j ≠ y`).
"""

import json
import os
import sys

import torch
from auto_LiRPA import BoundedModule, BoundedTensor
from auto_LiRPA.perturbations import PerturbationLpNorm

sys.path.insert(0, os.path.dirname(__file__))
from bounds_lirpa import margin_C  # noqa: E402
from onnx_export import resnet_small  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def main():
    torch.set_num_threads(1)
    net = resnet_small()
    g = torch.Generator().manual_seed(7)
    x = torch.rand(4, 3, 32, 32, generator=g)
    with torch.no_grad():
        y = net(x).argmax(dim=1)
    bmodel = BoundedModule(net, torch.empty_like(x[:1]))
    record = {"torch": torch.__version__, "labels": y.tolist(), "cases": []}
    for eps in [1e-4, 5e-4]:
        margins = []
        for i in range(x.shape[0]):
            xi = x[i:i + 1]
            ptb = PerturbationLpNorm(norm=float("inf"), x_L=(xi - eps).clamp(min=0.0), x_U=(xi + eps).clamp(max=1.0))
            lb, _ = bmodel.compute_bounds(x=(BoundedTensor(xi, ptb),), C=margin_C(int(y[i])), method="IBP",
                                          bound_upper=False)
            margins.append([float(v) for v in lb.reshape(9)])
        record["cases"].append({"eps": eps, "margin_lb": margins})
        print(eps, [min(m) for m in margins])
    with open(os.path.join(ROOT, "tests", "reference", "onnx_lirpa.json"), "w") as f:
        json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
