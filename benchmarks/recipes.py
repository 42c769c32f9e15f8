"""The field's architectures (--sae-arch standard, topk, batchtopk) against the fp32 matmul limit
of their own FLOPs, at one shape, interleaved in one process: limit, then a full-batch epoch of
each architecture, for `rounds` rounds; medians with min-max.

An epoch of the full batch is one step: the forward pass (encode, decode: two (N, d, m)
matmuls), autograd's backward (W_enc's and W_dec's gradients and dL/dz: three more; b_dec
reaches the encoder through a (d,) product, tasks.sae.recipes.encode) and Adam. So 10·N·d·m FLOP
an epoch, as the course's; the top-k selection, the elementwise passes and Adam are what an
epoch spends beyond its matmuls at the limit."""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.common import COURSE, spread, timed_once
from benchmarks.precision import limit
from tasks.config import Config
from tasks.recipes import recipe_of
from tasks.sae import recipes

ARCHS = ("standard", "topk", "batchtopk")


def recipe(arch: str) -> recipes.Recipe:
    """SAELens's defaults (Config's), the course's L1 coefficient."""
    return recipe_of(Config(sae_arch=arch))


def epoch_seconds(x: torch.Tensor, arch: str, epochs: int) -> float:
    """Seconds per full-batch epoch, after a first step that makes the allocator's buffers."""
    d = x.shape[1]
    sae, opt = recipes.fresh(d, COURSE.expansion * d, recipe(arch), 0, x.device.type, COURSE.lr)
    sae.step(x)
    opt.step()

    def train() -> None:
        for _ in range(epochs):
            sae.step(x)
            opt.step()

    return timed_once(train, x.device.type)[0] / epochs


def compare(n: int, d: int, device: str, rounds: int = 3, epochs: int = 1) -> dict[str, Any]:
    """Per architecture: seconds an epoch and its share of the fp32 matmul limit."""
    m = COURSE.expansion * d
    x = torch.randn(n, d, device=device)
    flop = 10 * n * d * m
    rows: dict[str, dict[str, list[float]]] = {a: {"s": [], "pct": []} for a in ARCHS}
    limits = []
    for _ in range(rounds):
        rate = limit(n, d, m, "fp32", device)
        limits.append(rate)
        for arch in ARCHS:
            s = epoch_seconds(x, arch, epochs)
            rows[arch]["s"].append(s)
            rows[arch]["pct"].append(100 * flop / s / 1e9 / rate)
    out: dict[str, Any] = {"N": n, "d": d, "m": m, "rounds": rounds, "epochs": epochs}
    out["fp32_limit_gflops"] = spread(limits)
    for arch, cols in rows.items():
        out[f"{arch}_s"] = spread(cols["s"])
        out[f"{arch}_pct_of_matmul"] = spread(cols["pct"])
    return out
