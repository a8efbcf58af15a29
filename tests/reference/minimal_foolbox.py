"""Peer reference for robust's minimal-perturbation attacks (C&W-L2, DeepFool L2 / L-inf), produced with Foolbox 3.

What it produces
----------------
``tests/reference/minimal_foolbox.json``: for each committed MNIST model in ``tests/fixtures/``
(``mnist_mlp.safetensors``, ``mnist_cnn.safetensors``) and each attack below, per sample the
clean and adversarial predictions, whether the attack succeeded, the L2 and L-inf norms of
``adv - x``, and the summaries the Rust test ``tests/reference_minimal.rs`` compares with
robust's own attacks: mean norm of the successful perturbations and robust accuracy at a few
budgets. See ``tests/reference/MINIMAL.md`` for the results and for Foolbox's semantics.

Why Foolbox and not torchattacks or ART: torchattacks' CW cannot move pixels at exactly 0 or 1
and has no binary search, and its DeepFool applies the overshoot per clamped step, so its outputs
sit on the boundary (``ATTACKS.md``). IBM's ART replaces C&W's Adam by gradient descent with a
line search (its docstring says so) and doubles c instead of the authors' x10, and its DeepFool is
L2 only and lacks the authors' 1e-4 crossing; no robust parameter maps onto those. Foolbox 3's
attacks are ports of the authors' code (``carlini/nn_robust_attacks``, ``LTS4/DeepFool``).

The attacks are run by Foolbox itself (the peer), not by a re-implementation. All are
untargeted (``Misclassification(labels)``), model bounds (0, 1), CPU, float32, one call per
batch of ``--batch-size`` samples through the public API
``attack(fmodel, x, y, epsilons=[None, *budgets])``:

* ``L2CarliniWagnerAttack(binary_search_steps=9, steps=100, stepsize=0.1, confidence=0,
  initial_const=0.01, abort_early=True)``   (robust's ``CwConfig::default()``)
* ``L2DeepFoolAttack(steps=50, candidates=10, overshoot=0.02, loss='logits')``
* ``LinfDeepFoolAttack(steps=50, candidates=10, overshoot=0.02, loss='logits')``
  (robust's ``DeepFoolConfig::default()`` with the matching norm)

Every case records the complete argument list (explicit and default values, read from the
constructor's signature) under ``args``. By default the MLP is attacked on the first 1000 test
digits and the CNN on the first 200, in batches of 20 (C&W's early abort looks at the batch's
total loss, so its results depend on the batch; DeepFool's do not; small batches let the Rust
test compare a few CNN batches of the costly C&W).

Inputs
------
Same as ``fgsm_pgd_torch.py`` (its loaders are imported from it): ``tests/reference/
mnist_test.safetensors`` (``images`` uint8 (1000, 1, 28, 28) / 255, ``labels`` int64) and the
two weight files loaded strictly into the ``nn.Sequential`` models defined there.

How to run (from the repository root)
-------------------------------------
    python -m venv /tmp/ref && /tmp/ref/bin/pip install torch safetensors numpy foolbox==3.3.4 \
        && /tmp/ref/bin/python tests/reference/minimal_foolbox.py

Options (``--help``): ``--fixtures DIR``, ``--data PATH``, ``--out PATH``, ``--mlp-samples N``,
``--cnn-samples N``, ``--batch-size N``, ``--threads N``, ``--only NAME[,NAME..]`` and
``--models NAME[,NAME..]``.

Versions used for the committed JSON (also recorded in it): Python 3.11.7, torch 2.15.0
(``2.15.0+cu132`` wheel, run on the CPU), foolbox 3.3.4, eagerpy 0.30.0, safetensors 0.8.0,
numpy 2.4.6. Run with ``torch.use_deterministic_algorithms(True)``, ``torch.set_num_threads(1)``
and ``torch.manual_seed(0)`` before every case (none of the three attacks draws random numbers).

Output format
-------------
A JSON object with ``generator``, ``python``, ``torch``, ``foolbox``, ``eagerpy``,
``safetensors``, ``numpy`` (versions), ``data``, ``data_sha256``, ``batch_size``,
``torch_threads``, ``budgets`` ({"l2": [...], "linf": [...]}) and ``cases`` (one per line).
Each case has:

* ``model``, ``weights_sha256``, ``attack`` (cw-l2 | deepfool-l2 | deepfool-linf),
  ``foolbox_class``, ``args`` (all constructor arguments), ``norm`` ("l2" | "linf": the
  attack's norm, in which ``budgets`` and ``mean_norm`` are measured), ``samples``,
  ``batch_size``, ``wall_s`` (seconds for the case: attack plus predictions);
* ``clean_acc``; ``robust_acc``: fraction correct on clean inputs and on the raw (unbounded)
  adversarial output;
* ``budgets`` and ``robust_acc_at`` (one value per budget, same order): a sample is robust at
  budget b iff it is correct on clean inputs and not (``success`` and norm <= b), i.e. robust's
  ``minimal_within_budget`` rule; ``foolbox_robust_acc_at``: Foolbox's own figure, 1 - mean of
  the ``success`` it returns for epsilon b (it scales a longer perturbation down onto the ball
  and asks whether that is still adversarial, which is a different, slightly stronger rule);
* ``mean_norm``: mean of the attack-norm over the flipped samples (clean-correct and
  ``success``); ``mean_l2``, ``mean_linf``: the same in L2 / L-inf;
* per sample: ``clean_pred``, ``adv_pred`` (argmax), ``success`` (0/1: ``adv_pred != label``,
  Foolbox's criterion, on the raw output), ``adv_margin`` (``z_y - max_{j != y} z_j`` on the
  raw output; negative = misclassified), ``l2``, ``linf`` (norms of ``adv - x``, float64);
  rounded to 6 decimals. C&W returns an all-zero image for a sample it never breaks (its
  ``best_advs`` starts as zeros): ``success`` is then whatever the model says of a blank image
  and the norm is that of ``x``; ``zero_images`` counts such samples.
"""

