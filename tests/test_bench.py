"""The benchmark runs (tiny sizes) and its fast path computes what the course's loop computes.
Its timings are read by people from the README, never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_quick_benchmark_runs_and_agrees_with_the_baseline(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench.py"),
            "--quick",
            "--sections",
            "sae,parquet",
            "--out",
            str(out),
            "--models-dir",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    report = json.loads(out.read_text())
    [sae] = report["sae"]
    assert sae["max_rel_loss_diff"] < 1e-5 and sae["density_diff_pct_points"] == 0
    assert sae["gflops"] > 0 and sae["pct_of_matmul"] > 0
    assert report["parquet"]["MB"] > 0 and report["parquet"]["read_MB_s"] > 0
