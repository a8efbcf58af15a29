"""Peer reference for robust's certification (IBP and CROWN bounds), produced with auto_LiRPA.

What it produces
----------------
``tests/reference/bounds_lirpa.json``: for each MNIST model below, each eps and each bound
method, the certified lower / upper bounds of the 10 logits and the certified lower bounds of
the 9 margins ``z_y - z_j`` (j != y) of the first N test digits (default N = 50), and which
samples are certified. The Rust integration tests compare robust's own bounds against them.
``tests/reference/LIRPA.md`` gives the results and the exact auto_LiRPA semantics that a
re-implementation must reproduce to agree to 1e-4.

The bounds are computed by auto_LiRPA itself (the peer), not by a re-implementation:
``BoundedModule(model, torch.zeros(1, 1, 28, 28), bound_opts=..., device="cpu")`` and
``compute_bounds(x=(BoundedTensor(x, PerturbationLpNorm(norm=inf, x_L=x_L, x_U=x_U)),),
C=C, method=...)``. The input box is the L-inf eps-ball clipped to the input domain [0, 1]:
``x_L = max(x - eps, 0)``, ``x_U = min(x + eps, 1)``, passed explicitly. Per sample:

* logits: ``C=None``, lower and upper bounds of the 10 logits;
* margins: ``C`` of shape (1, 9, 10) with row k = e_y - e_j, where j runs over 0..9 skipping
  y in increasing order; lower bounds only (``bound_upper=False``). With CROWN the margin is
  propagated backward directly (not a difference of logit bounds); with IBP, auto_LiRPA
  multiplies C into the last Linear layer's weight before the interval step.

Methods (``method`` field / ``variant`` field):

* ``IBP`` / ``ibp``: ``method="IBP"``, interval bound propagation.
* ``CROWN`` / ``full``: ``method="CROWN"`` (backward mode, non-optimised slopes) with
  ``bound_opts={"sparse_intermediate_bounds": False, "sparse_conv_intermediate_bounds": False}``:
  every pre-activation (intermediate) bound is computed by CROWN for all neurons. This is the
  textbook CROWN and the one robust is meant to match.
* ``CROWN`` / ``auto_lirpa_default``: ``method="CROWN"`` with auto_LiRPA's default options.
  auto_LiRPA then computes an intermediate layer's bounds first by one IBP step from the
  previous layer's bounds and runs CROWN only for the neurons that this IBP step leaves
  unstable (unless more than 90 % are); the others keep the IBP bounds. It matters on
  ``mnist_cnn``, whose MaxPool relaxation uses the bound *values* of stable neurons, and it
  makes the result depend on the batch; this script therefore bounds one sample at a time.
  See LIRPA.md.

Precision: every case is computed twice, in float32 (auto_LiRPA's default, as robust runs)
and in float64 (model weights, box and all bound arithmetic; ``torch.set_default_dtype``
too, since auto_LiRPA creates some tensors with the default dtype). The float64 cases are
the exact values of the rules: auto_LiRPA in float64 agrees with the independent float64
re-implementation ``lirpa_check.py`` to ~1e-14. The float32 cases show auto_LiRPA's own
rounding noise, about 1e-5 relative except for CROWN on ``mnist_cnn``, where it reaches
~5e-4 relative. Compare a float32 re-implementation against the float64 cases.

Models (eval mode, CPU; weights loaded strictly by name, float32 files):

* ``mnist_mlp`` (``tests/fixtures/mnist_mlp.safetensors``, ``build_mlp`` in
  ``fgsm_pgd_torch.py``): eps 0.005, 0.02; IBP and both CROWN variants.
* ``mnist_cnn`` (``tests/fixtures/mnist_cnn.safetensors``, ``build_cnn``, with two
  MaxPool2d(2)): eps 0.005, 0.02; IBP and both CROWN variants (auto_LiRPA's BoundMaxPool
  relaxation, see LIRPA.md).
* ``mnist_ibp`` (``tests/fixtures/mnist_ibp.safetensors``, ``build_ibp`` below): eps 0.05,
  0.1; IBP and both CROWN variants. If the file does not exist the model is skipped with a
  message (``--ibp-weights PATH`` points at another file).

Inputs
------
* ``tests/reference/mnist_test.safetensors`` (``images`` uint8 (1000, 1, 28, 28) / 255,
  ``labels`` int64), read with the loader of ``fgsm_pgd_torch.py``.
* The weight files above, loaded with ``fgsm_pgd_torch.load_model`` (strict, float32).

How to run (from the repository root)
-------------------------------------
auto_LiRPA's PyPI release pins an old torch, so it is run from its GitHub source
(https://github.com/Verified-Intelligence/auto_LiRPA, commit a050a3d61f4c, "May 2026
release", version 0.7.1), unmodified, via PYTHONPATH::

    git clone https://github.com/Verified-Intelligence/auto_LiRPA /tmp/auto_lirpa_src \\
        && git -C /tmp/auto_lirpa_src checkout a050a3d61f4cb68b108fa7f07dcb3e4d7ef304df
    python -m venv /tmp/ref && /tmp/ref/bin/pip install torch safetensors numpy \\
        appdirs packaging graphviz
    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/auto_lirpa_src /tmp/ref/bin/python tests/reference/bounds_lirpa.py

Options (``--help``): ``--fixtures DIR``, ``--data PATH``, ``--out PATH``, ``--samples N``
(default 50), ``--models NAME[,NAME..]``, ``--dtypes float32,float64`` (default both),
``--ibp-weights PATH`` (default ``<fixtures>/mnist_ibp.safetensors``), ``--threads N``
(default 1), ``--merge JSON..`` (keep the cases of an earlier run, same versions and data, for
the (model, dtype) pairs not run now), e.g.
to add ``mnist_ibp`` to the committed file without recomputing the others::

    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/auto_lirpa_src /tmp/ref/bin/python \\
        tests/reference/bounds_lirpa.py --models mnist_ibp --merge tests/reference/bounds_lirpa.json

Versions used for the committed JSON (also recorded in it): Python 3.11.7, torch 2.15.0
(``2.15.0+cu132`` wheel, run on the CPU), auto_LiRPA 0.7.1 (commit above; the JSON also
records a SHA-256 over its ``auto_LiRPA/**/*.py`` files), safetensors 0.8.0, numpy 2.4.6.
Run with ``torch.use_deterministic_algorithms(True)`` and ``torch.set_num_threads(1)``.
No randomness is involved. Two runs give identical JSON except for the ``wall_s`` fields.
The whole run takes about 2.5 h on one busy CPU thread, nearly all of it ``mnist_cnn`` CROWN.

Output format
-------------
A JSON object with ``generator``, ``python``, ``torch``, ``auto_LiRPA``,
``auto_LiRPA_source_sha256``, ``safetensors``, ``numpy`` (versions), ``data``,
``data_sha256``, ``torch_threads``, ``margin_order`` (text), ``box`` (text) and ``cases``
(one case per line). Each case has:

* ``model``, ``weights_sha256``, ``method`` ("IBP" | "CROWN"), ``variant`` ("ibp" | "full" |
  "auto_lirpa_default"), ``bound_opts`` (the options passed to BoundedModule), ``dtype``
  ("float32" | "float64"), ``eps``,
  ``samples`` (N), ``wall_s`` (seconds for the case);
* ``labels`` and ``clean_pred`` (argmax of the model on the clean input), per sample;
* ``logit_lb``, ``logit_ub``: N x 10; ``margin_lb``: N x 9, row i holds the lower bounds of
  z_y - z_j for j = 0..9 with j != y, in increasing j. All rounded to 7 significant digits;
* ``certified``: per sample, clean prediction correct and every margin lower bound > 0;
  ``certified_acc``: their fraction; ``clean_acc``.
"""

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import numpy
import safetensors
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fgsm_pgd_torch import (  # noqa: E402  (reuse the loaders of the FGSM/PGD reference)
    DATA_REL, FIXTURES_REL, REPO_ROOT, build_cnn, build_mlp, load_data, load_model,
    sha256_file, write_json,
)

