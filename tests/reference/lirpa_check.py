"""Independent float64 re-implementation of the IBP / CROWN rules written down in LIRPA.md.

What it does
------------
It recomputes, without auto_LiRPA, the bounds stored in ``tests/reference/bounds_lirpa.json``
for the first K samples of every float64 case (default K = 5; 2 for ``mnist_cnn`` CROWN,
which is slow on one CPU thread; ``--dtypes float32`` checks the float32 cases instead), and
prints the largest absolute and relative differences. It exists
to show that the rules in LIRPA.md are complete: if this ~300-line file, written from the
rules, agrees with auto_LiRPA's float64 cases to the 7 stored digits (auto_LiRPA in float64
agrees with it to ~1e-14 before rounding), so can robust. It is also a readable spec of
those rules (``ibp``, ``backward``, ``crown`` below). It is not needed by any test.

Everything is plain torch in float64 on the CPU, one sample at a time:

* IBP: center/radius form for Linear and Conv (``W @ mid +- |W| @ rad + b``), ReLU and
  MaxPool applied to both ends; with a specification C the last Linear's weight and bias are
  replaced by ``C @ W`` and ``C @ b`` first.
* CROWN: ``crown(..., variant="full")`` computes every pre-activation bound by backward
  propagation from that layer (identity specification), ``variant="auto_lirpa_default"`` uses
  auto_LiRPA's default sparse scheme (one IBP step first, CROWN only for the neurons it leaves
  unstable, unless more than 90 % are). Then the final bound is a backward pass from C.

How to run (from the repository root)
-------------------------------------
    OMP_NUM_THREADS=1 /tmp/ref/bin/python tests/reference/lirpa_check.py [--samples K]
        [--cnn-crown-samples K] [--json PATH] [--ibp-weights PATH] [--models a,b]
        [--dtypes float64,float32]

It needs torch, safetensors and numpy only (no auto_LiRPA). Exit status 1 if a difference
exceeds ``--tol`` (relative to max(1, |value|); default 1e-4).
"""

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fgsm_pgd_torch import (  # noqa: E402
    DATA_REL, FIXTURES_REL, REPO_ROOT, build_cnn, build_mlp, load_data, load_model,
)
from bounds_lirpa import build_ibp  # noqa: E402

BUILDERS = {"mnist_mlp": build_mlp, "mnist_cnn": build_cnn, "mnist_ibp": build_ibp}
DT = torch.float64


# ----------------------------------------------------------------------------------------------
# The network as a list of layers: ("flatten",), ("linear", W, b), ("conv", W, b, stride, pad),
# ("relu",), ("maxpool", k) (kernel = stride = k, no padding).
# ----------------------------------------------------------------------------------------------
def to_layers(model: nn.Sequential):
    layers = []
    for m in model:
        if isinstance(m, nn.Flatten):
            layers.append(("flatten",))
        elif isinstance(m, nn.Linear):
            layers.append(("linear", m.weight.detach().to(DT), m.bias.detach().to(DT)))
        elif isinstance(m, nn.Conv2d):
            layers.append(("conv", m.weight.detach().to(DT), m.bias.detach().to(DT),
                           m.stride[0], m.padding[0]))
        elif isinstance(m, nn.ReLU):
            layers.append(("relu",))
        elif isinstance(m, nn.MaxPool2d):
            assert m.kernel_size == m.stride and m.padding == 0
            layers.append(("maxpool", m.kernel_size))
        else:
            raise ValueError(m)
    return layers


# ----------------------------------------------------------------------------------------------
# IBP
# ----------------------------------------------------------------------------------------------
def ibp_layer(layer, l, u, C=None):
    kind = layer[0]
    if kind == "flatten":
        return l.flatten(1), u.flatten(1)
    if kind in ("relu", "maxpool"):
        f = F.relu if kind == "relu" else (lambda t: F.max_pool2d(t, layer[1], layer[1]))
        return f(l), f(u)
    mid, rad = (u + l) / 2, (u - l) / 2
    if kind == "linear":
        W, b = layer[1], layer[2]
        if C is not None:  # auto_LiRPA merges the specification into the last Linear
            W, b = C @ W, C @ b
        return mid @ W.T + b - rad @ W.abs().T, mid @ W.T + b + rad @ W.abs().T
    W, b, s, p = layer[1:]
    c = F.conv2d(mid, W, b, s, p)
    d = F.conv2d(rad, W.abs(), None, s, p)
    return c - d, c + d


