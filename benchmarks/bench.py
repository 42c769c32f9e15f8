"""laminar's benchmark: SAE training against the machine's matmul rate, extraction time and
memory, Parquet throughput, and a scaling table. Random-weight models with the true GPT-2 shapes
are built locally (no hub): right for cost, meaningless for science.

    .venv/bin/python benchmarks/bench.py                 # CPU, about 10 minutes on 2 cores
    .venv/bin/python benchmarks/bench.py --device cuda --sweep   # GPU: adds full-size sweeps

Prints a table and writes JSON (benchmarks/results-<device>.json). Where fewer epochs or tokens
are used than a real run, the table says so; rates are per FLOP, so they carry over."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import (
    COURSE,
    N_TOKENS,
    SHAPES,
    timed,
    timed_once,
    train_sae,
)
from benchmarks.models import bench_extract, sweep, sweep_activations
from benchmarks.precision import compare, limit, spread
from benchmarks.stepprofile import step_profile
from benchmarks.stream import stream_memory
from tasks import store
from tasks.config import Config
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
    laminar, course loop, for `rounds` rounds; medians with min-max (benchmarks.precision)."""
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


def bench_parquet(n: int, d: int, folder: Path) -> dict[str, float]:
    acts = np.random.default_rng(0).standard_normal((n, d), dtype=np.float32)
    idx = np.arange(n)
    path = folder / "layer.parquet"
    mb = acts.nbytes / 1e6

    def write() -> None:
        import pyarrow.parquet as pq

        with store.atomic_path(path) as tmp:
            pq.write_table(
                store.activation_table(idx, idx, idx, acts),
                tmp,
                compression="none",
                use_dictionary=False,
            )

    t_write = timed(write, "cpu", repeat=2)
    record = store.file_record(path)
    t_read = timed(lambda: store.read_activations(record), "cpu", repeat=2)
    assert np.array_equal(store.read_activations(record), acts)
    return {
        "MB": mb,
        "write_MB_s": mb / t_write,
        "read_MB_s": mb / t_read,
        "write_s": t_write,
        "read_s": t_read,
    }


def fixed_costs() -> dict[str, float]:
    """Seconds of a trivial Prefect flow on the ephemeral API, in a fresh process."""
    code = "from prefect import flow\n@flow\ndef f(): return 1\nf()"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, cwd=ROOT)
    return {"prefect_trivial_flow_s": time.perf_counter() - start}


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


def dask_fixed_cost(folder: Path) -> dict[str, float]:
    """Seconds to start laminar's local Dask cluster (2 workers), check it and close it, timed
    inside a flow (so Prefect's own start is not counted)."""
    code = (
        "import time\nfrom prefect import flow\nfrom tasks.cluster import fanout\n"
        "from tasks.config import Config\n"
        "@flow\ndef f():\n    t = time.perf_counter()\n"
        f"    with fanout(Config(task_runner='dask', artifacts_dir={str(folder)!r})):\n"
        "        pass\n    return time.perf_counter() - t\n"
        "if __name__ == '__main__':\n    print('DASK', f())\n"
    )
    script = folder / "dask_fixed.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, check=True, cwd=ROOT, env=env
    )
    line = next(x for x in out.stdout.splitlines() if x.startswith("DASK"))
    return {"dask_local_cluster_2_workers_s": float(line.split()[1])}


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


def section_sae(args: argparse.Namespace, n: int) -> dict[str, Any]:
    widths = (
        [(64, "small width")]
        if args.quick
        else [(3072, "gpt2-small"), (5120, "gpt2-large"), (256, "small width")]
    )
    rows = []
    for d, label in widths:
        rows.append({"shape": label, **bench_sae(n, d, args.epochs, args.device)})
        print_row("sae", {k: v for k, v in rows[-1].items() if k != "rounds"})
    out: dict[str, Any] = {"sae": rows}
    if args.device == "cuda":
        out["tf32"] = bench_tf32(n, 64 if args.quick else 5120, args.epochs, args.device)
        print_row("tf32", out["tf32"])
    return out


def section_extract(args: argparse.Namespace, n: int) -> dict[str, Any]:
    rows = {}
    for shape in [] if args.quick else SHAPES:
        for mode in ["load", "laminar"] + (["baseline"] if shape == "gpt2-small" else []):
            rows[f"{shape} {mode}"] = bench_extract(
                shape, mode, args.extract_seqs, args.device, args.models_dir, Config().extract_batch
            )
            print_row(f"extract {shape} {mode}", rows[f"{shape} {mode}"])
    return {"extract": rows}


def section_sweeps(args: argparse.Namespace, n: int) -> dict[str, Any]:
    """Full-size sweeps (--sweep), each shape's activations extracted once for every precision."""
    rows = []
    for shape in args.sweep_shapes.split(",") if args.sweep else []:
        made = sweep_activations(shape, args.device, args.models_dir)
        for precision in args.sweep_precisions.split(","):
            rows.append(sweep(shape, precision, args.device, made))
            print_row("sweep", rows[-1])
    return {"sweeps": rows}


def section_expect(args: argparse.Namespace, n: int) -> dict[str, Any]:
    from benchmarks.expect import estimates, quick_run  # needs Prefect: imported only here

    return {"expect": {**estimates(args.device), **quick_run(args.models_dir)}}