try:
    import auto_LiRPA
    from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm
except ImportError as e:  # checked in main(), so that lirpa_check.py can import build_ibp
    auto_LiRPA = None
    LIRPA_IMPORT_ERROR = e

GENERATOR = "tests/reference/bounds_lirpa.py"
OUT_REL = "tests/reference/bounds_lirpa.json"


def build_ibp() -> nn.Module:
    # keys: 0.* 2.* 5.* 7.*
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


# (name, builder, eps values)
MODELS = [
    ("mnist_mlp", build_mlp, [0.005, 0.02]),
    ("mnist_cnn", build_cnn, [0.005, 0.02]),
    ("mnist_ibp", build_ibp, [0.05, 0.1]),
]

DTYPES = {"float32": torch.float32, "float64": torch.float64}

# (method, variant, bound_opts)
METHODS = [
    ("IBP", "ibp", {}),
    ("CROWN", "full", {"sparse_intermediate_bounds": False,
                       "sparse_conv_intermediate_bounds": False}),
    ("CROWN", "auto_lirpa_default", {}),
]

MARGIN_ORDER = ("margin_lb[i][k] is a lower bound of z_y - z_j, y = labels[i], "
                "j = the k-th of 0..9 with y removed (increasing)")
BOX = ("x_L = max(x - eps, 0), x_U = min(x + eps, 1), x = images / 255 computed in float32 "
       "and then cast to the case's dtype, in which the box is formed")


