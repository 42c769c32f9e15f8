"""The field's architectures' step at two commits, interleaved in one process: seconds per
full-batch epoch (one step and Adam) of tasks/sae/recipes.py at `--base` and as it is
(SAELens's defaults, --k 100, as benchmarks/recipes.py), and the share of the fp32 matmul limit
the current step reaches on its 10·N·d·m FLOPs; medians with min-max over `--rounds`.

    .venv/bin/python -m benchmarks.recipes_ab --base 9e4ca23 --n 10230 --d 3072"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch

from benchmarks.common import spread
from benchmarks.machine import machine
from benchmarks.precision import limit
from tasks.config import Config
from tasks.recipes import recipe_of
from tasks.sae import recipes

ROOT = Path(__file__).resolve().parent.parent
ARCHS = ("standard", "topk", "batchtopk")


def module_at(commit: str, folder: Path) -> ModuleType:
    """tasks/sae/recipes.py as it was at `commit`, imported under another name."""
    source = subprocess.run(
        ["git", "show", f"{commit}:tasks/sae/recipes.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = folder / "recipes_base.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("recipes_base", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["recipes_base"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def epoch_seconds(module: ModuleType, arch: str, x: torch.Tensor) -> float:
    """One timed full-batch step and Adam, after one that makes the allocator's buffers."""
    d = x.shape[1]
    recipe = module.Recipe(**dataclasses.asdict(recipe_of(Config(sae_arch=arch, k=100))))
    sae, opt = module.fresh(d, 2 * d, recipe, 0, "cpu", 1e-4)
    sae.step(x)
    opt.step()
    start = time.perf_counter()
    sae.step(x)
    opt.step()
    return time.perf_counter() - start


def spread_text(values: list[float], digits: int = 2) -> str:
    """common.spread as printed: 'median (min–max)'."""
    s = spread(values)
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="the commit to compare against")
    parser.add_argument("--n", type=int, default=10230)
    parser.add_argument("--d", type=int, default=3072)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--archs", default=",".join(ARCHS), help="comma-separated: " + " ".join(ARCHS)
    )
    args = parser.parse_args()
    archs = args.archs.split(",")
    n, d, m = args.n, args.d, 2 * args.d
    x = torch.randn(n, d)
    with tempfile.TemporaryDirectory() as tmp:
        base = module_at(args.base, Path(tmp))
        times: dict[tuple[str, str], list[float]] = {}
        limits = []
        for _ in range(args.rounds):
            limits.append(limit(n, d, m, "fp32", "cpu"))
            for arch in archs:
                for name, module in (("base", base), ("this", recipes)):
                    times.setdefault((arch, name), []).append(epoch_seconds(module, arch, x))
    print(
        f"cpu: {machine('cpu')}; N {n}, d {d}, m {m}; fp32 limit {spread_text(limits, 0)} GFLOP/s"
    )
    for arch in archs:
        old, new = times[(arch, "base")], times[(arch, "this")]
        ratio = [a / b for a, b in zip(old, new, strict=True)]
        pct = [100 * 10 * n * d * m / s / 1e9 / r for s, r in zip(new, limits, strict=True)]
        print(
            f"{arch}: {args.base} {spread_text(old)} s, this {spread_text(new)} s, "
            f"{spread_text(ratio, 3)}x; this at {spread_text(pct, 0)}% of the limit"
        )


if __name__ == "__main__":
    main()
