"""Peer reference for robust's APGD / APGD-T / Square / CW / DeepFool, produced with torchattacks.

What it produces
----------------
``tests/reference/attacks_torch.json``: for each committed MNIST model in ``tests/fixtures/``
(``mnist_mlp.safetensors``, ``mnist_cnn.safetensors``) and each attack below, the clean and
robust accuracy, the per-sample clean and adversarial predictions and the per-sample L2 and
L-inf norms of ``adv - x``. The Rust integration tests compare robust's own attacks against
these numbers. See ``tests/reference/ATTACKS.md`` for the results and for the torchattacks
semantics a Rust implementation must reproduce to agree.

The attacks are run by torchattacks itself (the peer), not by a re-implementation. All are
untargeted (torchattacks' "default" mode), inputs in [0, 1], batch size 250, CPU, float32:

* ``APGD(model, norm='Linf', eps, steps=100, n_restarts=1, seed=0, loss='ce')``
* ``APGD(model, norm='Linf', eps, steps=100, n_restarts=1, seed=0, loss='dlr')``
* ``APGDT(model, norm='Linf', eps, steps=100, n_restarts=1, seed=0, n_classes=10)``
* ``Square(model, norm='Linf', eps, n_queries=1000, n_restarts=1, p_init=0.8, loss='margin', seed=0)``
* ``CW(model, c=1, kappa=0, steps=100, lr=0.01)``        (minimal perturbation, L2)
* ``DeepFool(model, steps=50, overshoot=0.02)``           (minimal perturbation, L2)

eps is 0.05 on the MLP and 0.1 on the CNN. The remaining constructor arguments take the
installed torchattacks' defaults; every case records the complete argument list (explicit and
default values, read from the constructor's signature) under ``args``. By default the MLP is
attacked on the first 1000 test digits and the CNN on the first 200.

The only thing added around torchattacks: for Square, the instance's ``attack_single_run`` is
wrapped (not changed) to record the per-sample query counts it returns and ``perturb`` drops.

Inputs
------
Same as ``fgsm_pgd_torch.py`` (its loaders are imported from it): ``tests/reference/
mnist_test.safetensors`` (``images`` uint8 (1000, 1, 28, 28) / 255, ``labels`` int64) and the
two weight files loaded strictly into the ``nn.Sequential`` models defined there.

How to run (from the repository root)
-------------------------------------
    python -m venv /tmp/ref && /tmp/ref/bin/pip install torch torchattacks safetensors numpy \
        && /tmp/ref/bin/python tests/reference/attacks_torch.py

Options (``--help``): ``--fixtures DIR``, ``--data PATH``, ``--out PATH``, ``--mlp-samples N``,
``--cnn-samples N``, ``--batch-size N``, ``--only NAME[,NAME..]`` and ``--models NAME[,NAME..]``
(run a subset of the attacks / models), ``--merge JSON..`` (merge the cases of earlier runs,
with identical versions and data, into the output; ``--only ''`` runs nothing and just merges).

Versions used for the committed JSON (also recorded in it): Python 3.11.7, torch 2.15.0
(``2.15.0+cu132`` wheel, run on the CPU), torchattacks 3.5.1, safetensors 0.8.0, numpy 2.4.6.
Run with ``torch.use_deterministic_algorithms(True)``, ``torch.set_num_threads(1)`` (``--threads``) and
``torch.manual_seed(0)`` before every case (APGD, APGD-T and Square also reseed themselves with
``seed`` at the start of every batch).

Output format
-------------
A JSON object with ``generator``, ``python``, ``torch``, ``torchattacks``, ``safetensors``,
``numpy`` (versions), ``data``, ``data_sha256``, ``batch_size``, ``l2_budgets`` and ``cases``
(one case per line). Each case has:

* ``model``, ``weights_sha256``, ``attack`` (apgd-ce | apgd-dlr | apgdt | square | cw |
  deepfool), ``torchattacks_class``, ``args`` (all constructor arguments), ``kind``
  ("linf-bounded" or "l2-minimal"), ``eps`` (null for CW / DeepFool), ``samples``,
  ``batch_size``, ``wall_s`` (seconds for the case, attack plus predictions);
* ``clean_acc`` (fraction correct on clean inputs), ``robust_acc`` (fraction correct on clean
  inputs AND under attack; for CW / DeepFool this is at unbounded L2);
* ``clean_pred``, ``adv_pred`` (per-sample argmax), ``adv_margin`` (per-sample logit margin
  ``z_y - max_{j != y} z_j`` on the adversarial input, negative = misclassified; flags samples
  sitting on the decision boundary, where any float difference can flip ``adv_pred``),
  ``l2``, ``linf`` (per-sample norms of ``adv - x`` in float64); all rounded to 6 decimals;
* ``mean_l2_all`` / ``mean_linf_all`` (mean over all samples), ``mean_l2`` / ``mean_linf``
  (mean over the samples with ``adv_pred != label``, i.e. all misclassified adversarial
  examples, as torchattacks' own ``Attack.save`` reports it), ``mean_l2_flipped`` (mean over
  samples correct on clean inputs and wrong under attack; null if none);
* CW / DeepFool only: ``robust_acc_at_l2``: {"0.5": .., "1.0": .., "1.5": .., "2.0": ..}, where a
  sample is robust at budget b iff it is correct on clean inputs and (``adv_pred == label`` or
  ``l2 > b``);
* Square only: ``queries`` (per sample, as counted by torchattacks: 1 for the initial stripes +
  1 per iteration the sample was still unbroken; 0 for samples misclassified on clean inputs,
  which torchattacks does not attack), and ``mean_queries_flipped``.
"""

