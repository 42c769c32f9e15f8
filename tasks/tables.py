"""The report's tables: one row per (model, layer) with the mean and sd over SAE seeds
(metrics), one row per SAE (metrics_by_seed), one per epoch (loss_curves), each as Parquet and
CSV. Their columns are the declared ones (tasks.columns)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tasks import columns
from tasks.records import LayerResult
from tasks.store import atomic_path

# The tables' columns, from their declarations (tasks.columns)
SPREAD = columns.SPREAD  # averaged over SAE seeds, with <column>_sd
COLUMNS = columns.METRICS
ARTIFACT_COLUMNS = columns.UI  # the UI's table: the course's measures, then the field's headline


def metric_rows(results: list[LayerResult], n_layers: dict[str, int]) -> list[dict[str, Any]]:
    """One row per (model, layer): the mean over SAE seeds, `<metric>_sd` their spread (None
    for one seed: no spread is measured), relative depth = layer / (n_layers - 1)."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in results:
        columns.check_declared(r, f"the result of {r['name']} L{r['layer']}")
        groups.setdefault((r["name"], r["layer"]), []).append(r)
    rows = []
    for (name, layer), runs in sorted(groups.items()):
        n = n_layers[name]
        row = {
            **runs[0],
            "model": name,
            "n_layers": n,
            "rel_depth": layer / max(n - 1, 1),
            "n_seeds": len(runs),
            "seconds": sum(r["seconds"] for r in runs),
        }
        for col in SPREAD:
            row[col], row[f"{col}_sd"] = mean_sd([r.get(col) for r in runs])
        rows.append({c: row.get(c) for c in COLUMNS})
    return rows


def mean_sd(vals: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sd over seeds (sd None for one seed); None where any seed has no value."""
    if any(v is None for v in vals):
        return None, None
    nums = [float(v) for v in vals if v is not None]
    return statistics.fmean(nums), statistics.stdev(nums) if len(nums) > 1 else None


def write_tables(results: list[LayerResult], rows: list[dict[str, Any]], out: Path) -> list[str]:
    """metrics (`rows`, from metric_rows), metrics_by_seed and loss_curves as Parquet and CSV
    in `out`; the names of the files written (a table with no rows is not written)."""
    by_seed = sorted(
        ({c: r.get(c) for c in columns.BY_SEED} | {"model": r["name"]} for r in results),
        key=lambda r: (r["model"], r["layer"], r["sae_seed"]),
    )
    curves = [
        {"model": r["name"], "layer": r["layer"], "sae_seed": r["sae_seed"], "epoch": i, "loss": v}
        for r in results
        for i, v in enumerate(r["loss_curve"])
    ]
    written = []
    for stem, table in {"metrics": rows, "metrics_by_seed": by_seed, "loss_curves": curves}.items():
        if table:
            _write_table(table, out, stem)
            written += [f"{stem}.csv", f"{stem}.parquet"]
    return written


def _write_table(rows: list[dict[str, Any]], folder: Path, stem: str) -> None:
    table = pa.Table.from_pylist(rows)
    with atomic_path(folder / f"{stem}.parquet") as tmp:
        pq.write_table(table, tmp)
    with atomic_path(folder / f"{stem}.csv") as tmp:
        pacsv.write_csv(table, tmp)