def ibp(layers, l, u, C=None):
    for i, layer in enumerate(layers):
        l, u = ibp_layer(layer, l, u, C if i == len(layers) - 1 else None)
    return l, u


# ----------------------------------------------------------------------------------------------
# CROWN relaxations (auto_LiRPA, non-optimised)
# ----------------------------------------------------------------------------------------------
def relu_relaxation(l, u):
    """BoundRelu._relu_upper_bound + _relu_lower_bound_init ("adaptive")."""
    lb_r = l.clamp(max=0)
    ub_r = torch.maximum(u.clamp(min=0), lb_r + 1e-8)
    upper_d = ub_r / (ub_r - lb_r)
    upper_b = -lb_r * upper_d
    lower_d = (upper_d > 0.5).to(l.dtype)
    return upper_d, upper_b, lower_d


def maxpool_relaxation(l, u, k):
    """BoundMaxPool.bound_backward (non-optimised). l, u: (1, C, H, W) input bounds.

    Returns idx (flat H*W index of the window element with the largest lower bound, first in
    row-major order on ties), lin (1.0 where l[idx] >= max_{j != idx} u_j: then out = x[idx]),
    ub_const (max_j u_j, the constant upper bound used where lin == 0)."""
    lmax, idx = F.max_pool2d(l, k, k, return_indices=True)
    u_del = u.flatten(2).scatter(-1, idx.flatten(2), float("-inf")).view_as(u)
    umax_other = F.max_pool2d(u_del, k, k)
    lin = (lmax >= umax_other).to(l.dtype)
    ub_const = F.max_pool2d(u, k, k)
    return idx, lin, ub_const


def backward(layers, relax, A, x_L, x_U):
    """Lower and upper bounds of A @ f(x) over the box, f = layers (all affine/ReLU/MaxPool).

    A: (S, *out_shape). relax[i]: relaxation of layer i (ReLU / MaxPool), from its input bounds.
    Two independent passes: the lower pass bounds A @ f from below, the upper pass from above."""
    out = []
    for sign in (-1.0, 1.0):
        Ak = A.clone()
        bias = torch.zeros(A.shape[0], dtype=DT)
        for i in range(len(layers) - 1, -1, -1):
            layer, kind = layers[i], layers[i][0]
            shape_in = relax[i]["in_shape"]
            if kind == "flatten":
                Ak = Ak.reshape(Ak.shape[0], *shape_in)
            elif kind == "linear":
                W, b = layer[1], layer[2]
                bias = bias + Ak @ b
                Ak = Ak @ W
            elif kind == "conv":
                W, b, s, p = layer[1:]
                bias = bias + Ak.sum(dim=(2, 3)) @ b
                h_out = Ak.shape[2]
                op = shape_in[1] - ((h_out - 1) * s - 2 * p + W.shape[2])
                Ak = F.conv_transpose2d(Ak, W, None, s, p, output_padding=op)
            elif kind == "relu":
                upper_d, upper_b, lower_d = relax[i]["relu"]
                Ap, An = Ak.clamp(min=0), Ak.clamp(max=0)
                if sign < 0:  # lower bound: positive coefficients take the lower line
                    Ak = Ap * lower_d + An * upper_d
                    bias = bias + (An * upper_b).flatten(1).sum(1)
                else:
                    Ak = Ap * upper_d + An * lower_d
                    bias = bias + (Ap * upper_b).flatten(1).sum(1)
            elif kind == "maxpool":
                idx, lin, ub_const = relax[i]["maxpool"]
                Ap, An = Ak.clamp(min=0), Ak.clamp(max=0)
                # side that uses the lower relaxation (out >= x[idx]) / the upper one
                A_low, A_up = (Ap, An) if sign < 0 else (An, Ap)
                coef = A_low + A_up * lin  # goes to x[idx]
                bias = bias + (A_up * (1 - lin) * ub_const).flatten(1).sum(1)
                S, Cc, Hi, Wi = Ak.shape[0], *shape_in
                full = torch.zeros(S, Cc, Hi * Wi, dtype=DT)
                full.scatter_(-1, idx.flatten(2).expand(S, -1, -1), coef.flatten(2))
                Ak = full.view(S, Cc, Hi, Wi)
        Af = Ak.flatten(1)
        x0 = ((x_U + x_L) / 2).flatten()
        r = ((x_U - x_L) / 2).flatten()
        out.append(Af @ x0 + sign * (Af.abs() @ r) + bias)
    return out


