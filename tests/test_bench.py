"""The benchmark runs (tiny sizes) and its fast path computes what the course's loop computes.
Its timings are read by people from the README, never asserted here."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT


def test_quick_benchmark_runs_and_agrees_with_the_baseline(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench.py"),
            "--quick",
            "--sections",
            "sae,parquet,xl,stream,bf16,profile",
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
    flop_per_epoch = 10 * sae["N"] * sae["d"] * sae["m"]  # five (N, d, m) matmuls
    assert sae["gflops"] == pytest.approx(flop_per_epoch / sae["s_per_epoch"] / 1e9)
    rounds = sae["rounds"]  # limit, laminar, course loop: interleaved, 3 times
    assert len(rounds) == 3 and sae["s_per_epoch"] == sorted(r["s"] for r in rounds)[1]
    ratios = sorted(r["baseline_s"] / r["s"] for r in rounds)
    assert [sae["speedup"][k] for k in ("min", "median", "max")] == pytest.approx(ratios)
    pct = sorted(100 * flop_per_epoch / r["s"] / 1e9 / r["limit"] for r in rounds)
    assert sae["pct_of_matmul"]["median"] == pytest.approx(pct[1])
    assert report["parquet"]["MB"] > 0 and report["parquet"]["read_MB_s"] > 0
    xl = report["xl"]  # one GPT-2-xl-shaped layer (d 6400) on 512 tokens, in a fresh process
    assert (xl["d"], xl["m"], xl["N"]) == (6400, 12800, 512)
    assert xl["peak_gb"] > xl["x_gb"] == 512 * 6400 * 4 / 1e9 and xl["s_per_epoch"] > 0
    small, big = report["stream"]  # minibatch training, each size in a fresh process
    assert (small["N"], big["N"], small["B"], small["d"]) == (512, 5120, 128, 64)
    assert big["file_gb"] > 5 * small["file_gb"] and small["peak_gb"] > 0.1
    [bf16] = report["bf16"]  # fp32 and bf16 interleaved with their own limits, 3 rounds
    for col in ("fp32_s", "bf16_s", "fp32_pct", "bf16_pct", "bf16_speedup"):
        spread = bf16[col]
        assert 0 < spread["min"] <= spread["median"] <= spread["max"], col
    assert (bf16["N"], bf16["d"], bf16["m"], bf16["rounds"]) == (512, 64, 128, 3)
    assert 0 < big["density_pct"] <= 100 * (128 // 3) / 128 + 1e-9 and len(big["losses"]) == 1
    for row in report["profile"]:  # one profiled step per round: its groups and Adam
        assert (row["N"], row["d"], len(row["rounds"])) == (512, 64, 3)
        flop = 10 * 512 * 64 * 128
        for r in row["rounds"]:  # operators' own times add up to at most the step's wall time
            parts = [r[f"{p}_s"] for p in ("matmul", "topk", "other")]
            assert min(parts) > 0 and sum(parts) <= r["step_s"] and r["adam_s"] > 0
            assert r["matmul_gflops"] == pytest.approx(flop / r["matmul_s"] / 1e9)
        pct = sorted(100 * r["topk_s"] / r["step_s"] for r in row["rounds"])
        assert row["topk_pct"]["median"] == pytest.approx(pct[1])
    assert [r["precision"] for r in report["profile"]] == ["fp32", "bf16"]


def test_abtest_times_a_commit_against_the_working_tree() -> None:
    """benchmarks/abtest.py imports tasks/sae.py as it was at a commit; against the commit whose
    step this is (the last one that changed tasks/sae.py), training is the same bit for bit."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import abtest
    from tasks import sae

    rev = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%H", "--", "tasks/sae.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if subprocess.run(
        ["git", "-C", str(ROOT), "diff", "--quiet", rev, "--", "tasks/sae.py"]
    ).returncode:
        pytest.skip("tasks/sae.py has uncommitted changes")
    with pytest.raises(SystemExit, match=r"'no-such-commit' has no tasks/sae\.py here"):
        abtest.sae_at("no-such-commit")
    base = abtest.sae_at(rev)
    assert base is not sae and base.loss_and_grad is not sae.loss_and_grad
    for precision in ("fp32", "bf16"):
        row = abtest.compare(base, 300, 32, precision, "cpu", rounds=2, epochs=2)
        assert row["same_weights"] and row["max_rel_loss_diff"] == 0.0
        assert row["speedup"]["median"] == pytest.approx(
            statistics.median(a / b for a, b in zip(*row["per_round_s"].values(), strict=True))
        )