import argparse
import inspect
import json
import platform
import sys
import time
from pathlib import Path

import numpy
import safetensors
import torch
import torchattacks

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fgsm_pgd_torch import (  # noqa: E402  (no side effects on import)
    DATA_REL, FIXTURES_REL, MODELS, REPO_ROOT, load_data, load_model, predict, sha256_file,
    write_json,
)

GENERATOR = "tests/reference/attacks_torch.py"
OUT_REL = "tests/reference/attacks_torch.json"
EPS = {"mnist_mlp": 0.05, "mnist_cnn": 0.1}
L2_BUDGETS = [0.5, 1.0, 1.5, 2.0]

# name -> (torchattacks class, kind, explicit kwargs; "eps" is filled per model)
ATTACKS = {
    "apgd-ce": (torchattacks.APGD, "linf-bounded",
                dict(norm="Linf", steps=100, n_restarts=1, loss="ce", seed=0)),
    "apgd-dlr": (torchattacks.APGD, "linf-bounded",
                 dict(norm="Linf", steps=100, n_restarts=1, loss="dlr", seed=0)),
    "apgdt": (torchattacks.APGDT, "linf-bounded",
              dict(norm="Linf", steps=100, n_restarts=1, n_classes=10, seed=0)),
    "square": (torchattacks.Square, "linf-bounded",
               dict(norm="Linf", n_queries=1000, n_restarts=1, p_init=0.8, loss="margin", seed=0)),
    "cw": (torchattacks.CW, "l2-minimal", dict(c=1, kappa=0, steps=100, lr=0.01)),
    "deepfool": (torchattacks.DeepFool, "l2-minimal", dict(steps=50, overshoot=0.02)),
}


def full_args(cls, kwargs):
    """All constructor arguments (explicit + the installed version's defaults), minus model."""
    sig = inspect.signature(cls.__init__)
    bound = sig.bind_partial(None, None, **kwargs)
    bound.apply_defaults()
    return {k: v for k, v in bound.arguments.items() if k not in ("self", "model")}


def r6(t):
    return [round(v, 6) for v in t.tolist()]


def mean_or_none(t):
    return t.mean().item() if t.numel() else None