def crown(layers, x_L, x_U, Cs, variant, chunk=512):
    """Cs: list of (S, n_out) specifications. Returns [(lower, upper) of C @ f(x) for C in Cs].

    The intermediate bounds do not depend on C, so they are computed once."""
    relax = {}
    shape = tuple(x_L.shape[1:])
    post = (x_L, x_U)  # interval of the output of the last ReLU (or the input)
    post_from = 0  # index of the first layer after that ReLU
    pre = None  # bounds of the output of the previous layer
    for i, layer in enumerate(layers):
        relax[i] = {"in_shape": shape}
        kind = layer[0]
        if kind == "relu":
            # bounds of the pre-activation = output of layers[:i]
            ref = ibp(layers[post_from:i], *post)
            dim = ref[0].numel()
            first_affine = all(layers[j][0] == "flatten" for j in range(i - 1))
            if first_affine:
                lo, hi = ref  # exact: CROWN from the box gives the same center/radius form
            elif variant == "full":
                lo, hi = crown_identity(layers[:i], relax, x_L, x_U, ref[0].shape, chunk)
            else:
                unstable = ((ref[0] < 0) & (ref[1] > 0)).flatten()
                n_unst = int(unstable.sum())
                if n_unst == 0:
                    lo, hi = ref
                elif n_unst <= 0.9 * dim:
                    rows = unstable.nonzero().flatten()
                    lo_u, hi_u = crown_identity(layers[:i], relax, x_L, x_U, ref[0].shape,
                                                chunk, rows=rows)
                    lo, hi = ref[0].flatten().clone(), ref[1].flatten().clone()
                    lo[rows], hi[rows] = lo_u, hi_u
                    lo, hi = lo.view_as(ref[0]), hi.view_as(ref[1])
                else:
                    lo, hi = crown_identity(layers[:i], relax, x_L, x_U, ref[0].shape, chunk)
            relax[i]["relu"] = relu_relaxation(lo, hi)
            pre = (lo, hi)
            post = (F.relu(lo), F.relu(hi))
            post_from = i + 1
        elif kind == "maxpool":
            # input = output of the ReLU just before it, bounds relu(l), relu(u)
            assert layers[i - 1][0] == "relu"
            relax[i]["maxpool"] = maxpool_relaxation(*post, layer[1])
        shape = out_shape(layer, shape)
    return [backward(layers, relax, C.to(DT), x_L, x_U) for C in Cs]


