"""Report: the metrics table, the laminar-profile figure and a short report.md."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from prefect import task

from tasks import cache
from tasks.config import EXECUTION_FIELDS, Config
from tasks.store import atomic_path, file_record, write_bytes

COLUMNS = [
    "model",
    "layer",
    "n_layers",
    "rel_depth",
    "density_pct",
    "final_loss",
    "final_mse",
    "fvu",
    "l0",
    "dead_pct",
    "density_activation",
    "seconds",
    "device",
    "n_tokens",
    "d",
    "latent",
    "k",
]
PANELS = [
    ("final_loss", "final loss (MSE + l1·mean|z|)"),
    ("density_pct", "density (% non-zero latents)"),
    ("density_activation", "density × activation (scaled)"),
]


def metric_rows(results: list[dict[str, Any]], n_layers: dict[str, int]) -> list[dict[str, Any]]:
    """One row per (model, layer), sorted, with relative depth layer / (n_layers - 1)."""
    rows = []
    for r in sorted(results, key=lambda r: (r["name"], r["layer"])):
        n = n_layers[r["name"]]
        row = {**r, "model": r["name"], "n_layers": n, "rel_depth": r["layer"] / max(n - 1, 1)}
        rows.append({c: row[c] for c in COLUMNS})
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(15, 4.2))
    for ax, (col, title) in zip(axes, PANELS, strict=True):
        for model in dict.fromkeys(r["model"] for r in rows):
            pts = [r for r in rows if r["model"] == model]
            ax.plot([r["rel_depth"] for r in pts], [r[col] for r in pts], "o-", ms=3, label=model)
        ax.set(title=title, xlabel="relative depth (layer / (n_layers − 1))", xlim=(-0.03, 1.03))
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def markdown(cfg: Config, page: dict, tokens: dict, rows: list[dict], failed: list[str]) -> str:
    lines = [
        "# laminar profile",
        "",
        f"Article: {page['url']} (revision {page['revision_id']}, fetched {page['fetched_at']}); "
        f"{tokens['n_article_tokens']} tokens in the article, batch {cfg.n_seqs} × {cfg.seq_len} "
        f"({cfg.sampling}, seed {cfg.seed}); hook `{cfg.hook}`; position 0 "
        f"{'kept' if cfg.keep_first_token else 'dropped'}.",
        "",
        f"SAE: tied, latent = {cfg.expansion}·d, top-k fraction {cfg.topk_frac:.4g}, "
        f"Adam lr {cfg.lr:g}, l1 {cfg.l1:g}, {cfg.epochs} full-batch epochs.",
        "",
        "![laminar profile](laminar.png)",
        "",
        "| model | layer | rel. depth | density % | final loss | MSE | FVU | L0 | dead % | s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['model']} | {r['layer']} | {r['rel_depth']:.3f} | {r['density_pct']:.2f} | "
        f"{r['final_loss']:.5g} | {r['final_mse']:.5g} | {r['fvu']:.3f} | {r['l0']:.1f} | "
        f"{r['dead_pct']:.1f} | {r['seconds']:.1f} |"
        for r in rows
    ]
    if failed:
        lines += ["", "**Failed (not in the table; rerun to retry them):**", ""]
        lines += [f"- {f}" for f in failed]
    lines += ["", "Config:", "", "```json", cfg.model_dump_json(indent=2), "```", ""]
    return "\n".join(lines)


@task(
    name="report",
    task_run_name="report",
    cache_policy=cache.ContentKey(
        fields=tuple(f for f in Config.model_fields if f not in EXECUTION_FIELDS)
    ),
)
def write_report(
    cfg: Config,
    page: dict[str, Any],
    tokens: list[dict[str, Any]],
    extractions: list[dict[str, Any]],
    results: list[dict[str, Any]],
    failed: list[str],
) -> dict[str, Any]:
    """Write metrics.csv, metrics.parquet, loss_curves.parquet, laminar.png and report.md."""
    out = cfg.root / "reports" / cfg.digest()[:12]
    n_layers = {e["name"]: e["n_layers"] for e in extractions}
    rows = metric_rows(results, n_layers)
    table = pa.Table.from_pylist(rows) if rows else pa.table({c: [] for c in COLUMNS})
    with atomic_path(out / "metrics.parquet") as tmp:
        pq.write_table(table, tmp)
    with atomic_path(out / "metrics.csv") as tmp:
        pacsv.write_csv(table, tmp)
    curves = [
        {"model": r["name"], "layer": r["layer"], "epoch": i, "loss": v}
        for r in results
        for i, v in enumerate(r["loss_curve"])
    ]
    with atomic_path(out / "loss_curves.parquet") as tmp:
        pq.write_table(pa.Table.from_pylist(curves) if curves else pa.table({}), tmp)
    if rows:
        plot(rows, out / "laminar.png")
    write_bytes(out / "report.md", markdown(cfg, page, tokens[0], rows, failed).encode())
    files = ["metrics.csv", "metrics.parquet", "loss_curves.parquet", "report.md"]
    files += ["laminar.png"] if rows else []
    return {"dir": str(out), "files": [file_record(out / f) for f in files], "failed": failed}
