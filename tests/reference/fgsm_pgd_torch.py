"""Peer reference for robust's FGSM / PGD attacks, produced with PyTorch + torchattacks.

What it produces
----------------
``tests/reference/fgsm_pgd_torch.json``: for each committed MNIST model in
``tests/fixtures/`` (``mnist_mlp.safetensors``, ``mnist_cnn.safetensors``) and each
attack configuration below, the clean and robust accuracy, the per-sample clean and
adversarial predictions, and the mean L-inf / L2 norm of the perturbation. The Rust
integration tests compare robust's own attacks against these numbers.

The attacks are run by torchattacks itself (the peer), not by a re-implementation:

* FGSM   L-inf  eps 0.05                                 (``torchattacks.FGSM``)
* FGSM   L-inf  eps 0.1                                  (``torchattacks.FGSM``)
* PGD    L-inf  eps 0.1, alpha 0.01, 20 steps, no random start (``torchattacks.PGD``)
* PGD    L2     eps 1.5, alpha 0.2,  20 steps, no random start (``torchattacks.PGDL2``)

All are untargeted with torchattacks' default loss (cross-entropy, mean over the
batch), inputs in [0, 1], batch size 250. Every sample is attacked, including those
the model already misclassifies. By default the first 1000 test samples are used for
the MLP and the first 500 for the CNN.

Inputs
------
* ``tests/reference/mnist_test.safetensors`` (written by ``cargo xtask fixtures``):
  ``images`` uint8 (1000, 1, 28, 28) and ``labels`` int64 (1000,). Model inputs are
  ``images.float() / 255``.
* ``tests/fixtures/mnist_mlp.safetensors`` and ``tests/fixtures/mnist_cnn.safetensors``
  loaded strictly into the ``nn.Sequential`` models defined in ``build_mlp`` /
  ``build_cnn`` below (float32, eval mode, CPU).

How to run (from the repository root)
-------------------------------------
    python -m venv /tmp/ref && /tmp/ref/bin/pip install torch torchattacks safetensors numpy \
        && /tmp/ref/bin/python tests/reference/fgsm_pgd_torch.py

Options (``--help``): ``--fixtures DIR``, ``--data PATH``, ``--out PATH``,
``--mlp-samples N``, ``--cnn-samples N``, ``--batch-size N``. The defaults are the
repository paths and the settings above; the committed JSON is produced with the
defaults. Python is only needed to regenerate the reference; robust itself and its
tests do not depend on it.

Output format
-------------
A JSON object with ``generator``, ``torch``, ``torchattacks`` (versions), ``data``,
``data_sha256``, ``batch_size`` and ``cases`` (one case per line). Each case has
``model``, ``weights_sha256``, ``attack`` ("fgsm" | "pgd"), ``norm`` ("linf" | "l2"),
``eps``, ``alpha`` (null for FGSM), ``steps`` (1 for FGSM), ``samples``,
``clean_acc`` (fraction correct on clean inputs), ``robust_acc`` (fraction correct on
clean inputs AND under attack), ``clean_pred``, ``adv_pred`` (per-sample argmax),
``mean_linf`` and ``mean_l2`` (mean over all samples of the per-sample norm of
``adv - x``).
"""

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torchattacks
from safetensors.torch import load_file

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
GENERATOR = "tests/reference/fgsm_pgd_torch.py"
DATA_REL = "tests/reference/mnist_test.safetensors"
OUT_REL = "tests/reference/fgsm_pgd_torch.json"
FIXTURES_REL = "tests/fixtures"

# (attack, norm, eps, alpha, steps)
CONFIGS = [
    ("fgsm", "linf", 0.05, None, 1),
    ("fgsm", "linf", 0.1, None, 1),
    ("pgd", "linf", 0.1, 0.01, 20),
    ("pgd", "l2", 1.5, 0.2, 20),
]


def build_mlp() -> nn.Module:
    # keys: 1.weight 1.bias 3.weight 3.bias 5.weight 5.bias
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )


def build_cnn() -> nn.Module:
    # keys: 0.* 3.* 7.* 9.*
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3136, 1024),
        nn.ReLU(),
        nn.Linear(1024, 10),
    )


MODELS = [("mnist_mlp", build_mlp), ("mnist_cnn", build_cnn)]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_model(path: Path, build) -> nn.Module:
    model = build()
    state = load_file(str(path))
    for k, v in state.items():
        if v.dtype != torch.float32:
            raise SystemExit(f"{path}: tensor {k} has dtype {v.dtype}, expected float32")
    model.load_state_dict(state, strict=True)
    model = model.to(torch.float32).eval()
    return model


def load_data(path: Path):
    t = load_file(str(path))
    images, labels = t["images"], t["labels"]
    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (1, 28, 28):
        raise SystemExit(f"{path}: images must be uint8 (N,1,28,28), got {images.dtype} {tuple(images.shape)}")
    if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
        raise SystemExit(f"{path}: labels must be int64 (N,), got {labels.dtype} {tuple(labels.shape)}")
    return images.float() / 255.0, labels


