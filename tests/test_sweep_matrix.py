"""The verdict matrix of a sweep (tasks/sweep_matrix.py), from claims written by hand: its rows,
its markdown cell by cell, and the CSV and Parquet beside it."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow.parquet as pq

from tasks.sweep_matrix import matrix_markdown, verdict_rows, write_matrix

UNDEFINED = "fewer than 4 layers"
CLAIMS = {  # one point's claims.json: two models, ΔCE measured for neither
    "gpt2": {
        "density": {"rho": 0.9, "p": 0.0001234, "holds": True, "undefined": None},
        "loss": {"vertex": 0.51234, "holds": False, "undefined": None},
        "fvu": {"vertex": None, "holds": None, "undefined": UNDEFINED},
    },
    "gpt2-large": {
        "density": {"rho": -0.25, "p": 0.5, "holds": False, "undefined": None},
        "loss": {"vertex": 0.4, "holds": True, "undefined": None},
        "fvu": {"vertex": 0.45, "holds": True, "undefined": None},
    },
}


def test_rows_hold_each_claims_statistic_verdict_and_reason() -> None:
    rows = verdict_rows("epochs=75", {"epochs": "75"}, CLAIMS)
    assert rows[0] == {
        "point": "epochs=75",
        "epochs": "75",
        "model": "gpt2",
        "density_rho": 0.9,
        "density_p": 0.0001234,
        "density": "holds",
        "density_undefined": None,
        "loss_vertex": 0.51234,
        "loss": "does not hold",
        "loss_undefined": None,
        "fvu_vertex": None,
        "fvu": "undefined",
        "fvu_undefined": UNDEFINED,
    }
    assert [r["model"] for r in rows] == ["gpt2", "gpt2-large"]
    assert "ce_delta" not in rows[1]  # not measured: no column, not a verdict


def test_the_markdown_gives_each_cell_and_each_failed_point() -> None:
    rows = verdict_rows("epochs=75", {"epochs": "75"}, CLAIMS)
    md = matrix_markdown(rows, {"epochs": ["75", "600"]}, {"epochs=600": "killed (SIGKILL)"})
    lines = md.splitlines()
    assert lines[2].startswith("2 points over `epochs` ∈ {75, 600}.")
    assert lines[4:8] == [
        "| point | model | density rises (rho) | loss U (vertex) | FVU U (vertex) |",
        "|---|---|---|---|---|",
        "| epochs=75 | gpt2 | 🟢 holds (rho 0.9, p 0.000123) | 🔴 does not hold (vertex 0.512)"
        " | ⚪ undefined (vertex –) |",
        "| epochs=75 | gpt2-large | 🔴 does not hold (rho -0.25, p 0.5) | 🟢 holds (vertex 0.4)"
        " | 🟢 holds (vertex 0.45) |",
    ]
    assert lines[9:11] == [
        "Failed, so missing from the matrix (run the sweep again to retry them):",
        "- **epochs=600**: killed (SIGKILL)",
    ]
    assert lines[-1] == "![density and final loss against depth, a column per point](sweep.png)"


def test_a_sweep_whose_every_point_failed_has_no_table_rows_and_no_figure() -> None:
    md = matrix_markdown([], {"epochs": ["2"]}, {"epochs=2": "a layer failed"})
    assert "| epochs=" not in md and "sweep.png" not in md
    assert md.splitlines()[2].startswith("1 point over `epochs` ∈ {2}.")
    assert md.splitlines()[-1] == "- **epochs=2**: a layer failed"


def test_the_csv_and_parquet_hold_the_rows(tmp_path: Path) -> None:
    rows = verdict_rows("epochs=75", {"epochs": "75"}, CLAIMS)
    md = write_matrix(rows, {"epochs": ["75"]}, {}, tmp_path)
    assert (tmp_path / "sweep.md").read_text() == md
    with (tmp_path / "sweep.csv").open() as f:
        written = list(csv.DictReader(f))
    assert [r["fvu"] for r in written] == ["undefined", "holds"]
    assert [r["density_p"] for r in written] == ["0.0001234", "0.5"]
    table = pq.read_table(tmp_path / "sweep.parquet").to_pylist()
    assert [r["loss_vertex"] for r in table] == [0.51234, 0.4]
    assert [r["fvu_vertex"] for r in table] == [None, 0.45]
    files = sorted(p.name for p in tmp_path.iterdir())  # written atomically: no temporary left
    assert files == ["sweep.csv", "sweep.md", "sweep.parquet"]
