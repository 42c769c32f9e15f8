"""laminar's benchmark, the driver of its sections: SAE training against the machine's matmul
rate (training.py), extraction time and memory (models.py), Parquet throughput (parquet.py),
fixed costs (fixed.py), fp32 against bf16 (precision.py, stepprofile.py) and a scaling table.
Random-weight models with the true GPT-2 shapes are built locally (no hub): right for cost,
meaningless for science.

    .venv/bin/python benchmarks/bench.py                 # CPU, every section (docs/performance.md)
    .venv/bin/python benchmarks/bench.py --device cuda --sweep   # GPU: adds full-size sweeps

Prints a table and writes JSON (benchmarks/results-<device>.json). Where fewer epochs or tokens
are used than a real run, the table says so; rates are per FLOP, so they carry over."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import N_TOKENS, SHAPES
from benchmarks.fixed import dask_fixed_cost, fixed_costs
from benchmarks.machine import machine
from benchmarks.models import bench_extract, sweep, sweep_activations
from benchmarks.parquet import bench_parquet
from benchmarks.precision import compare
from benchmarks.stepprofile import step_profile
from benchmarks.stream import stream_memory
from benchmarks.training import bench_sae, bench_tf32, scaling, xl_layer
from tasks.config import Config

ROOT = Path(__file__).resolve().parent.parent


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
    if args.tokens is not None and args.tokens < 1:
        parser.error(f"--tokens {args.tokens} is not a row count: give 1 or more")
    torch.manual_seed(0)
    n = args.tokens if args.tokens is not None else (512 if args.quick else N_TOKENS)
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


def print_row(section: str, row: dict[str, Any]) -> None:
    cells = ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
    )
    print(f"{section:>24}: {cells}", flush=True)


if __name__ == "__main__":
    main()