def section_bf16(args: argparse.Namespace, n: int) -> dict[str, Any]:
    """fp32 and bf16 epochs at both GPT-2 shapes, interleaved with their matmul limits."""
    rows = []
    for d in [64] if args.quick else [SHAPES["gpt2-small"][2], SHAPES["gpt2-large"][2]]:
        rows.append(compare(n, d, args.device, rounds=3, epochs=args.epochs))
        medians = {k: v["median"] if isinstance(v, dict) else v for k, v in rows[-1].items()}
        print_row("bf16", medians)
    return {"bf16": rows}


def section_profile(args: argparse.Namespace, n: int) -> dict[str, Any]:
    """Where a step's time goes, at both GPT-2 shapes, fp32 and bf16."""
    rows = []
    for d in [64] if args.quick else [SHAPES["gpt2-small"][2], SHAPES["gpt2-large"][2]]:
        for precision in ("fp32", "bf16"):
            rows.append(step_profile(n, d, precision, args.device))
            medians = {k: v["median"] if isinstance(v, dict) else v for k, v in rows[-1].items()}
            print_row("profile", {k: v for k, v in medians.items() if k != "rounds"})
    return {"profile": rows}


def section_recipes(args: argparse.Namespace, n: int) -> dict[str, Any]:
    """The field's architectures (--sae-arch) against their fp32 matmul limit, both shapes."""
    from benchmarks.recipes import compare as recipes_compare

    rows = []
    for d in [64] if args.quick else [SHAPES["gpt2-small"][2], SHAPES["gpt2-large"][2]]:
        rows.append(recipes_compare(n, d, args.device, rounds=1 if args.quick else 3))
        medians = {k: v["median"] if isinstance(v, dict) else v for k, v in rows[-1].items()}
        print_row("recipes", medians)
    return {"recipes": rows}


SECTIONS = {
    "sae": section_sae,
    "parquet": lambda a, n: {"parquet": bench_parquet(512 if a.quick else n, 5120, a.models_dir)},
    "extract": section_extract,
    "scaling": lambda a, n: {"scaling": [] if a.quick else scaling(a.device)},
    "sweeps": section_sweeps,
    "fixed": lambda a, n: {"fixed": {**fixed_costs(), **dask_fixed_cost(a.models_dir)}},
    "xl": lambda a, n: {"xl": xl_layer(512 if a.quick else n, a.epochs, a.device)},
    "expect": section_expect,
    "stream": lambda a, n: {"stream": stream_memory(a.models_dir, a.quick)},
    "bf16": section_bf16,
    "profile": section_profile,
    "recipes": section_recipes,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--epochs", type=int, default=2, help="epochs per SAE timing")
    parser.add_argument("--extract-seqs", type=int, default=2, help="1024-token sequences")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks it runs")
    parser.add_argument("--sweep", action="store_true", help="full-size sweeps (for a GPU)")
    parser.add_argument("--sweep-shapes", default=",".join(SHAPES), help="shapes to sweep")
    parser.add_argument("--sweep-precisions", default="fp32,tf32,bf16", help="their precisions")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help="comma-separated subset; results merge into --out",
    )
    parser.add_argument(
        "--tokens",
        type=int,
        default=None,
        help=f"rows of the SAE's batch (default {N_TOKENS:,}): fewer where bf16 is emulated, whose "
        "epochs ran about 100x slower than fp32's (docs/performance.md)",
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--models-dir", type=Path, default=ROOT / "benchmarks" / ".models")
    args = parser.parse_args()
    torch.manual_seed(0)
    n = args.tokens or (512 if args.quick else N_TOKENS)
    out = args.out or ROOT / "benchmarks" / (
        f"results-{args.device}{'-quick' if args.quick else ''}.json"
    )
    report = json.loads(out.read_text()) if out.exists() else {}
    report.update(device=args.device, machine=machine(args.device), N=n)
    for name in args.sections.split(","):
        result = SECTIONS[name](args, n)
        report.update(result)
        for key, value in result.items():
            if isinstance(value, dict) and key not in ("extract", "tf32"):
                print_row(key, value)
        if name in ("scaling", "stream"):
            for row in report[name]:
                print_row(name, row)
        out.write_text(json.dumps(report, indent=2))  # after each section: partial results kept
    print(f"wrote {out}")


def machine(device: str) -> str:
    """The GPU's name, or the CPU's model, family, threads and the flags that decide its matmul
    rates: 'AMD EPYC (family 26, model 2), 2 threads, flags avx2 avx512f avx512_bf16'. The
    family tells apart CPUs that /proc/cpuinfo names alike: an EPYC of family 26 runs bf16
    matmuls at 4x its fp32 rate, one whose bf16 runs at 2x is of an older family."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    from tasks.host import cpu_flags, cpu_name

    flags = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in cpu_flags())
    family = cpu_family()
    name = f"{cpu_name()} ({family})" if family else cpu_name()
    return f"{name}, {torch.get_num_threads()} threads, flags {flags or 'none of note'}"


def cpu_family() -> str:
    """'family 26, model 2' from /proc/cpuinfo's first processor; '' where it has none."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("cpu family", "model"):
                    fields.setdefault(key.strip(), value.strip())
                if not line.strip():  # the first processor's block ends
                    break
    except OSError:
        return ""
    if len(fields) < 2:
        return ""
    return f"family {fields['cpu family']}, model {fields['model']}"


def print_row(section: str, row: dict[str, Any]) -> None:
    cells = ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
    )
    print(f"{section:>24}: {cells}", flush=True)


if __name__ == "__main__":
    main()
