"""Peer reference for robust's AutoAttack, FAB and FAB-T, produced by the official AutoAttack code.

What it produces
----------------
``tests/reference/autoattack_official.json``, read by ``tests/reference_autoattack.rs``. The
attacks are run by the official implementation of Croce & Hein (github.com/fra31/auto-attack,
commit ``a392200``, unmodified, imported from a fetched checkout: ``--aa-src``), never by a
re-implementation. Inputs in [0, 1], CPU, float32, batch size 250. Cases:

* ``standard``: ``AutoAttack(model, norm='Linf', eps, version='standard', seed=0)``, i.e.
  APGD-CE -> APGD-T (9 targets) -> FAB-T (9 targets) -> Square (5000 queries, p_init 0.8,
  ``resc_schedule=False``), each on the points still robust. MLP eps 0.05 on the first 500 test
  digits, CNN eps 0.1 on the first 200. The script drives the cascade itself with the
  AutoAttack object's own four configured attacks, exactly as ``run_standard_evaluation`` does
  (same batches of the still-robust points, same seeds), to record which stage broke each point
  (``broken_by``), and then checks that ``run_standard_evaluation`` itself gives the same
  per-stage robust accuracies (read from its log) and the same final robust points.
* ``fab-t-min`` / ``fab-min`` / ``fab-l2-min``: minimal perturbations. ``FABAttack_PT`` with an
  ε large enough to accept every adversarial example it finds (L-inf 1.0, L2 100), 100 steps,
  1 restart, alpha_max 0.1, eta 1.05, beta 0.9: targeted with ``n_target_classes=1`` (the
  second-ranked class, the first target of FAB-T), untargeted L-inf and untargeted L2. Per
  sample: the norm of ``adv - x`` and whether ``adv`` is misclassified. MLP 500, CNN 200 digits.
* ``rand``: ``AutoAttack(model, norm='Linf', eps=0.1, version='rand', seed=0)`` (APGD-CE then
  APGD-DLR, each with EOT over 20 draws) on ``mnist_noise`` behind fresh Gaussian noise of
  sigma 0.25 on every forward pass (``x + 0.25 * randn``, no clipping, the runtime's
  ``Preprocessor::GaussianNoise``), first 200 digits. Random by nature: robust's draws differ,
  so the Rust test compares accuracies, not samples. Points are judged by one noisy forward
  pass each, as AutoAttack does.

FAB's speed is measured by ``cargo xtask bench -- --only fab`` (``examples/bench.rs`` with
``bench_torch.py``, which runs this same official ``FABAttack_PT`` given
``ROBUST_AUTOATTACK_SRC``), side by side in one invocation; see BENCHMARKS.md.

Inputs
------
Same as ``fgsm_pgd_torch.py`` (its loaders are imported from it), plus
``tests/fixtures/mnist_noise.safetensors`` loaded strictly into ``build_ibp`` of
``bounds_lirpa.py``'s architecture (repeated here).

How to run (from the repository root)
-------------------------------------
    python -m venv /tmp/ref && /tmp/ref/bin/pip install torch safetensors numpy
    git -C /work/.mirror/fra31+auto-attack/repo show HEAD:autoattack/<file>.py ...  # or clone
    /tmp/ref/bin/python tests/reference/autoattack_official.py --aa-src /tmp/aa_src

``--aa-src`` is the folder that holds the ``autoattack`` package (its ``autoattack.py``,
``autopgd_base.py``, ``fab_*.py``, ``square.py``, ``checks.py``, ``state.py``,
``other_utils.py``). Options (``--help``): ``--only CASE[,CASE..]``, ``--threads``,
``--out``, ``--merge JSON..`` (keep the cases of earlier runs that this run
does not redo).
"""

import argparse
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy
import safetensors
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fgsm_pgd_torch import (  # noqa: E402  (no side effects on import)
    DATA_REL, FIXTURES_REL, REPO_ROOT, build_cnn, build_mlp, load_data, load_model, sha256_file,
    write_json,
)

GENERATOR = "tests/reference/autoattack_official.py"
OUT_REL = "tests/reference/autoattack_official.json"
CASES = ["standard", "fab-t-min", "fab-min", "fab-l2-min", "rand"]
STANDARD = [("mnist_mlp", build_mlp, 0.05, 500), ("mnist_cnn", build_cnn, 0.1, 200)]
NOISE_SIGMA = 0.25
BS = 250


def build_small_cnn() -> nn.Module:
    # robust's zoo::layers::mnist_small_cnn; keys 0.* 2.* 5.* 7.*
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10),
    )


class GaussianNoise(nn.Module):
    """x + sigma * N(0, 1), a fresh draw on every forward pass (robust's Preprocessor)."""

    def __init__(self, net, sigma):
        super().__init__()
        self.net, self.sigma = net, sigma

    def forward(self, x):
        return self.net(x + self.sigma * torch.randn_like(x))


class Capture:
    """Stands in for AutoAttack's Logger: keeps the lines it would print."""

    def __init__(self):
        self.lines = []

    def log(self, s):
        self.lines.append(str(s))