import argparse
import inspect
import json
import platform
import sys
import time
from pathlib import Path

import eagerpy
import foolbox
import numpy
import safetensors
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fgsm_pgd_torch import (  # noqa: E402  (no side effects on import)
    DATA_REL, FIXTURES_REL, MODELS, REPO_ROOT, load_data, load_model, predict, sha256_file,
    write_json,
)

GENERATOR = "tests/reference/minimal_foolbox.py"
OUT_REL = "tests/reference/minimal_foolbox.json"
BUDGETS = {"l2": [0.5, 1.0, 1.5, 2.0], "linf": [0.03, 0.05, 0.1, 0.15]}

# name -> (Foolbox class, norm, explicit kwargs)
ATTACKS = {
    "cw-l2": (foolbox.attacks.L2CarliniWagnerAttack, "l2",
              dict(binary_search_steps=9, steps=100, stepsize=0.1, confidence=0,
                   initial_const=0.01, abort_early=True)),
    "deepfool-l2": (foolbox.attacks.L2DeepFoolAttack, "l2",
                    dict(steps=50, candidates=10, overshoot=0.02, loss="logits")),
    "deepfool-linf": (foolbox.attacks.LinfDeepFoolAttack, "linf",
                      dict(steps=50, candidates=10, overshoot=0.02, loss="logits")),
}


def full_args(cls, kwargs):
    """All constructor arguments (explicit + the installed version's defaults)."""
    bound = inspect.signature(cls.__init__).bind_partial(None, **kwargs)
    bound.apply_defaults()
    return {k: v for k, v in bound.arguments.items() if k != "self"}


def r6(t):
    return [round(v, 6) for v in t.tolist()]


def mean_or_none(t):
    return round(t.mean().item(), 6) if t.numel() else None


@torch.no_grad()
def pred_and_margin(model, x, y):
    """argmax and the margin z_y - max_{j != y} z_j (negative = misclassified)."""
    z = model(x)
    zy = z.gather(1, y[:, None]).squeeze(1)
    others = z.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return z.argmax(dim=1), (zy - others).double()


