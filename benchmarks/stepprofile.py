"""Where an SAE step's time goes: one full-batch step of laminar's training (after a first step
has made its buffers), under torch.profiler, each operator's own time grouped into the five
matmuls, the top-k selection and the other passes over the latents (ReLU, masks, loss, casts);
Adam's update timed after it. Repeated for `rounds` rounds; medians with min-max."""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import COURSE, spread, timed_once
from tasks.sae import course

MATMULS = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::matmul"}
TOPK = {"aten::topk", "aten::amin", "laminar::topk"}  # laminar::topk: the selection


def group(op: str) -> str:
    return "matmul" if op in MATMULS else "topk" if op in TOPK else "other"


def own_seconds(prof: Any, device: str) -> dict[str, float]:
    """Each group's operators' own (self) time, in seconds, on the device that ran them."""
    attr = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    out = {"matmul": 0.0, "topk": 0.0, "other": 0.0}
    for event in prof.key_averages():
        if event.device_type != DeviceType.CPU:  # a CUDA kernel: counted in the op that ran it
            continue
        out[group(event.key)] += getattr(event, attr) / 1e6
    return out


# The step's matmuls in the order it runs them (tasks/sae/course.py), for the per-matmul times.
MATMUL_NAMES = ("encode", "decode", "dL/dz", "encoder's share", "decoder's share")


def matmul_seconds(prof: Any, device: str) -> dict[str, float]:
    """Each of the step's five (N, d, m) matmuls' own time, by name (the bf16 step's sixth, the
    (N, m) x (m, 1) row sums, is left out)."""
    attr = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    calls = [e for e in prof.events() if e.name in MATMULS and e.device_type == DeviceType.CPU]
    big = [
        e for e in calls if min(e.input_shapes[0] or [0]) > 1 and min(e.input_shapes[1] or [0]) > 1
    ]
    return {name: getattr(e, attr) / 1e6 for name, e in zip(MATMUL_NAMES, big, strict=False)}


def one_round(n: int, d: int, precision: str, device: str) -> dict[str, float]:
    x = torch.randn(n, d, device=device)
    model, opt = course.fresh(
        d, COURSE.expansion, COURSE.topk_frac, COURSE.lr, 0, device, precision
    )
    step = course.step_fn(x, precision, course.Workspace())
    step(model, COURSE.l1)  # first step: buffers, kernels
    opt.step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        wall, _ = timed_once(lambda: step(model, COURSE.l1), device)
    adam, _ = timed_once(opt.step, device)
    flop = 10 * n * d * model.weight.shape[0]
    parts = own_seconds(prof, device)
    return {
        "step_s": wall,
        **{f"{k}_s": v for k, v in parts.items()},
        "nonmatmul_s": parts["topk"] + parts["other"],
        "adam_s": adam,
        "matmul_gflops": flop / parts["matmul"] / 1e9,
        # GFLOP/s of each matmul alone (2·N·d·m each): which layouts the kernels run slowly
        **{f"{k} gflops": flop / 5 / v / 1e9 for k, v in matmul_seconds(prof, device).items()},
    }


def step_profile(n: int, d: int, precision: str, device: str, rounds: int = 3) -> dict[str, Any]:
    """One shape and precision: the step's time by group (seconds and % of the profiled step,
    whose total includes the profiler's own small cost; `nonmatmul` is top-k and other
    together, what the matrix units cannot speed up) and Adam's update."""
    runs = [one_round(n, d, precision, device) for _ in range(rounds)]
    out: dict[str, Any] = {"N": n, "d": d, "precision": precision, "rounds": runs}
    for key in runs[0]:
        out[key] = spread([r[key] for r in runs])
    for part in ("matmul", "topk", "other", "nonmatmul"):
        out[f"{part}_pct"] = spread([100 * r[f"{part}_s"] / r["step_s"] for r in runs])
    return out