@torch.no_grad()
def predict(model, x):
    return torch.cat([model(x[i:i + BS]).argmax(1) for i in range(0, x.shape[0], BS)])


def run_member(aa, name, x, y):
    """One stage, as run_standard_evaluation calls it (autoattack.py, lines 182-214)."""
    if name == "apgd-ce":
        aa.apgd.loss = "ce"
        aa.apgd.seed = aa.get_seed()
        return aa.apgd.perturb(x, y)
    if name == "apgd-dlr":
        aa.apgd.loss = "dlr"
        aa.apgd.seed = aa.get_seed()
        return aa.apgd.perturb(x, y)
    if name == "apgd-t":
        aa.apgd_targeted.seed = aa.get_seed()
        return aa.apgd_targeted.perturb(x, y)
    if name == "fab-t":
        aa.fab.targeted = True
        aa.fab.n_restarts = 1
        aa.fab.seed = aa.get_seed()
        return aa.fab.perturb(x, y)
    if name == "square":
        aa.square.seed = aa.get_seed()
        return aa.square.perturb(x, y)
    raise ValueError(name)


def cascade(aa, model, x, y):
    """The cascade of run_standard_evaluation, recording the stage that broke each point."""
    robust = predict(model, x) == y
    broken_by = ["clean" if not r else None for r in robust.tolist()]
    stages, stage_acc = [], []
    for name in aa.attacks_to_run:
        idx = robust.nonzero().flatten()
        t0 = time.perf_counter()
        for start in range(0, idx.numel(), BS):
            bi = idx[start:start + BS]
            adv = run_member(aa, name, x[bi].clone(), y[bi].clone())
            false = ~(predict(model, adv) == y[bi])
            for i in bi[false].tolist():
                broken_by[i] = name
            robust[bi[false]] = False
        stages.append({"attack": name, "robust_acc": robust.sum().item() / x.shape[0],
                       "wall_s": round(time.perf_counter() - t0, 2)})
        stage_acc.append(robust.sum().item() / x.shape[0])
    return robust, broken_by, stages


def official_log_accuracies(lines):
    out = {}
    for line in lines:
        m = re.match(r"robust accuracy after ([A-Z-]+): ([0-9.]+)%", line)
        if m:
            out[m.group(1).lower()] = float(m.group(2)) / 100
    return out


def new_autoattack(model, eps, version, logger=None):
    from autoattack import AutoAttack
    aa = AutoAttack(model, norm="Linf", eps=eps, version=version, seed=0, verbose=logger is not None,
                    device="cpu")
    if logger is not None:
        aa.logger = logger
        for member in (aa.apgd, aa.apgd_targeted):
            member.logger = logger
    return aa


def case_standard(model, x, y, eps):
    aa = new_autoattack(model, eps, "standard")
    torch.manual_seed(0)
    t0 = time.perf_counter()
    robust, broken_by, stages = cascade(aa, model, x, y)
    wall = time.perf_counter() - t0
    # The official driver itself, for the check.
    log = Capture()
    official = new_autoattack(model, eps, "standard", log)
    torch.manual_seed(0)
    x_adv = official.run_standard_evaluation(x.clone(), y.clone(), bs=BS)
    logged = official_log_accuracies(log.lines)
    for s in stages:
        got = logged.get(s["attack"])
        if got is None or abs(got - s["robust_acc"]) > 1e-4:
            raise SystemExit(f"run_standard_evaluation logged {got} after {s['attack']}, the "
                             f"script's cascade {s['robust_acc']}")
    if not torch.equal(predict(model, x_adv) == y, robust):
        raise SystemExit("run_standard_evaluation's robust points differ from the cascade's")
    return {
        "version": "standard", "eps": eps, "norm": "Linf",
        "members": list(aa.attacks_to_run),
        "clean_acc": sum(b != "clean" for b in broken_by) / x.shape[0],
        "robust_acc": robust.sum().item() / x.shape[0],
        "stages": stages, "broken_by": broken_by, "wall_s": round(wall, 2),
    }


def fab(model, norm, eps, targeted, n_target_classes=9, n_restarts=1):
    from autoattack.fab_pt import FABAttack_PT
    atk = FABAttack_PT(model, norm=norm, n_restarts=n_restarts, n_iter=100, eps=eps,
                       alpha_max=0.1, eta=1.05, beta=0.9, seed=0, targeted=targeted,
                       device="cpu", n_target_classes=n_target_classes)
    return atk


def case_minimal(model, x, y, kind):
    norm, eps, targeted = {"fab-t-min": ("Linf", 1.0, True), "fab-min": ("Linf", 1.0, False),
                           "fab-l2-min": ("L2", 100.0, False)}[kind]
    atk = fab(model, norm, eps, targeted, n_target_classes=1)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    advs = [atk.perturb(x[i:i + BS], y[i:i + BS]) for i in range(0, x.shape[0], BS)]
    wall = time.perf_counter() - t0
    adv = torch.cat(advs)
    clean_ok = predict(model, x) == y
    adv_wrong = predict(model, adv) != y
    d = (adv - x).flatten(1).double()
    norms = d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)
    found = clean_ok & adv_wrong
    return {
        "norm": norm, "eps": eps, "targeted": targeted, "n_target_classes": 1 if targeted else None,
        "steps": 100, "restarts": 1, "alpha_max": 0.1, "eta": 1.05, "beta": 0.9,
        "clean_acc": clean_ok.float().mean().item(),
        "found": found.tolist(),
        "norms": [round(v, 6) if f else None for v, f in zip(norms.tolist(), found.tolist())],
        "median_norm": norms[found].median().item() if found.any() else None,
        "wall_s": round(wall, 2),
    }