def run_case(model, x, y, batch_size, name):
    cls, norm, kwargs = ATTACKS[name]
    atk = cls(**kwargs)
    fmodel = foolbox.PyTorchModel(model, bounds=(0.0, 1.0), device="cpu")
    budgets = BUDGETS[norm]

    clean_pred, adv_pred, adv_margin, l2, linf, fb_success, zeros = [], [], [], [], [], [], 0
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        raw, _, success = atk(fmodel, xb, yb, epsilons=[None, *budgets])
        adv = raw[0]
        zeros += int((adv.flatten(1) == 0).all(dim=1).sum().item())
        delta = (adv - xb).flatten(1).double()
        clean_pred.append(predict(model, xb))
        ap, am = pred_and_margin(model, adv, yb)
        adv_pred.append(ap)
        adv_margin.append(am)
        l2.append(delta.norm(p=2, dim=1))
        linf.append(delta.abs().amax(dim=1))
        fb_success.append(success[1:].cpu())
    clean_pred, adv_pred = torch.cat(clean_pred), torch.cat(adv_pred)
    l2, linf = torch.cat(l2), torch.cat(linf)
    fb_success = torch.cat(fb_success, dim=1)
    n = x.shape[0]
    clean_ok = clean_pred == y
    success = adv_pred != y
    flipped = clean_ok & success
    dist = l2 if norm == "l2" else linf
    out = {
        "norm": norm,
        "clean_acc": clean_ok.sum().item() / n,
        "robust_acc": (clean_ok & ~success).sum().item() / n,
        "budgets": budgets,
        "robust_acc_at": [(clean_ok & ~(success & (dist <= b))).sum().item() / n
                          for b in budgets],
        "foolbox_robust_acc_at": [round(1.0 - s.double().mean().item(), 6) for s in fb_success],
        "mean_norm": mean_or_none(dist[flipped]),
        "mean_l2": mean_or_none(l2[flipped]),
        "mean_linf": mean_or_none(linf[flipped]),
        "zero_images": zeros,
        "clean_pred": clean_pred.tolist(),
        "adv_pred": adv_pred.tolist(),
        "success": success.int().tolist(),
        "adv_margin": r6(torch.cat(adv_margin)),
        "l2": r6(l2),
        "linf": r6(linf),
    }
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
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads (float results can depend on it, so it is recorded)")
    p.add_argument("--only", default=",".join(ATTACKS),
                   help="comma-separated subset of: " + ", ".join(ATTACKS))
    p.add_argument("--models", default=",".join(m for m, _ in MODELS),
                   help="comma-separated subset of: " + ", ".join(m for m, _ in MODELS))
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
          f"foolbox {foolbox.__version__}", flush=True)
    print(f"{'model':<10} {'attack':<14} {'N':>5} {'clean':>7} {'robust':>7} {'mean':>8} "
          f"{'time_s':>7}  robust at budgets", flush=True)
    for model_name, build in MODELS:
        if model_name not in models:
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
            full, r = run_case(model, x, y, args.batch_size, name)
            dt = time.perf_counter() - tc
            cases.append({
                "model": model_name, "weights_sha256": wsha, "attack": name,
                "foolbox_class": ATTACKS[name][0].__name__, "args": full,
                "samples": n, "batch_size": args.batch_size, "wall_s": round(dt, 2), **r,
            })
            at = " ".join(f"{b}:{a:.3f}" for b, a in zip(r["budgets"], r["robust_acc_at"]))
            print(f"{model_name:<10} {name:<14} {n:>5} {r['clean_acc']:>7.4f} "
                  f"{r['robust_acc']:>7.4f} {r['mean_norm']:>8.4f} {dt:>7.2f}  {at}", flush=True)

    header = {
        "generator": GENERATOR,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "foolbox": foolbox.__version__,
        "eagerpy": eagerpy.__version__,
        "safetensors": safetensors.__version__,
        "numpy": numpy.__version__,
        "data": DATA_REL,
        "data_sha256": sha256_file(args.data),
        "batch_size": args.batch_size,
        "torch_threads": args.threads,
        "budgets": BUDGETS,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, header, cases)
    print(f"wrote {args.out} ({len(cases)} cases) in {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
