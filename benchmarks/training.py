"""SAE training's speed: laminar's epoch against the course's loop written the straightforward
way and against the machine's matmul rate, TF32's effect (CUDA), a scaling table, and one
GPT-2-xl-shaped layer in a fresh process (its time and peak memory)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import COURSE, spread, timed_once, train_sae
from benchmarks.precision import limit
from tasks.precision import matmul_precision
from tasks.sae import course, fit, kernels, measures

ROOT = Path(__file__).resolve().parent.parent


def density_pct(model: course.TiedSAE, x: torch.Tensor) -> float:
    """% non-zero latents of the SAE on x (N, d), as laminar reports it."""
    return measures.metrics(model, [x], measures.input_stats([x])["x_var"])["density_pct"]


def course_loop(x: torch.Tensor, epochs: int, seed: int) -> tuple[list[float], float]:
    """The baseline: the course's SAE written the straightforward way (autograd, sorted top-k)."""
    d = x.shape[1]
    m = COURSE.expansion * d
    k = kernels.topk_k(m, COURSE.topk_frac)
    enc = torch.nn.Linear(d, m, bias=False).to(x.device)
    with torch.no_grad():
        enc.weight.copy_(course.TiedSAE(d, m, 0, torch.Generator().manual_seed(seed)).weight)
    opt = torch.optim.Adam(enc.parameters(), lr=COURSE.lr)
    losses = []
    for _ in range(epochs):
        z = torch.relu(enc(x))
        kth = torch.topk(z, k, dim=1).values[:, -1:]
        z = torch.where(z >= kth, z, torch.zeros_like(z))
        loss = torch.nn.functional.mse_loss(z @ enc.weight, x) + COURSE.l1 * z.abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        z = torch.relu(enc(x))
        kth = torch.topk(z, k, dim=1).values[:, -1:]
        density = 100 * ((z >= kth) & (z > 0)).float().mean().item()
    return losses, density


def bench_sae(n: int, d: int, epochs: int, device: str, rounds: int = 3) -> dict[str, Any]:
    """laminar's epoch against the course loop's and the fp32 matmul limit, interleaved: limit,
    laminar, course loop, for `rounds` rounds; medians with min-max (common.spread)."""
    x = torch.randn(n, d, device=device)
    m = COURSE.expansion * d
    flop = 10 * n * d * m * epochs

    def ours(x: torch.Tensor = x) -> fit.TrainResult:
        return train_sae(x, epochs)

    ours(x[:256]), course_loop(x[:256], 1, 0)  # warm-up: kernels, allocator, thread pool
    per_round = []
    for _ in range(rounds):
        rate = limit(n, d, m, "fp32", device)
        t_ours, res = timed_once(ours, device)
        t_base, (base_losses, base_density) = timed_once(lambda: course_loop(x, epochs, 0), device)
        per_round.append({"limit": rate, "s": t_ours / epochs, "baseline_s": t_base / epochs})
    s = statistics.median(r["s"] for r in per_round)
    density = density_pct(res.sae, x)
    return {
        "N": n,
        "d": d,
        "m": m,
        "epochs": epochs,
        "rounds": per_round,
        "matmul_gflops": spread([r["limit"] for r in per_round]),
        "s_per_epoch": s,
        "baseline_s_per_epoch": statistics.median(r["baseline_s"] for r in per_round),
        "gflops": flop / epochs / s / 1e9,
        "pct_of_matmul": spread(
            [100 * flop / epochs / r["s"] / 1e9 / r["limit"] for r in per_round]
        ),
        "baseline_pct_of_matmul": spread(
            [100 * flop / epochs / r["baseline_s"] / 1e9 / r["limit"] for r in per_round]
        ),
        "speedup": spread([r["baseline_s"] / r["s"] for r in per_round]),
        "max_rel_loss_diff": max(
            abs(a - b) / abs(b) for a, b in zip(res.losses, base_losses, strict=True)
        ),
        "density_diff_pct_points": abs(density - base_density),
    }


def bench_tf32(n: int, d: int, epochs: int, device: str) -> dict[str, Any]:
    """Effect of the opt-in TF32 precision on time, density and final loss (CUDA only)."""
    x = torch.randn(n, d, device=device)
    out = {}
    for precision in ["fp32", "tf32"]:
        with matmul_precision(precision):

            def run() -> fit.TrainResult:
                return train_sae(x, epochs)

            run()  # warm-up
            t, res = timed_once(run, device)
        out[precision] = {
            "s": t,
            "final_loss": res.losses[-1],
            "density_pct": density_pct(res.sae, x),
        }
    return out


def scaling(device: str) -> list[dict[str, float]]:
    """Seconds per epoch as N and d double (m = 2d): t grows with N·d², so predict from here."""
    rows = []
    for n, d in [(2560, 768), (5120, 768), (10240, 768), (5120, 1536), (5120, 3072)]:
        x = torch.randn(n, d, device=device)

        def run(x: torch.Tensor = x) -> fit.TrainResult:
            return train_sae(x, 2)

        run(x[:256])
        rows.append({"N": n, "d": d, "s_per_epoch": timed_once(run, device)[0] / 2})
    return rows


XL = (48, 1600, 6400)  # GPT-2 xl: n_layer, d_model, d_mlp (for the scale-out estimate)

# One SAE training at a GPT-2-xl layer's shape in a fresh process: seconds per epoch and peak
# memory (RSS on a CPU, allocated GPU memory on CUDA), what one Dask worker needs per layer.
_XL_CHILD = """
import json, resource, sys, time, torch
from benchmarks.common import train_sae
n, d, epochs, device = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
x = torch.randn(n, d, device=device)
train_sae(x[:256], 1)
if device == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
start = time.perf_counter()
train_sae(x, epochs)
if device == "cuda":
    torch.cuda.synchronize()
peak = (torch.cuda.max_memory_allocated() if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
print(json.dumps({"s_per_epoch": (time.perf_counter() - start) / epochs,
                  "peak_gb": peak / 1e9, "x_gb": x.numel() * 4 / 1e9}))
"""


def xl_layer(n: int, epochs: int, device: str) -> dict[str, Any]:
    _, _, d = XL
    cmd = [sys.executable, "-c", _XL_CHILD, str(n), str(d), str(epochs), device]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    return {"N": n, "d": d, "m": COURSE.expansion * d, "epochs": epochs, "device": device, **row}
