"""Report: one row per (model, layer) with relative depth; the files a person reads."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow.parquet as pq

from tasks.config import Config
from tasks.report import COLUMNS, metric_rows, write_report


def result(name: str, layer: int, density: float) -> dict:
    return {
        "name": name,
        "layer": layer,
        "density_pct": density,
        "final_loss": 1.5 - density / 100,
        "final_mse": 0.5,
        "fvu": 0.2,
        "l0": 3.0,
        "dead_pct": 0.0,
        "density_activation": 0.1,
        "seconds": 1.0,
        "device": "cpu",
        "n_tokens": 10,
        "d": 4,
        "latent": 8,
        "k": 2,
        "loss_curve": [2.0, 1.0 + layer],
    }


def test_rows_are_sorted_with_relative_depth() -> None:
    rows = metric_rows(
        [result("big", 35, 30), result("small", 11, 20), result("small", 0, 10)],
        {"small": 12, "big": 36},
    )
    assert [(r["model"], r["layer"], r["rel_depth"]) for r in rows] == [
        ("big", 35, 1.0),
        ("small", 0, 0.0),
        ("small", 11, 1.0),
    ]
    assert list(rows[0]) == COLUMNS


def test_report_files(tmp_path: Path) -> None:
    cfg = Config(artifacts_dir=str(tmp_path))
    page = {"url": "http://x/wiki/LED", "revision_id": 42, "fetched_at": "2026-01-01T00:00:00"}
    tokens = [{"n_article_tokens": 12345}]
    ext = [{"name": "m", "n_layers": 3}]
    out = write_report.fn(
        cfg, page, tokens, ext, [result("m", 2, 40), result("m", 0, 20)], ["sae m L1: boom"]
    )
    folder = Path(out["dir"])
    with open(folder / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["layer"], float(r["rel_depth"]), float(r["density_pct"])) for r in rows] == [
        ("0", 0.0, 20.0),
        ("2", 1.0, 40.0),
    ]
    assert pq.read_table(folder / "metrics.parquet").num_rows == 2
    curves = pq.read_table(folder / "loss_curves.parquet").to_pylist()
    assert {"model": "m", "layer": 2, "epoch": 1, "loss": 3.0} in curves and len(curves) == 4
    md = (folder / "report.md").read_text()
    assert "revision 42" in md and "12345 tokens" in md and "- sae m L1: boom" in md
    assert "| m | 2 | 1.000 | 40.00 |" in md
    png = (folder / "laminar.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert {Path(f["path"]).name for f in out["files"]} >= {"metrics.csv", "report.md"}
