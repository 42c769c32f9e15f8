"""Put finished laminar runs side by side: one figure and one table.

    python flows/compare.py artifacts/reports/<a> artifacts/reports/<b> [--labels pre post]

Each argument is a report folder (it holds metrics.csv). The figure overlays density, final
loss and FVU against relative depth, one line per (run, model); the table has one row per
(model, layer) with each run's values and the difference (second minus first). Where the runs
have a provenance.json, every field in which they differ is printed (versions, commit, device,
model revision, article revision, hashes, times)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from tasks.cli import print_out
from tasks.provenance import differences
from tasks.settings import LaminarError, first_twice, plural, read_at_most, unwritable
from tasks.store import write_bytes

METRICS = ["density_pct", "final_loss", "fvu"]
# The field's measures (docs/measures.md), compared where every run has them: a published SAE
# family (--saes) beside laminar's own SAEs, or runs made before these columns existed
FIELD_METRICS = ["explained_variance", "ce_loss_score", "ce_delta", "kl_div_score"]


MAX_FILE = 16 << 20  # bytes: a report's metrics.csv or provenance.json is a few kB per layer
COLUMNS = ["model", "layer", "rel_depth", *METRICS]  # what every laminar metrics.csv has


def read_bounded(path: Path) -> str:
    """A file a user handed in, read within MAX_FILE bytes, as text."""
    raw = read_at_most(path, MAX_FILE, f"'{path}'", "a laminar report's file")
    return raw.decode("utf-8", errors="replace")


def read_run(folder: Path) -> list[dict[str, Any]]:
    """A report's metrics.csv, every value the comparison uses checked: a missing column or a
    value that is no number is one sentence naming the file, its line and its column."""
    path = folder / "metrics.csv"
    if not path.is_file():
        raise LaminarError(f"'{folder}' holds no metrics.csv: pass a laminar report folder.")
    reader = csv.DictReader(read_bounded(path).splitlines())
    if missing := [c for c in COLUMNS if c not in (reader.fieldnames or [])]:
        raise LaminarError(
            f"'{path}' has no {missing[0]} column: pass the folder of a finished laminar report."
        )
    rows = [parsed(r, path, i) for i, r in enumerate(reader, start=2)]  # line 1: the header
    if not rows:  # a header alone: a report cut short, or a copy that stopped
        raise LaminarError(
            f"'{path}' holds no layer's row: pass the folder of a finished laminar report."
        )
    return rows


def parsed(row: dict[str, str], path: Path, line: int) -> dict[str, Any]:
    """One metrics.csv row with its numbers as numbers (the field measures where present)."""
    out: dict[str, Any] = dict(row)
    for col, kind in [("layer", int), ("rel_depth", float), *((m, float) for m in METRICS)]:
        out[col] = number(row[col], kind, path, line, col)
    for m in FIELD_METRICS:
        if row.get(m):
            out[m] = number(row[m], float, path, line, m)
    return out


def number(text: str | None, kind: type, path: Path, line: int, col: str) -> Any:
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise LaminarError(
            f"'{path}' line {line}: {col} '{text}' is not a number: pass the folder of a "
            "finished laminar report."
        ) from None


def metrics_of(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The course's metrics, and each field measure that every row of every run has."""
    rows = [r for run in runs.values() for r in run]
    return METRICS + [m for m in FIELD_METRICS if all(isinstance(r.get(m), float) for r in rows)]


