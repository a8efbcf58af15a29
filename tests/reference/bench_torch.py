"""PyTorch side of `cargo run --release --example bench`: the same PGD-L∞ hot path (forward,
input gradient, sign step, projection, clamp) on the same weights and the first 250 test digits,
batch 250, 10 steps, on the CPU with 2 threads. Prints ms per PGD step of the batch.

    /tmp/ref/bin/python tests/reference/bench_torch.py      # from the repository root
"""
import time
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def cnn():
    return nn.Sequential(nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 5, padding=2),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3136, 1024), nn.ReLU(), nn.Linear(1024, 10))


def pgd(model, x, y, eps=0.1, alpha=0.01, steps=10):
    adv = x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = nn.functional.cross_entropy(model(adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() + alpha * grad.sign()
        adv = (x + (adv - x).clamp(-eps, eps)).clamp(0, 1)
    return adv


def main():
    torch.set_num_threads(2)
    data = load_file(ROOT / "tests/reference/mnist_test.safetensors")
    x, y = data["images"][:250].float() / 255, data["labels"][:250]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, PGD-L∞ on 250 digits (batch 250)")
    for name, build in [("mnist_mlp", mlp), ("mnist_cnn", cnn)]:
        model = build()
        model.load_state_dict(load_file(ROOT / f"tests/fixtures/{name}.safetensors"))
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)  # input gradients only, as robust does
        pgd(model, x, y)  # warm-up
        reps, steps = 3, 10
        t = time.perf_counter()
        for _ in range(reps):
            pgd(model, x, y, steps=steps)
        per_step = (time.perf_counter() - t) / (reps * steps)
        print(f"{name}: {1e3 * per_step:.2f} ms per PGD step of the batch, {250 / per_step:.0f} sample-steps/s")


if __name__ == "__main__":
    main()