def case_rand(x, y, fixtures):
    net = load_model(fixtures / "mnist_noise.safetensors", build_small_cnn)
    model = GaussianNoise(net, NOISE_SIGMA).eval()
    aa = new_autoattack(model, 0.1, "rand")
    torch.manual_seed(0)
    t0 = time.perf_counter()
    robust, broken_by, stages = cascade(aa, model, x, y)
    return {
        "version": "rand", "eps": 0.1, "norm": "Linf", "sigma": NOISE_SIGMA,
        "members": list(aa.attacks_to_run), "eot_iter": aa.apgd.eot_iter,
        "clean_acc": sum(b != "clean" for b in broken_by) / x.shape[0],
        "robust_acc": robust.sum().item() / x.shape[0],
        "stages": stages, "broken_by": broken_by, "wall_s": round(time.perf_counter() - t0, 2),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--aa-src", type=Path, default=Path("/tmp/aa_src"),
                   help="folder holding the official autoattack package (fra31/auto-attack)")
    p.add_argument("--aa-commit", default="a392200",
                   help="the commit --aa-src was exported from, when it is not a git checkout")
    p.add_argument("--fixtures", type=Path, default=REPO_ROOT / FIXTURES_REL)
    p.add_argument("--data", type=Path, default=REPO_ROOT / DATA_REL)
    p.add_argument("--out", type=Path, default=REPO_ROOT / OUT_REL)
    p.add_argument("--only", default=",".join(CASES), help="subset of: " + ", ".join(CASES))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--merge", type=Path, nargs="*", default=[],
                   help="JSON files of earlier runs (same versions and data) whose cases are kept "
                        "where this run does not redo them")
    args = p.parse_args(argv)
    only = [c for c in args.only.split(",") if c]
    for c in only:
        if c not in CASES:
            raise SystemExit(f"unknown case {c!r}; choose from {', '.join(CASES)}")
    sys.path.insert(0, str(args.aa_src))
    import autoattack  # noqa: F401  (fails early when --aa-src is wrong)

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(args.threads)
    x_all, y_all = load_data(args.data)
    cases = []
    for kind in only:
        if kind == "rand":
            n = 200
            t = time.perf_counter()
            r = case_rand(x_all[:n], y_all[:n], args.fixtures)
            cases.append({"case": kind, "model": "mnist_noise", "samples": n,
                          "weights_sha256": sha256_file(args.fixtures / "mnist_noise.safetensors"), **r})
            print(f"rand mnist_noise: clean {r['clean_acc']:.4f} robust {r['robust_acc']:.4f} "
                  f"({time.perf_counter() - t:.1f} s) {r['stages']}", flush=True)
            continue
        for name, build, eps, n in STANDARD:
            wpath = args.fixtures / f"{name}.safetensors"
            model = load_model(wpath, build)
            head = {"case": kind, "model": name, "weights_sha256": sha256_file(wpath)}
            x, y = x_all[:n].contiguous(), y_all[:n].contiguous()
            t = time.perf_counter()
            r = case_standard(model, x, y, eps) if kind == "standard" else case_minimal(model, x, y, kind)
            cases.append({**head, "samples": n, **r})
            summary = r.get("stages") or f"median {r.get('median_norm')}"
            print(f"{kind} {name}: clean {r['clean_acc']:.4f} {summary} "
                  f"({time.perf_counter() - t:.1f} s)", flush=True)

    commit = subprocess.run(["git", "-C", str(args.aa_src), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or args.aa_commit
    header = {
        "generator": GENERATOR,
        "autoattack": f"fra31/auto-attack {commit}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "safetensors": safetensors.__version__,
        "numpy": numpy.__version__,
        "cpu": platform.processor() or platform.machine(),
        "data": DATA_REL,
        "data_sha256": sha256_file(args.data),
        "batch_size": BS,
        "torch_threads": args.threads,
    }
    for path in args.merge:
        other = json.loads(path.read_text())
        for k in ("autoattack", "torch", "data_sha256", "batch_size", "torch_threads"):
            if other.get(k) != header[k]:
                raise SystemExit(f"--merge {path}: {k} is {other.get(k)!r}, this run has {header[k]!r}")
        have = {(c["case"], c["model"]) for c in cases}
        cases += [c for c in other["cases"] if (c["case"], c["model"]) not in have]
    order = {c: i for i, c in enumerate(CASES)}
    cases.sort(key=lambda c: order[c["case"]])
    write_json(args.out, header, cases)
    print(f"wrote {args.out} ({len(cases)} cases)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