@torch.no_grad()
def pred_and_margin(model, x, y):
    """argmax and the margin z_y - max_{j != y} z_j (negative = misclassified), batched."""
    z = model(x)
    zy = z.gather(1, y[:, None]).squeeze(1)
    others = z.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return z.argmax(dim=1), (zy - others).double()


def run_case(model, x, y, batch_size, name, eps):
    cls, kind, kwargs = ATTACKS[name]
    kwargs = dict(kwargs)
    if kind == "linf-bounded":
        kwargs["eps"] = eps
    atk = cls(model, **kwargs)

    square_queries = []
    if name == "square":
        inner = atk.attack_single_run

        def recording(xs, ys):
            nq, adv = inner(xs, ys)
            square_queries.append(nq.detach().clone())
            return nq, adv
        atk.attack_single_run = recording

    clean_pred, adv_pred, adv_margin, linf, l2, queries = [], [], [], [], [], []
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        square_queries.clear()
        adv = atk(xb, yb)
        delta = (adv - xb).flatten(1).double()
        cp = predict(model, xb)
        clean_pred.append(cp)
        ap, am = pred_and_margin(model, adv, yb)
        adv_pred.append(ap)
        adv_margin.append(am)
        linf.append(delta.abs().amax(dim=1))
        l2.append(delta.norm(p=2, dim=1))
        if name == "square":
            # torchattacks attacks only the clean-correct samples, in index order
            q = torch.zeros(xb.shape[0], dtype=torch.float64)
            idx = (cp == yb).nonzero().flatten()
            if idx.numel():
                assert len(square_queries) == 1 and square_queries[0].numel() == idx.numel()
                q[idx] = square_queries[0].double()
            queries.append(q)
    clean_pred, adv_pred = torch.cat(clean_pred), torch.cat(adv_pred)
    linf, l2 = torch.cat(linf), torch.cat(l2)
    n = x.shape[0]
    clean_ok = clean_pred == y
    adv_ok = adv_pred == y
    wrong = ~adv_ok
    flipped = clean_ok & wrong
    out = {
        "kind": kind,
        "eps": eps if kind == "linf-bounded" else None,
        "clean_acc": clean_ok.sum().item() / n,
        "robust_acc": (clean_ok & adv_ok).sum().item() / n,
    }
    if kind == "l2-minimal":
        out["robust_acc_at_l2"] = {
            str(b): (clean_ok & (adv_ok | (l2 > b))).sum().item() / n for b in L2_BUDGETS}
    out.update({
        "mean_l2_all": l2.mean().item(),
        "mean_linf_all": linf.mean().item(),
        "mean_l2": mean_or_none(l2[wrong]),
        "mean_linf": mean_or_none(linf[wrong]),
        "mean_l2_flipped": mean_or_none(l2[flipped]),
    })
    if name == "square":
        q = torch.cat(queries)
        out["mean_queries_flipped"] = mean_or_none(q[flipped])
    out.update({
        "clean_pred": clean_pred.tolist(),
        "adv_pred": adv_pred.tolist(),
        "adv_margin": r6(torch.cat(adv_margin)),
        "l2": r6(l2),
        "linf": r6(linf),
    })
    if name == "square":
        out["queries"] = [int(v) for v in torch.cat(queries).tolist()]
    return full_args(cls, kwargs), out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fixtures", type=Path, default=REPO_ROOT / FIXTURES_REL,
                   help="directory holding mnist_mlp.safetensors and mnist_cnn.safetensors")
    p.add_argument("--data", type=Path, default=REPO_ROOT / DATA_REL,
                   help="MNIST test subset (safetensors: images uint8, labels int64)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / OUT_REL, help="output JSON path")
    p.add_argument("--mlp-samples", type=int, default=1000)
    p.add_argument("--cnn-samples", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--only", default=",".join(ATTACKS),
                   help="comma-separated subset of: " + ", ".join(ATTACKS))
    p.add_argument("--models", default=",".join(m for m, _ in MODELS),
                   help="comma-separated subset of: " + ", ".join(m for m, _ in MODELS))
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads (1: on a shared, busy CPU, 2 OpenMP threads were "
                        "3-4x slower; float results can depend on it, so it is recorded)")
    p.add_argument("--merge", type=Path, nargs="*", default=[],
                   help="JSON files from earlier runs (same versions and data) whose cases are "
                        "merged into the output; cases run now take precedence")
    args = p.parse_args(argv)
    only = [a for a in args.only.split(",") if a]
    models = [m for m in args.models.split(",") if m]
    for a in only:
        if a not in ATTACKS:
            raise SystemExit(f"unknown attack {a!r}; choose from {', '.join(ATTACKS)}")

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    x_all, y_all = load_data(args.data)
    samples = {"mnist_mlp": args.mlp_samples, "mnist_cnn": args.cnn_samples}

    cases = []
    print(f"python {platform.python_version()}, torch {torch.__version__}, "
          f"torchattacks {torchattacks.__version__}", flush=True)
    print(f"{'model':<10} {'attack':<9} {'eps':>5} {'N':>5} {'clean':>7} {'robust':>7} "
          f"{'mean_l2':>8} {'mean_linf':>9} {'time_s':>7}", flush=True)
    for model_name, build in MODELS:
        if model_name not in models or not only:
            continue
        wpath = args.fixtures / f"{model_name}.safetensors"
        model = load_model(wpath, build)
        wsha = sha256_file(wpath)
        n = samples[model_name]
        if not 0 < n <= x_all.shape[0]:
            raise SystemExit(f"{model_name}: samples {n} out of range 1..{x_all.shape[0]}")
        x, y = x_all[:n].contiguous(), y_all[:n].contiguous()
        for name in only:
            torch.manual_seed(0)
            tc = time.perf_counter()
            full, r = run_case(model, x, y, args.batch_size, name, EPS[model_name])
            dt = time.perf_counter() - tc
            cases.append({
                "model": model_name, "weights_sha256": wsha, "attack": name,
                "torchattacks_class": ATTACKS[name][0].__name__, "args": full,
                "samples": n, "batch_size": args.batch_size, "wall_s": round(dt, 2), **r,
            })
            extra = ""
            if "robust_acc_at_l2" in r:
                extra = "  at L2 " + " ".join(f"{k}:{v:.3f}" for k, v in r["robust_acc_at_l2"].items())
            ml2 = r["mean_l2"] if r["mean_l2"] is not None else float("nan")
            mli = r["mean_linf"] if r["mean_linf"] is not None else float("nan")
            print(f"{model_name:<10} {name:<9} {str(r['eps']):>5} {n:>5} {r['clean_acc']:>7.4f} "
                  f"{r['robust_acc']:>7.4f} {ml2:>8.4f} {mli:>9.5f} {dt:>7.2f}{extra}", flush=True)

    header = {
        "generator": GENERATOR,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchattacks": torchattacks.__version__,
        "safetensors": safetensors.__version__,
        "numpy": numpy.__version__,
        "data": DATA_REL,
        "data_sha256": sha256_file(args.data),
        "batch_size": args.batch_size,
        "torch_threads": args.threads,
        "l2_budgets": L2_BUDGETS,
    }
    for path in args.merge:
        other = json.loads(path.read_text())
        for k, v in header.items():
            if other.get(k) != v:
                raise SystemExit(f"--merge {path}: {k} is {other.get(k)!r}, this run has {v!r}")
        have = {(c["model"], c["attack"]) for c in cases}
        cases += [c for c in other["cases"] if (c["model"], c["attack"]) not in have]
    model_order = [m for m, _ in MODELS]
    attack_order = list(ATTACKS)
    cases.sort(key=lambda c: (model_order.index(c["model"]), attack_order.index(c["attack"])))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, header, cases)
    print(f"wrote {args.out} ({len(cases)} cases) in {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