def side_by_side(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (model, layer) present in every run, with each run's metrics and deltas."""
    labels = list(runs)
    keyed = {lab: {(r["model"], r["layer"]): r for r in rows} for lab, rows in runs.items()}
    common = sorted(set.intersection(*(set(k) for k in keyed.values())))
    metrics = metrics_of(runs)
    rows = []
    for model, layer in common:
        row: dict[str, Any] = {
            "model": model,
            "layer": layer,
            "rel_depth": keyed[labels[0]][(model, layer)]["rel_depth"],
        }
        for m in metrics:
            for lab in labels:
                row[f"{m} [{lab}]"] = keyed[lab][(model, layer)][m]
            if len(labels) == 2:
                row[f"{m} Δ"] = row[f"{m} [{labels[1]}]"] - row[f"{m} [{labels[0]}]"]
        rows.append(row)
    return rows


def plot(runs: dict[str, list[dict[str, Any]]], path: Path) -> None:
    from tasks.figures import DRAWING, save_png, subplots

    with DRAWING:  # one figure at a time in a process: matplotlib is not thread-safe
        metrics = metrics_of(runs)
        fig, axes = subplots(1, len(metrics), figsize=(5 * len(metrics), 4.2))
        for ax, m in zip(axes, metrics, strict=True):
            for (lab, rows), style in zip(runs.items(), ["o-", "s--", "^:", "d-."], strict=False):
                for model in dict.fromkeys(r["model"] for r in rows):
                    pts = [r for r in rows if r["model"] == model]
                    ax.plot(
                        [r["rel_depth"] for r in pts],
                        [r[m] for r in pts],
                        style,
                        ms=3,
                        label=f"{model} [{lab}]",
                    )
            ax.set(title=m, xlabel="relative depth")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        save_png(fig, path)


def read_provenance(folders: list[Path], labels: list[str]) -> dict[str, dict[str, Any]]:
    """Each run's provenance.json (label -> record), for the runs that have one."""
    records = {}
    for lab, folder in zip(labels, folders, strict=True):
        path = folder / "provenance.json"
        if path.is_file():
            try:
                records[lab] = json.loads(read_bounded(path))
            except json.JSONDecodeError:
                raise LaminarError(
                    f"'{path}' is not JSON: pass the folder of a finished laminar report."
                ) from None
            if not isinstance(records[lab], dict):
                raise LaminarError(
                    f"'{path}' is not a provenance record (a JSON object): pass the folder of a "
                    "finished laminar report."
                )
    return records


def provenance_lines(records: dict[str, dict[str, Any]]) -> list[str]:
    """Each field of provenance.json where a run differs from the first, one line each."""
    if len(records) < 2:
        return ["provenance: fewer than two runs have a provenance.json; nothing compared"]
    (first, base), *others = records.items()
    lines = []
    for lab, other in others:
        diff = differences(base, other)
        differ = "differs" if len(diff) == 1 else "differ"
        lines.append(f"provenance: {plural(len(diff), 'field')} {differ} between {first} and {lab}")
        lines += [f"  {field}: {a!r} -> {b!r}" for field, a, b in diff]
    return lines


def make_out(out: Path) -> None:
    """--out as a folder this process can write, made once every input has been checked."""
    if why := unwritable(out):
        raise LaminarError(f"--out '{out}' cannot be a folder to write in ({why}): choose another.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path, help="report folders, 2 or more")
    parser.add_argument("--labels", nargs="+", help="names of the runs (default: folder names)")
    parser.add_argument("--out", default="artifacts/compare")
    args = parser.parse_args(argv)
    try:
        out, runs, records = checked(args.reports, args.labels, args.out)
        rows = side_by_side(runs)
        if not rows:
            raise LaminarError("the runs share no (model, layer): compare runs of one model.")
        make_out(out)
    except LaminarError as exc:
        print(f"laminar-compare: {exc}", file=sys.stderr)
        return 2
    plot(runs, out / "compare.png")
    lines = [",".join(rows[0])] + [",".join(str(v) for v in r.values()) for r in rows]
    write_bytes(out / "compare.csv", ("\n".join(lines) + "\n").encode())
    said = [f"compare: {out / 'compare.png'} and {out / 'compare.csv'}", *provenance_lines(records)]
    print_out("\n".join(said))
    return 0


def checked(
    folders: list[Path], labels: list[str] | None, out: str
) -> tuple[Path, dict[str, list[dict[str, Any]]], dict[str, dict[str, Any]]]:
    """The command's inputs, each checked in full before anything is written: --out, the
    runs' names, their metrics.csv rows and provenance.json records."""
    if not out.strip():  # an unset shell variable: Path('') is the working folder
        raise LaminarError(
            "--out is empty: give the folder the comparison is written in (the default is "
            "artifacts/compare)."
        )
    labels = labels or [p.name for p in folders]
    if len(folders) < 2 or len(labels) != len(folders):
        raise LaminarError("give at least two report folders and one --labels per folder.")
    if "" in [label.strip() for label in labels]:
        raise LaminarError(
            "a run has no name (an empty --labels, or a folder such as '.' with none): give "
            "--labels with a name for each folder."
        )
    if (twice := first_twice(labels)) is not None:
        raise LaminarError(
            f"two runs are named '{twice}' (by --labels, or else by their folders' names): "
            "give --labels with a name of its own for each folder."
        )
    runs = {lab: read_run(p) for lab, p in zip(labels, folders, strict=True)}
    return Path(out), runs, read_provenance(folders, labels)


if __name__ == "__main__":
    sys.exit(main())