def r7(t):
    """Nested lists rounded to 7 significant digits (plenty for a 1e-4 comparison)."""
    return [[float(f"{v:.7g}") for v in row] for row in t.tolist()]


def margin_C(y: int) -> torch.Tensor:
    C = torch.zeros(1, 9, 10)
    for k, j in enumerate(j for j in range(10) if j != y):
        C[0, k, y] = 1.0
        C[0, k, j] = -1.0
    return C


def lirpa_source_sha256() -> str:
    """SHA-256 over the auto_LiRPA package's .py files (path and content), to pin the source."""
    root = Path(auto_LiRPA.__file__).resolve().parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(str(p.relative_to(root)).encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
    return h.hexdigest()


def run_case(bmodel, model, x, y, eps, method):
    logit_lb, logit_ub, margin_lb, clean_pred = [], [], [], []
    with torch.no_grad():
        clean = model(x).argmax(dim=1)
    for i in range(x.shape[0]):
        xi = x[i:i + 1]
        yi = int(y[i])
        x_L = (xi - eps).clamp(min=0.0)
        x_U = (xi + eps).clamp(max=1.0)
        # One sample per call: auto_LiRPA's default (sparse) intermediate bounds merge the
        # unstable-neuron sets over the batch, so batching would change the bounds.
        bt = BoundedTensor(xi, PerturbationLpNorm(norm=float("inf"), x_L=x_L, x_U=x_U))
        lb, ub = bmodel.compute_bounds(x=(bt,), C=None, method=method)
        bt = BoundedTensor(xi, PerturbationLpNorm(norm=float("inf"), x_L=x_L, x_U=x_U))
        mlb, _ = bmodel.compute_bounds(x=(bt,), C=margin_C(yi), method=method,
                                       bound_upper=False)
        logit_lb.append(lb.detach().reshape(10))
        logit_ub.append(ub.detach().reshape(10))
        margin_lb.append(mlb.detach().reshape(9))
        clean_pred.append(int(clean[i]))
    margin_lb = torch.stack(margin_lb)
    correct = torch.tensor(clean_pred) == y
    certified = correct & (margin_lb > 0).all(dim=1)
    n = x.shape[0]
    return {
        "labels": y.tolist(),
        "clean_pred": clean_pred,
        "clean_acc": correct.sum().item() / n,
        "certified_acc": certified.sum().item() / n,
        "certified": certified.tolist(),
        "logit_lb": r7(torch.stack(logit_lb)),
        "logit_ub": r7(torch.stack(logit_ub)),
        "margin_lb": r7(margin_lb),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fixtures", type=Path, default=REPO_ROOT / FIXTURES_REL,
                   help="directory holding mnist_mlp / mnist_cnn / mnist_ibp .safetensors")
    p.add_argument("--data", type=Path, default=REPO_ROOT / DATA_REL,
                   help="MNIST test subset (safetensors: images uint8, labels int64)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / OUT_REL, help="output JSON path")
    p.add_argument("--samples", type=int, default=50, help="first N test digits per model")
    p.add_argument("--models", default=",".join(m for m, _, _ in MODELS),
                   help="comma-separated subset of: " + ", ".join(m for m, _, _ in MODELS))
    p.add_argument("--ibp-weights", type=Path, default=None,
                   help="weights of mnist_ibp (default <fixtures>/mnist_ibp.safetensors)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--dtypes", default="float32,float64",
                   help="comma-separated precisions to run (float32, float64): model, box and "
                        "bounds in that dtype (the images are /255 in float32 first)")
    p.add_argument("--merge", type=Path, nargs="*", default=[],
                   help="JSON files from earlier runs (same versions and data) whose cases are "
                        "kept for the models not run now")
    args = p.parse_args(argv)
    if auto_LiRPA is None:
        raise SystemExit(
            f"cannot import auto_LiRPA ({LIRPA_IMPORT_ERROR}). Put its GitHub source on "
            "PYTHONPATH, e.g. PYTHONPATH=/tmp/auto_lirpa_src (see the module docstring).")
    models = [m for m in args.models.split(",") if m]
    dtypes = [d for d in args.dtypes.split(",") if d]
    for d in dtypes:
        if d not in DTYPES:
            raise SystemExit(f"unknown dtype {d!r}; choose from {', '.join(DTYPES)}")
    for m in models:
        if m not in [n for n, _, _ in MODELS]:
            raise SystemExit(f"unknown model {m!r}")

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # nothing random is used; belt and braces

    t0 = time.perf_counter()
    x_all, y_all = load_data(args.data)
    n = args.samples
    if not 0 < n <= x_all.shape[0]:
        raise SystemExit(f"samples {n} out of range 1..{x_all.shape[0]}")
    x32, y = x_all[:n].contiguous(), y_all[:n].contiguous()

    print(f"python {platform.python_version()}, torch {torch.__version__}, "
          f"auto_LiRPA {auto_LiRPA.__version__} ({Path(auto_LiRPA.__file__).parent})", flush=True)
    print(f"{'model':<10} {'dtype':<7} {'method':<6} {'variant':<18} {'eps':>6} {'N':>4} {'clean':>6} "
          f"{'cert':>6} {'min_margin_lb':>13} {'time_s':>7}", flush=True)
    cases = []
    ran = []
    for dtype_name, name, build, eps_list in (
            (d, *m) for d in DTYPES for m in MODELS if d in dtypes):
        if name not in models:
            continue
        dtype = DTYPES[dtype_name]
        torch.set_default_dtype(dtype)  # auto_LiRPA creates some tensors with the default dtype
        x = x32.to(dtype)
        wpath = args.fixtures / f"{name}.safetensors"
        if name == "mnist_ibp" and args.ibp_weights is not None:
            wpath = args.ibp_weights
        if not wpath.exists():
            print(f"{name}: {wpath} does not exist; skipping this model", flush=True)
            continue
        ran.append((name, dtype_name))
        model = load_model(wpath, build).to(dtype)
        wsha = sha256_file(wpath)
        for method, variant, opts in METHODS:
            bmodel = BoundedModule(model, torch.zeros(1, 1, 28, 28, dtype=dtype),
                                   bound_opts=dict(opts),
                                   device="cpu")
            for eps in eps_list:
                tc = time.perf_counter()
                r = run_case(bmodel, model, x, y, eps, method)
                dt = time.perf_counter() - tc
                cases.append({
                    "model": name, "weights_sha256": wsha, "method": method,
                    "variant": variant, "bound_opts": opts, "dtype": dtype_name, "eps": eps,
                    "samples": n,
                    "wall_s": round(dt, 2), **r,
                })
                mm = min(min(row) for row in r["margin_lb"])
                print(f"{name:<10} {dtype_name:<7} {method:<6} {variant:<18} {eps:>6} {n:>4} "
                      f"{r['clean_acc']:>6.2f} {r['certified_acc']:>6.2f} {mm:>13.4f} "
                      f"{dt:>7.1f}", flush=True)

    header = {
        "generator": GENERATOR,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "auto_LiRPA": auto_LiRPA.__version__,
        "auto_LiRPA_source_sha256": lirpa_source_sha256(),
        "safetensors": safetensors.__version__,
        "numpy": numpy.__version__,
        "data": DATA_REL,
        "data_sha256": sha256_file(args.data),
        "torch_threads": args.threads,
        "margin_order": MARGIN_ORDER,
        "box": BOX,
    }
    for path in args.merge:
        other = json.loads(path.read_text())
        for k, v in header.items():
            if other.get(k) != v:
                raise SystemExit(f"--merge {path}: {k} is {other.get(k)!r}, this run has {v!r}")
        cases += [c for c in other["cases"] if (c["model"], c["dtype"]) not in ran]
    order = [m for m, _, _ in MODELS]
    variants = [v for _, v, _ in METHODS]
    cases.sort(key=lambda c: (order.index(c["model"]), list(DTYPES).index(c["dtype"]),
                              variants.index(c["variant"]), c["eps"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, header, cases)
    print(f"wrote {args.out} ({len(cases)} cases) in {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
