"""A sweep's verdict matrix: for each point and model, each claim's statistic and verdict, read
from the point's own claims.json; written as sweep.md (the Prefect artifact's body), sweep.csv
and sweep.parquet."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from tasks import store
from tasks.settings import plural

# (claims.json key, the claim's name in the matrix, its statistic shown beside the verdict)
CLAIMS = [
    ("density", "density rises", "rho"),
    ("loss", "loss U", "vertex"),
    ("fvu", "FVU U", "vertex"),
    ("ce_delta", "ΔCE U", "vertex"),
]
MARKS = {"holds": "🟢 holds", "does not hold": "🔴 does not hold", "undefined": "⚪ undefined"}


def verdict(claim: dict[str, Any]) -> str:
    if claim.get("holds") is None:
        return "undefined"
    return "holds" if claim["holds"] else "does not hold"


def verdict_rows(label: str, values: dict[str, str], claims: dict[str, Any]) -> list[dict]:
    """One row per model of a point's claims.json: each claim's statistic, verdict and, where
    undefined, why (p-value beside density's ρ)."""
    rows = []
    for model, found in claims.items():
        row: dict[str, Any] = {"point": label, **values, "model": model}
        for key, _, stat in CLAIMS:
            claim = found.get(key)
            if claim is None:  # not measured in this point (ΔCE needs --eval-seqs)
                continue
            row[f"{key}_{stat}"] = claim.get(stat)
            if key == "density":
                row["density_p"] = claim.get("p")
            row[key] = verdict(claim)
            row[f"{key}_undefined"] = claim.get("undefined")
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def matrix_markdown(
    rows: list[dict[str, Any]], grid: dict[str, list[str]], failed: dict[str, str]
) -> str:
    """The verdict matrix: a row per (point, model), a column per claim, cells coloured; then
    each failed point (`failed`: point -> what it failed with)."""
    shown = [c for c in CLAIMS if any(c[0] in r for r in rows)]
    head = ["point", "model", *(f"{name} ({stat})" for _, name, stat in shown)]
    lines = [
        "# laminar sweep",
        "",
        f"{plural(len({r['point'] for r in rows} | set(failed)), 'point')} over "
        + ", ".join(f"`{f}` ∈ {{{', '.join(v)}}}" for f, v in grid.items())
        + ". Each cell: the verdict and its statistic (Spearman ρ with p for density, the U "
        "fit's vertex for the U rules); docs/experiment.md gives the rules.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [r["point"], r["model"]]
        for key, _, stat in shown:
            if key not in r:
                cells.append("–")
                continue
            extra = f", p {_cell(r['density_p'])}" if key == "density" else ""
            cells.append(f"{MARKS[r[key]]} ({stat} {_cell(r[f'{key}_{stat}'])}{extra})")
        lines.append("| " + " | ".join(cells) + " |")
    if failed:
        lines += ["", "Failed, so missing from the matrix (run the sweep again to retry them):"]
        lines += [f"- **{point}**: {why}" for point, why in failed.items()]
    if rows:
        lines += ["", "![density and final loss against depth, a column per point](sweep.png)"]
    return "\n".join(lines) + "\n"


def write_matrix(
    rows: list[dict[str, Any]], grid: dict[str, list[str]], failed: dict[str, str], folder: Path
) -> str:
    """sweep.md, sweep.csv and sweep.parquet in `folder`, each written atomically; the markdown
    is returned (the Prefect artifact's body)."""
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    md = matrix_markdown(rows, grid, failed)
    store.write_bytes(folder / "sweep.md", md.encode())
    columns = list(dict.fromkeys(k for r in rows for k in r))
    text = io.StringIO()
    writer = csv.DictWriter(text, columns)
    writer.writeheader()
    writer.writerows(rows)
    store.write_bytes(folder / "sweep.csv", text.getvalue().encode())
    table = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows])
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    store.write_bytes(folder / "sweep.parquet", sink.getvalue().to_pybytes())
    return md


def read_claims(report: str | Path) -> dict[str, Any]:
    return json.loads((Path(report) / "claims.json").read_text())
