"""PyTorch eager side of `cargo xtask bench` (`cargo run --release --example bench`): the same
workloads on the same weights and inputs, which the Rust side writes and names in the plan
arguments. PyTorch runs in a scratch virtualenv or on the GPU machine; it is never a dependency
of the project.

    python tests/reference/bench_torch.py --device cpu --threads 2 --reps 3 '{"key": "pgd_cnn", ...}'

Each plan argument is a JSON object: key, kind (pgd, fgsm, apgd, fab, fab-t, ibp, crown, smoothing), model
(mnist_mlp, mnist_cnn, resnet18, mnist_ibp, mnist_noise), weights, inputs, batch, eps, alpha,
steps, n0, n, sigma, once. Prints `RESULT <key> <throughput>` per row (the best of at least
`--reps` timed runs after a warm-up, and of more until they took `--min-time` seconds together,
or one run without it where `once` is true: a row that takes minutes; CUDA synchronised before
each clock read), in the unit the Rust side prints:
step·images/s for attacks (images/s for FGSM), samples/s for bounds and smoothing. A row whose
peer library is missing prints `SKIPPED <key> <why>`. With `--rss`, runs the rows and prints
`RESULT <key>_rss <peak resident KiB>` instead.

APGD is torchattacks' `APGD` (Croce & Hein's reference port); FAB and FAB-T are the official
AutoAttack code's `FABAttack_PT` (fra31/auto-attack, its source folder in `ROBUST_AUTOATTACK_SRC`); CROWN is auto_LiRPA's, imported
from `PYTHONPATH` (its PyPI release pins an old torch: run the upstream source, see README.md).
IBP and smoothing are written here, as their papers define them.
"""
import argparse
import json
import os
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file


def best_of_runs(f, sync, reps, min_time):
    """The best time of at least `reps` runs of `f`, and more until they took `min_time`
    seconds together: the rule of `examples/bench.rs`."""
    best, total, runs = float("inf"), 0.0, 0
    while runs < reps or (runs > 0 and total < min_time):
        t = time.perf_counter()
        f()
        sync()
        dt = time.perf_counter() - t
        best, total, runs = min(best, dt), total + dt, runs + 1
    return best


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def cnn():
    return nn.Sequential(nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 5, padding=2),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3136, 1024), nn.ReLU(), nn.Linear(1024, 10))


def small_cnn():
    return nn.Sequential(nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 4, stride=2, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10))


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    """torchvision's resnet18 names with the CIFAR 3×3 stem, as `robust_runtime::zoo::ResNet18`."""

    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        c_in = 64
        for i, (c_out, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)]):
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)))
            c_in = c_out
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(F.avg_pool2d(x, 4).flatten(1))


BUILD = {"mnist_mlp": mlp, "mnist_cnn": cnn, "resnet18": ResNet18, "mnist_ibp": small_cnn, "mnist_noise": small_cnn}


def pgd(model, x, y, eps, alpha, steps):
    adv = x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() + alpha * grad.sign()
        adv = (x + (adv - x).clamp(-eps, eps)).clamp(0, 1)
    return adv


def ibp_margins(model, x, y, eps):
    """Interval bound propagation (Gowal et al. 2018) through Conv2d/Linear/ReLU/Flatten, then
    the margin lower bounds z_y − z_j."""
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    for layer in model:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            mid, rad = (hi + lo) / 2, (hi - lo) / 2
            mid = layer(mid)
            if isinstance(layer, nn.Conv2d):
                rad = F.conv2d(rad, layer.weight.abs(), None, layer.stride, layer.padding)
            else:
                rad = rad @ layer.weight.abs().t()
            lo, hi = mid - rad, mid + rad
        elif isinstance(layer, nn.ReLU):
            lo, hi = lo.clamp(min=0), hi.clamp(min=0)
        else:
            lo, hi = layer(lo), layer(hi)
    return lo.gather(1, y[:, None]) - hi


