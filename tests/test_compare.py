"""Comparing two finished runs: a row per shared (model, layer) with both values and the delta."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from flows.compare import main


def write_run(folder: Path, density: list[float]) -> Path:
    folder.mkdir(parents=True)
    with open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["model", "layer", "rel_depth", "density_pct", "final_loss", "fvu"])
        w.writeheader()
        for i, d in enumerate(density):
            w.writerow(
                {
                    "model": "gpt2",
                    "layer": i,
                    "rel_depth": i / (len(density) - 1),
                    "density_pct": d,
                    "final_loss": 1.0 + i,
                    "fvu": 0.5,
                }
            )
    return folder


def test_two_runs_side_by_side(tmp_path: Path) -> None:
    a = write_run(tmp_path / "pre", [10.0, 20.0, 30.0])
    b = write_run(tmp_path / "post", [12.0, 19.0])
    out = tmp_path / "cmp"
    assert main([str(a), str(b), "--labels", "pre", "post", "--out", str(out)]) == 0
    with open(out / "compare.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["layer"] for r in rows] == ["0", "1"]  # layer 2 only in one run
    assert float(rows[0]["density_pct Δ"]) == 2.0 and float(rows[1]["density_pct Δ"]) == -1.0
    assert float(rows[1]["density_pct [pre]"]) == 20.0
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_not_a_report_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write_run(tmp_path / "a", [1.0, 2.0])
    assert main([str(a), str(tmp_path)]) == 2
    assert "holds no metrics.csv: pass a laminar report folder." in capsys.readouterr().err
