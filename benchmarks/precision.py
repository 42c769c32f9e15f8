"""fp32 against bf16 SAE epochs, each against the matmul limit of its own precision, measured
interleaved in one process: limit, epoch, limit, epoch, ... for `rounds` rounds, so a machine
that slows down or speeds up mid-run moves both sides of each ratio. Reported as the median with
min-max over the rounds."""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.common import COURSE, spread, timed_once, train_sae

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def limit(n: int, d: int, m: int, precision: str, device: str, repeat: int = 3) -> float:
    """GFLOP/s of the SAE's (N, d) x (d, m) matmul in `precision`: the best of `repeat`."""
    x = torch.randn(n, d, device=device, dtype=DTYPES[precision])
    w = torch.randn(m, d, device=device, dtype=DTYPES[precision])
    torch.mm(x[:64], w.t())
    best = min(timed_once(lambda: torch.mm(x, w.t()), device)[0] for _ in range(repeat))
    return 2 * n * d * m / best / 1e9


def epoch_seconds(x: torch.Tensor, precision: str, epochs: int) -> float:
    """Seconds per epoch of laminar's training (the course's settings) in `precision`."""
    seconds, _ = timed_once(lambda: train_sae(x, epochs, precision=precision), x.device.type)
    return seconds / epochs


def compare(n: int, d: int, device: str, rounds: int = 3, epochs: int = 2) -> dict[str, Any]:
    """One shape: per precision the limit, the epoch time and the epoch's share of its limit,
    and the bf16 speed-up, each as median and min-max over interleaved rounds."""
    m = COURSE.expansion * d
    x = torch.randn(n, d, device=device)
    flop = 10 * n * d * m  # five (N, d, m) matmuls an epoch
    train_sae(x[:256], 1, precision="bf16")  # warm-up
    rows: dict[str, dict[str, list[float]]] = {
        p: {"limit": [], "s": [], "pct": [], "beyond_limit": []} for p in DTYPES
    }
    for _ in range(rounds):
        for precision in DTYPES:
            rate = limit(n, d, m, precision, device)
            s = epoch_seconds(x, precision, epochs)
            rows[precision]["limit"].append(rate)
            rows[precision]["s"].append(s)
            rows[precision]["pct"].append(100 * flop / s / 1e9 / rate)
            # seconds an epoch spends beyond its five matmuls at the limit: top-k, elementwise
            # passes, Adam, and the matmuls' own shortfall
            rows[precision]["beyond_limit"].append(s - flop / 1e9 / rate)
    speedup = [a / b for a, b in zip(rows["fp32"]["s"], rows["bf16"]["s"], strict=True)]
    out: dict[str, Any] = {"N": n, "d": d, "m": m, "rounds": rounds, "epochs": epochs}
    for precision, cols in rows.items():
        for col, values in cols.items():
            out[f"{precision}_{col}"] = spread(values)
    out["bf16_speedup"] = spread(speedup)
    return out