def certify_smoothing(model, x, sigma, n0, n, batch=1000):
    """Cohen et al. 2019's CERTIFY up to the counts (the binomial bound is scalar work)."""
    def counts(num):
        c = torch.zeros(10, dtype=torch.long, device=x.device)
        left = num
        while left > 0:
            m = min(left, batch)
            left -= m
            noisy = x.unsqueeze(0) + sigma * torch.randn((m,) + tuple(x.shape), device=x.device)
            c += torch.bincount(model(noisy).argmax(1), minlength=10)
        return c
    guess = counts(n0).argmax()
    return counts(n)[guess]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--min-time", type=float, default=0.0,
                   help="keep timing past --reps until the timed runs took this many seconds together")
    p.add_argument("--breakdown", action="store_true", help="also time forward and forward + input gradient")
    p.add_argument("--rss", action="store_true", help="peak resident memory of running the rows once")
    p.add_argument("--precision", choices=["default", "f32", "tf32"], default="default",
                   help="CUDA f32 products: PyTorch's defaults, allow_tf32 off for matmul and cuDNN, or on for both")
    p.add_argument("plan", nargs="+")
    a = p.parse_args()
    if a.precision != "default":
        torch.backends.cuda.matmul.allow_tf32 = a.precision == "tf32"
        torch.backends.cudnn.allow_tf32 = a.precision == "tf32"
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{torch.get_num_threads()} threads"
    if not a.rss:
        tf32 = (f", TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, TF32 cuDNN {torch.backends.cudnn.allow_tf32}"
                if dev.type == "cuda" else "")
        print(f"torch {torch.__version__} on {a.device} ({where}{tf32})")
    for entry in a.plan:
        r = json.loads(entry)
        key, kind, batch = r["key"], r["kind"], r["batch"]
        if r["weights"].endswith(".onnx"):
            # The ONNX file itself, its nodes run as a PyTorch module (`onnx_crown_lirpa.py`).
            try:
                from onnx_crown_lirpa import OnnxNet
            except ImportError as e:
                print(f"SKIPPED {key} onnx not importable ({e.name})")
                continue
            model = OnnxNet(r["weights"])
        else:
            model = BUILD[r["model"]]()
            model.load_state_dict(load_file(r["weights"]))
        model = model.to(dev).eval()
        for q in model.parameters():
            q.requires_grad_(False)  # input gradients only, as robust does
        data = load_file(r["inputs"])
        x = data["x"][:batch].float().to(dev)
        y = data["y"][:batch].long().to(dev)
        eps, alpha, steps = r["eps"], r["alpha"], max(r["steps"], 1)
        if kind == "pgd":
            run, work = (lambda: pgd(model, x, y, eps, alpha, steps)), batch * steps
        elif kind == "fgsm":
            run, work = (lambda: pgd(model, x, y, eps, eps, 1)), batch
        elif kind == "apgd":
            try:
                import torchattacks
            except ImportError as e:
                print(f"SKIPPED {key} torchattacks not importable ({e.name})")
                continue
            atk = torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, loss="ce", seed=0)
            run, work = (lambda: atk(x, y)), batch * steps
        elif kind in ("fab", "fab-t"):
            # The official FAB of AutoAttack (fra31/auto-attack), from ROBUST_AUTOATTACK_SRC.
            src = os.environ.get("ROBUST_AUTOATTACK_SRC")
            if src:
                sys.path.insert(0, src)
            try:
                from autoattack.fab_pt import FABAttack_PT
            except ImportError as e:
                print(f"SKIPPED {key} autoattack not importable ({e.name}; set ROBUST_AUTOATTACK_SRC)")
                continue
            atk = FABAttack_PT(model, norm="Linf", n_restarts=1, n_iter=steps, eps=eps, seed=0,
                               targeted=kind == "fab-t", device=dev, n_target_classes=9)
            run, work = (lambda: atk.perturb(x, y)), batch
        elif kind == "ibp":
            run, work = (lambda: ibp_margins(model, x, y, eps)), batch
        elif kind == "crown":
            try:
                from auto_LiRPA import BoundedModule, BoundedTensor
                from auto_LiRPA.perturbations import PerturbationLpNorm
            except ImportError as e:
                print(f"SKIPPED {key} auto_LiRPA not importable ({e.name}; put its source on PYTHONPATH)")
                continue
            bmodel = BoundedModule(model, torch.zeros_like(x[:1]), device=dev)
            eye = torch.eye(10, device=dev)
            c = (eye[y].unsqueeze(1) - eye.unsqueeze(0)).to(dev)  # N × 10 × 10: z_y − z_j

            def crown():
                ptb = PerturbationLpNorm(norm=float("inf"), x_L=(x - eps).clamp(0, 1), x_U=(x + eps).clamp(0, 1))
                return bmodel.compute_bounds(x=(BoundedTensor(x, ptb),), C=c, method="CROWN", bound_upper=False)[0]
            run, work = crown, batch
        elif kind == "smoothing":
            def smoothing():
                return [certify_smoothing(model, x[i], r["sigma"], r["n0"], r["n"]) for i in range(batch)]
            run, work = smoothing, batch
        else:
            raise SystemExit(f"unknown kind {kind}")
        if a.rss:
            with torch.no_grad() if kind in ("ibp", "crown", "smoothing") else torch.enable_grad():
                run()
            print(f"RESULT {key}_rss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}")
            continue
        grad_free = kind in ("ibp", "crown", "smoothing")
        with torch.no_grad() if grad_free else torch.enable_grad():
            if not r.get("once"):
                run()  # warm-up
                sync()
            best = best_of_runs(run, sync, 1 if r.get("once") else a.reps, 0.0 if r.get("once") else a.min_time)
        unit = "images/s" if kind in ("fgsm", "fab", "fab-t") else ("step·images/s" if kind in ("pgd", "apgd") else "samples/s")
        print(f"  torch   {key:<44} {work / best:>10.1f} {unit} ({1e3 * best:.2f} ms per run)")
        if a.breakdown and kind == "pgd":
            def best_of(f):
                f()
                sync()
                return best_of_runs(f, sync, max(a.reps, 3), a.min_time)

            def gradient():
                xv = x.clone().requires_grad_(True)
                return torch.autograd.grad(F.cross_entropy(model(xv), y), xv)[0]

            with torch.no_grad():
                fwd = best_of(lambda: model(x))
            grad = best_of(gradient)
            print(f"          forward {1e3 * fwd:.2f} ms, forward + input gradient {1e3 * grad:.2f} ms, "
                  f"the rest of a step {1e3 * max(best / steps - grad, 0):.2f} ms")
        print(f"RESULT {key} {work / best}")


if __name__ == "__main__":
    main()
