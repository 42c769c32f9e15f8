"""The benchmark runs (tiny sizes) and its fast path computes what the course's loop computes.
Its timings are read by people from docs/performance.md, never asserted here."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT


@pytest.mark.slow  # every section once, interleaved rounds
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
    flop = 10 * 512 * 64 * 128  # an epoch's time beyond its matmuls at the limit, per precision
    for p in ("fp32", "bf16"):
        beyond = bf16[f"{p}_s"]["median"] - flop / 1e9 / bf16[f"{p}_limit"]["median"]
        assert bf16[f"{p}_beyond_limit"]["min"] <= beyond + 1e-3
        assert bf16[f"{p}_beyond_limit"]["max"] < bf16[f"{p}_s"]["max"]
    assert 0 < big["density_pct"] <= 100 * (128 // 3) / 128 + 1e-9 and len(big["losses"]) == 1
    for row in report["profile"]:  # one profiled step per round: its groups and Adam
        assert (row["N"], row["d"], len(row["rounds"])) == (512, 64, 3)
        flop = 10 * 512 * 64 * 128
        for r in row["rounds"]:  # operators' own times add up to at most the step's wall time
            parts = [r[f"{p}_s"] for p in ("matmul", "topk", "other")]
            assert min(parts) > 0 and sum(parts) <= r["step_s"] and r["adam_s"] > 0
            assert r["matmul_gflops"] == pytest.approx(flop / r["matmul_s"] / 1e9)
            assert r["nonmatmul_s"] == pytest.approx(r["topk_s"] + r["other_s"])
        pct = sorted(100 * r["topk_s"] / r["step_s"] for r in row["rounds"])
        assert row["topk_pct"]["median"] == pytest.approx(pct[1])
        assert row["nonmatmul_s"]["median"] == sorted(r["nonmatmul_s"] for r in row["rounds"])[1]
    assert [r["precision"] for r in report["profile"]] == ["fp32", "bf16"]


def test_abtest_times_a_commit_against_the_working_tree() -> None:
    """benchmarks/abtest.py imports tasks/sae as it was at a commit; against the commit whose
    step this is (the last one that changed tasks/sae), training is the same bit for bit."""
    from benchmarks import abtest
    from tasks.sae import fit

    rev = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%H", "--", "tasks/sae"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if subprocess.run(
        ["git", "-C", str(ROOT), "diff", "--quiet", rev, "--", "tasks/sae"]
    ).returncode:
        pytest.skip("tasks/sae has uncommitted changes")
    with pytest.raises(SystemExit, match=r"'no-such-commit' has no tasks/sae here"):
        abtest.sae_at("no-such-commit")
    base = abtest.sae_at(rev)
    assert base is not fit and base.train is not fit.train
    for precision in ("fp32", "bf16"):
        row = abtest.compare(base, 300, 32, precision, "cpu", rounds=2, epochs=2)
        assert row["same_weights"] and row["max_rel_loss_diff"] == 0.0
        assert row["speedup"]["median"] == pytest.approx(
            statistics.median(a / b for a, b in zip(*row["per_round_s"].values(), strict=True))
        )


def test_the_benchmark_needs_no_prefect(tmp_path: Path) -> None:
    """A bare GPU image has torch, numpy, pyarrow and pydantic but not Prefect: bench.py's
    training sections run there (only the 'expect' section needs Prefect, and imports it)."""
    out = tmp_path / "bench.json"
    code = (
        "import runpy, sys\n"
        "sys.modules['prefect'] = None  # import prefect now raises ImportError\n"
        f"sys.argv = ['bench.py', '--quick', '--sections', 'sae,profile', '--out', {str(out)!r}]\n"
        f"runpy.run_path({str(ROOT / 'benchmarks' / 'bench.py')!r}, run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["sae"] and report["profile"]
    assert "threads, flags" in report["machine"]  # the CPU named with its matmul flags
    block = Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in block)}
    if "cpu family" in fields:  # x86 Linux: two EPYCs that rate bf16 2x and 4x are told apart
        family = f"(family {fields['cpu family']}, model {fields['model']}), "
        assert family in report["machine"], report["machine"]


def test_sweeps_time_training_only_against_their_own_precision(monkeypatch) -> None:
    """Each precision's floor is its own matmul rate (bf16 timed in bf16), and a layer's
    activations are read before its clock starts."""
    from benchmarks import models

    monkeypatch.setitem(models.SHAPES, "toy", (2, 16, 32))
    monkeypatch.setattr(models, "N_TOKENS", 64)
    log: list[str] = []
    monkeypatch.setattr(models, "limit", lambda n, d, m, p, dev: log.append(f"limit {p}") or 1.0)
    monkeypatch.setattr(models.store, "read_activations", lambda f: log.append("read") or f)
    real_timed = models.timed_once

    def timed(fn, device):  # a read inside the timed call would land between the two marks
        log.append("start")
        out = real_timed(fn, device)
        log.append("stop")
        return out

    monkeypatch.setattr(models, "timed_once", timed)
    x = np.random.default_rng(0).standard_normal((64, 32), dtype=np.float32)
    for precision in ("fp32", "bf16"):
        log.clear()
        row = models.sweep("toy", precision, "cpu", (1.5, [x, x]), epochs=2)
        want = "bf16" if precision == "bf16" else "fp32"
        assert log == [f"limit {want}", "read", "start", "stop", "read", "start", "stop"]
        assert row["floor_s"] == pytest.approx(10 * 64 * 32 * 64 * 2 * 2 / 1e9)
        assert row["extract_s"] == 1.5 and row["train_s"] > 0


def test_gpu_check_refuses_in_one_sentence(tmp_path: Path) -> None:
    """benchmarks/gpu_check.sh checks every part's name before it runs anything, and says what is
    missing (here: a CUDA device) instead of failing inside a part."""
    script = str(ROOT / "benchmarks" / "gpu_check.sh")
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    bad = subprocess.run(
        ["bash", script, "epochs", "nope"], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 2
    assert bad.stdout.strip() == (
        "gpu_check: unknown part 'nope'; the parts are: epochs small large-fast large-fp32 science."
    )
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the no-GPU refusal is not reachable")
    none = subprocess.run(["bash", script, "epochs"], capture_output=True, text=True, env=env)
    assert none.returncode == 2 and "torch sees no CUDA device here" in none.stdout
    assert not list(tmp_path.iterdir())  # nothing ran


def test_a_row_count_below_one_is_refused_in_one_sentence(tmp_path: Path) -> None:
    """--tokens 0 once fell back to the default batch unsaid (and below 0 failed in torch)."""
    out = tmp_path / "bench.json"
    bench = [sys.executable, str(ROOT / "benchmarks" / "bench.py")]
    done = subprocess.run(
        [*bench, "--tokens", "0", "--out", str(out)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == (
        "bench.py: error: --tokens 0 is not a row count: give 1 or more"
    )
    assert not out.exists()