def out_shape(layer, shape):
    kind = layer[0]
    if kind == "flatten":
        n = 1
        for s in shape:
            n *= s
        return (n,)
    if kind == "linear":
        return (layer[1].shape[0],)
    if kind == "conv":
        W, _, s, p = layer[1:]
        h = (shape[1] + 2 * p - W.shape[2]) // s + 1
        return (W.shape[0], h, h)
    if kind == "maxpool":
        return (shape[0], shape[1] // layer[1], shape[2] // layer[1])
    return shape


def crown_identity(prefix, relax, x_L, x_U, shape, chunk, rows=None):
    """CROWN bounds of every (or the given flat) neuron of the output of prefix."""
    n = 1
    for s in shape[1:]:
        n *= s
    rows = torch.arange(n) if rows is None else rows
    lo, hi = [], []
    for s in range(0, len(rows), chunk):
        r = rows[s:s + chunk]
        A = torch.zeros(len(r), n, dtype=DT)
        A[torch.arange(len(r)), r] = 1.0
        a, b = backward(prefix, relax, A.view(len(r), *shape[1:]), x_L, x_U)
        lo.append(a)
        hi.append(b)
    lo, hi = torch.cat(lo), torch.cat(hi)
    if len(rows) == n:
        return lo.view(shape), hi.view(shape)
    return lo, hi


def margin_C(y):
    C = torch.zeros(9, 10, dtype=DT)
    for k, j in enumerate(j for j in range(10) if j != y):
        C[k, y], C[k, j] = 1.0, -1.0
    return C


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", type=Path, default=REPO_ROOT / "tests/reference/bounds_lirpa.json")
    p.add_argument("--fixtures", type=Path, default=REPO_ROOT / FIXTURES_REL)
    p.add_argument("--data", type=Path, default=REPO_ROOT / DATA_REL)
    p.add_argument("--ibp-weights", type=Path, default=None)
    p.add_argument("--samples", type=int, default=5)
    p.add_argument("--cnn-crown-samples", type=int, default=2)
    p.add_argument("--models", default="mnist_mlp,mnist_cnn,mnist_ibp")
    p.add_argument("--dtypes", default="float64",
                   help="which cases to check: float64 (the exact values), float32 or both")
    p.add_argument("--tol", type=float, default=1e-4)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    ref = json.loads(args.json.read_text())
    x_all, y_all = load_data(args.data)
    worst = 0.0
    models = {}
    for case in ref["cases"]:
        name = case["model"]
        if name not in args.models.split(",") or case["dtype"] not in args.dtypes.split(","):
            continue
        if name not in models:
            wpath = args.fixtures / f"{name}.safetensors"
            if name == "mnist_ibp" and args.ibp_weights is not None:
                wpath = args.ibp_weights
            models[name] = to_layers(load_model(wpath, BUILDERS[name]))
        layers = models[name]
        k = args.samples
        if name == "mnist_cnn" and case["method"] == "CROWN":
            k = args.cnn_crown_samples
        k = min(k, case["samples"])
        eps = case["eps"]
        d_abs = d_rel = 0.0
        for i in range(k):
            x = x_all[i:i + 1]
            y = int(y_all[i])
            # the box is formed in the case's dtype as in bounds_lirpa.py, then widened
            xd = x.to(torch.float64 if case["dtype"] == "float64" else torch.float32)
            x_L = (xd - eps).clamp(min=0.0).to(DT)
            x_U = (xd + eps).clamp(max=1.0).to(DT)
            if case["method"] == "IBP":
                ll, lu = ibp(layers, x_L, x_U)
                ml, _ = ibp(layers, x_L, x_U, C=margin_C(y))
                ll, lu, ml = ll[0], lu[0], ml[0]
            else:
                (ll, lu), (ml, _) = crown(layers, x_L, x_U,
                                          [torch.eye(10, dtype=DT), margin_C(y)], case["variant"])
            for mine, theirs in ((ll, case["logit_lb"][i]), (lu, case["logit_ub"][i]),
                                 (ml, case["margin_lb"][i])):
                t = torch.tensor(theirs, dtype=DT)
                d = (mine - t).abs()
                d_abs = max(d_abs, d.max().item())
                d_rel = max(d_rel, (d / t.abs().clamp(min=1.0)).max().item())
        worst = max(worst, d_rel)
        print(f"{name:<10} {case['dtype']:<7} {case['method']:<6} {case['variant']:<18} eps {eps:<6} "
              f"samples {k:>2}  max|diff| {d_abs:.2e}  max rel {d_rel:.2e}", flush=True)
    print(f"worst relative difference {worst:.2e} (tol {args.tol:g})")
    return 0 if worst <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
