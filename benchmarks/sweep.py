"""A sweep's wall time against the sum of its points run alone, on a tiny model: `laminar-sweep`
over --sae-arch course,standard,topk in a fresh artifacts dir, then `laminar` at each point in a
fresh artifacts dir of its own, interleaved for `--rounds` rounds (each command a process, as a
user runs it, its temporary Prefect server included); medians with min-max. With
`--task-runner dask`, every command runs on Dask: the sweep's points at once on one local
cluster, each point alone on a local cluster of its own.

    .venv/bin/python benchmarks/sweep.py --out benchmarks/results-sweep.json
    .venv/bin/python benchmarks/sweep.py --task-runner dask \
        --out benchmarks/results-sweep-dask.json"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tasks.host import describe_device

ROOT = Path(__file__).resolve().parent.parent
GRID = ("course", "standard", "topk")


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--task-runner", choices=("thread", "dask"), default="thread")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import ARTICLE, TOKENIZER_DIR, ArticleServer, article_prose, make_model, wiki_page

    bin_dir = Path(sys.executable).parent
    server = ArticleServer()
    server.routes[ARTICLE] = (200, wiki_page(article_prose(100)).encode())
    rows: dict[str, list[float]] = {"sweep_s": [], "alone_sum_s": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model = make_model(Path(tmp) / "tiny6", TOKENIZER_DIR, n_layer=6)
            base = ["--models", str(model), "--urls", server.url(ARTICLE), "--device", "cpu"]
            base += ["--n-seqs", "8", "--seq-len", "64", "--epochs", "20", "--k", "16"]
            base += ["--eval-seqs", "0", "--task-runner", args.task_runner]
            for r in range(args.rounds):
                root = Path(tmp) / f"r{r}"
                grid = ["--grid", "sae_arch=" + ",".join(GRID)]
                sweep = [str(bin_dir / "laminar-sweep"), *base, *grid]
                rows["sweep_s"].append(timed([*sweep, "--artifacts-dir", str(root / "sweep")]))
                rows["alone_sum_s"].append(
                    sum(
                        timed(
                            [
                                str(bin_dir / "laminar"),
                                *base,
                                "--sae-arch",
                                arch,
                                "--artifacts-dir",
                                str(root / arch),
                            ]
                        )
                        for arch in GRID
                    )
                )
    finally:
        server.close()
    ratio = [a / s for a, s in zip(rows["alone_sum_s"], rows["sweep_s"], strict=True)]
    report = {
        "machine": describe_device("cpu"),
        "grid": {"sae_arch": list(GRID)},
        "task_runner": args.task_runner,
        "model": "random-weight GPT-2, 6 layers, d_model 64; 8 x 64 tokens, 20 epochs",
        "rounds": args.rounds,
        **{
            k: {"median": statistics.median(v), "min": min(v), "max": max(v)}
            for k, v in rows.items()
        },
        "alone_over_sweep": {
            "median": statistics.median(ratio),
            "min": min(ratio),
            "max": max(ratio),
        },
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