def make_attack(model, attack, norm, eps, alpha, steps, batch_size):
    if attack == "fgsm":
        return torchattacks.FGSM(model, eps=eps)
    if norm == "linf":
        return torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)
    # torchattacks differentiates the batch-*mean* loss, so each sample's gradient is 1/batch of
    # its own, and then divides by (norm + eps_for_division). With the default 1e-10 a confident
    # sample's gradient (norm ~1e-9 after the 1/250) takes a much shorter step than alpha, which
    # makes PGDL2 weaker and its result depend on the batch size (default: 6.2 % robust on the MLP
    # at batch 250, 5.6 % with per-sample normalisation). Scaling eps_for_division by 1/batch
    # makes torchattacks normalise each sample's own gradient + 1e-10, which is what robust does.
    return torchattacks.PGDL2(model, eps=eps, alpha=alpha, steps=steps, random_start=False,
                              eps_for_division=1e-10 / batch_size)


@torch.no_grad()
def predict(model, x):
    return model(x).argmax(dim=1)


def run_case(model, x, y, batch_size, attack, norm, eps, alpha, steps):
    atk = make_attack(model, attack, norm, eps, alpha, steps, batch_size)
    clean_pred, adv_pred, linf, l2 = [], [], [], []
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        adv = atk(xb, yb)
        delta = (adv - xb).flatten(1).double()
        clean_pred.append(predict(model, xb))
        adv_pred.append(predict(model, adv))
        linf.append(delta.abs().amax(dim=1))
        l2.append(delta.norm(p=2, dim=1))
    clean_pred = torch.cat(clean_pred)
    adv_pred = torch.cat(adv_pred)
    clean_ok = clean_pred == y
    n = x.shape[0]
    return {
        "clean_acc": clean_ok.sum().item() / n,
        "robust_acc": (clean_ok & (adv_pred == y)).sum().item() / n,
        "clean_pred": clean_pred.tolist(),
        "adv_pred": adv_pred.tolist(),
        "mean_linf": torch.cat(linf).mean().item(),
        "mean_l2": torch.cat(l2).mean().item(),
    }


def write_json(path: Path, header: dict, cases: list):
    lines = ["{"]
    for k, v in header.items():
        lines.append(f"  {json.dumps(k)}: {json.dumps(v)},")
    lines.append('  "cases": [')
    for i, c in enumerate(cases):
        sep = "," if i + 1 < len(cases) else ""
        lines.append("    " + json.dumps(c, separators=(", ", ": ")) + sep)
    lines.append("  ]")
    lines.append("}")
    path.write_text("\n".join(lines) + "\n")
    json.loads(path.read_text())  # sanity: well-formed


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fixtures", type=Path, default=REPO_ROOT / FIXTURES_REL,
                   help="directory holding mnist_mlp.safetensors and mnist_cnn.safetensors")
    p.add_argument("--data", type=Path, default=REPO_ROOT / DATA_REL,
                   help="MNIST test subset (safetensors: images uint8, labels int64)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / OUT_REL, help="output JSON path")
    p.add_argument("--mlp-samples", type=int, default=1000)
    p.add_argument("--cnn-samples", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=250)
    args = p.parse_args(argv)

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)
    torch.manual_seed(0)  # no randomness is used (random_start=False); belt and braces

    t0 = time.perf_counter()
    x_all, y_all = load_data(args.data)
    samples = {"mnist_mlp": args.mlp_samples, "mnist_cnn": args.cnn_samples}

    cases = []
    print(f"torch {torch.__version__}, torchattacks {torchattacks.__version__}")
    print(f"{'model':<10} {'attack':<6} {'norm':<4} {'eps':>5} {'alpha':>5} {'steps':>5} "
          f"{'N':>5} {'clean':>7} {'robust':>7} {'mean_linf':>9} {'mean_l2':>8} {'time_s':>7}")
    for name, build in MODELS:
        wpath = args.fixtures / f"{name}.safetensors"
        model = load_model(wpath, build)
        wsha = sha256_file(wpath)
        n = samples[name]
        if not 0 < n <= x_all.shape[0]:
            raise SystemExit(f"{name}: samples {n} out of range 1..{x_all.shape[0]}")
        x, y = x_all[:n].contiguous(), y_all[:n].contiguous()
        for attack, norm, eps, alpha, steps in CONFIGS:
            tc = time.perf_counter()
            r = run_case(model, x, y, args.batch_size, attack, norm, eps, alpha, steps)
            dt = time.perf_counter() - tc
            cases.append({
                "model": name, "weights_sha256": wsha, "attack": attack, "norm": norm,
                "eps": eps, "alpha": alpha, "steps": steps, "samples": n, **r,
            })
            print(f"{name:<10} {attack:<6} {norm:<4} {eps:>5} {str(alpha):>5} {steps:>5} "
                  f"{n:>5} {r['clean_acc']:>7.4f} {r['robust_acc']:>7.4f} "
                  f"{r['mean_linf']:>9.5f} {r['mean_l2']:>8.4f} {dt:>7.2f}")

    header = {
        "generator": GENERATOR,
        "torch": torch.__version__,
        "torchattacks": torchattacks.__version__,
        "data": DATA_REL,
        "data_sha256": sha256_file(args.data),
        "batch_size": args.batch_size,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, header, cases)
    print(f"wrote {args.out} ({len(cases)} cases) in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
