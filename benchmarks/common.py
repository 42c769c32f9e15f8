"""What every benchmark shares: the GPT-2 shapes, timing with device sync, a median with its
min-max, and laminar's SAE training at the course's settings."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from tasks.config import SAE_FIELDS, Config
from tasks.sae import fit

COURSE = Config()  # every benchmark trains the default (the course's) SAE settings
SHAPES = {  # name: (n_layer, d_model, d_mlp)
    "gpt2-small": (12, 768, 3072),
    "gpt2-large": (36, 1280, 5120),
}
N_TOKENS = 10 * 1023  # 10 x 1024 windows, position 0 dropped


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Any, device: str, repeat: int = 3) -> float:
    """Best wall time of `repeat` calls after one warm-up."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def timed_once(fn: Any, device: str) -> tuple[float, Any]:
    """Wall time and result of one call (for runs long enough that one is a measurement)."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def spread(values: list[float]) -> dict[str, float]:
    """The median of repeated timings with their min and max, as every figure is reported."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def train_sae(
    x: torch.Tensor, epochs: int, seed: int = 0, precision: str = "fp32", module: Any = fit
) -> fit.TrainResult:
    """laminar's SAE training with the default settings, for `epochs` epochs (`module`: the
    tasks.sae.fit to train with, or another version of it, as abtest.py loads)."""
    settings = {**COURSE.subset(*SAE_FIELDS), "epochs": epochs}
    return module.train(x, **settings, seed=seed, precision=precision)
