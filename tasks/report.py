"""Report: report.md with the claims judged, beside the tables (tasks.tables) and figures
(tasks.figures) it shows, and the same table and report as Prefect artifacts under stable keys
(so the UI keeps their history)."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks import cache, columns, figures, paths, provenance, tables
from tasks.config import EXECUTION_FIELDS, Config
from tasks.records import (
    Batch,
    EvalBatch,
    Extraction,
    FileRecord,
    LayerResult,
    Page,
    Report,
    Text,
)
from tasks.stats import claims, claims_markdown
from tasks.store import file_record, write_bytes, write_json

UNDEFINED = columns.group("undefined")  # why a score is undefined, listed under the table
TABLE_KEY, REPORT_KEY = "laminar-metrics", "laminar-report"


def fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def pm(row: dict[str, Any], col: str, spec: str) -> str:
    """'value ± sd' over seeds; the sd '—' where there is none (one seed, a published SAE)."""
    return f"{fmt(row[col], spec)} ± {fmt(row.get(f'{col}_sd'), spec)}"


def eval_windows(h: EvalBatch) -> str:
    """'2 windows, held out (disjoint from the training windows)', or how many are
    in-sample."""
    if not h["in_sample"]:
        return f"{h['held_out']} windows, held out (disjoint from the training windows)"
    return (
        f"{h['held_out'] + h['in_sample']} windows, {h['held_out']} held out and "
        f"**{h['in_sample']} in-sample** (training windows: the articles have room for no more "
        "beside the training windows)"
    )


def field_table(rows: list[dict[str, Any]], holdouts: list[EvalBatch]) -> list[str]:
    """The measures the field reports (SAELens, SAEBench; docs/measures.md), one row a layer."""
    if not rows:
        return []
    if not holdouts:
        where = "not measured (--eval-seqs 0, or --no-save-saes: no SAE kept to splice in)"
    else:
        where = eval_windows(holdouts[0])
    lines = [
        "## Measures the field uses",
        "",
        f"Explained variance, ‖x̂‖/‖x‖, cosine and dense % on the training tokens; CE and KL with "
        f"the SAE spliced in on {where}, and with the hook zeroed (ablation). ± is the sd over "
        "SAE seeds ('—': one seed, or a published SAE). A score is undefined ('—') where the "
        "ablation's effect is within its noise or the wrong way (the reasons follow the table).",
        "",
        "| model | layer | expl. var | ‖x̂‖/‖x‖ | cos | dense % | CE clean | CE SAE | "
        "CE ablation | ΔCE | CE score | KL SAE | KL ablation | KL score |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    plain = {"explained_variance": ".3f", "l2_ratio": ".3f", "cossim": ".3f", "dense_pct": ".1f"}
    spliced = {"ce_clean": ".4f", "ce_sae": ".4f", "ce_ablation": ".4f", "ce_delta": ".4f"}
    spliced |= {"ce_loss_score": ".3f", "kl_sae": ".4f", "kl_ablation": ".4f"}
    spliced |= {"kl_div_score": ".3f"}
    why = []
    for r in rows:
        cells = [r["model"], str(r["layer"]), *(fmt(r[c], f) for c, f in plain.items())]
        cells += [pm(r, c, f) if r[c] is not None else "—" for c, f in spliced.items()]
        lines.append("| " + " | ".join(cells) + " |")
        why += [f"- {r['model']} L{r['layer']} {c[:-10]}: {r[c]}." for c in UNDEFINED if r.get(c)]
    return [*lines, "", *(["Undefined scores:", "", *why, ""] if why else [])]


def stability_table(rows: list[dict[str, Any]]) -> list[str]:
    """Do fresh SAEs find the same latents (tasks.sae.stability), where two seeds were kept."""
    measured = [r for r in rows if r.get("stability_mmcs") is not None]
    if not measured:
        return []
    lines = [
        "## Do fresh SAEs find the same latents?",
        "",
        "The first two SAE seeds of each layer compared by decoder direction (Paulo & Belrose "
        "2025): the share of the first seed's live latents with a match of cosine ≥ 0.7 in the "
        "second seed's SAE, and the mean over them of the best cosine (MMCS).",
        "",
        "| model | layer | matched share | MMCS |",
        "|---|---:|---:|---:|",
    ]
    for r in measured:
        lines.append(
            f"| {r['model']} | {r['layer']} | {fmt(r['stability_shared'], '.3f')} | "
            f"{r['stability_mmcs']:.3f} |"
        )
    return [*lines, ""]


def epochs_of(cfg: Config) -> str:
    if cfg.batch_tokens:
        return f"epochs in shuffled minibatches of {cfg.batch_tokens} tokens"
    return "full-batch epochs"


def articles_markdown(prov: dict, out: Path) -> list[str]:
    """One line per article: its URL, revision, text (linked), tokens and windows taken (of the
    first tokenizer's batch)."""
    per_article = prov["tokens"][0]["per_article"]
    lines = []
    for art, n in zip(prov["articles"], per_article, strict=True):
        text = os.path.relpath(art["text_path"], out)
        lines.append(
            f"- Article: {art['url']} (revision {art['revision_id']}, fetched "
            f"{art['fetched_at']}): {n['tokens']} tokens, {n['windows']} windows; the text fed "
            f"to the models ({art['characters']} characters): [{Path(text).name}]({text})."
        )
    return [*lines, ""]


# Where an architecture fixes density by construction, the claim is not judged on it.
FIXED_DENSITY = {
    "topk": "under --sae-arch topk every token keeps k latents, so density is k/latent by "
    "construction; depth is judged by the U rule on the loss, FVU and ΔCE, which vary"
}


def judged(rows: list[dict[str, Any]], sae_arch: str) -> dict[str, dict[str, Any]]:
    """stats.claims for the rows; under an architecture of FIXED_DENSITY the density claim is
    undefined, with why."""
    out = claims(rows)
    if sae_arch in FIXED_DENSITY:
        for model in out.values():
            model["density"] = {
                **dict.fromkeys(model["density"]),
                "undefined": FIXED_DENSITY[sae_arch],
            }
    return out


def sae_line(cfg: Config) -> str:
    if cfg.saes:
        position = (
            "position 0 kept, as SAELens's evals keep it"
            if cfg.keep_first_token
            else "position 0 dropped (laminar's default), so these numbers differ from SAELens's "
            "own evals of the same SAEs, which keep it: --keep-first-token matches them"
        )
        return (
            f"SAEs: published, one per layer, from `{cfg.saes}` (SAELens format), none trained; "
            f"final loss is the course's loss evaluated on them (MSE + {cfg.l1:g}·mean|z|); "
            f"{position}."
        )
    if cfg.sae_arch != "course":
        own = {
            "standard": f"untied with biases, ReLU, L1 {cfg.l1:g} on z·‖W_dec‖ (warm-up "
            f"{cfg.l1_warm_up_steps} steps)",
            "topk": f"TopK, k = {cfg.k} a token, aux. coefficient {cfg.aux_coefficient:g}",
            "batchtopk": f"BatchTopK, k = {cfg.k} a token on average over a batch, saved as "
            f"JumpReLU, aux. coefficient {cfg.aux_coefficient:g}",
        }[cfg.sae_arch]
        return (
            f"SAE: `{cfg.sae_arch}` as SAELens trains it ({own}), latent = {cfg.expansion}·d, "
            f"Adam lr {cfg.lr:g}, {cfg.epochs} {epochs_of(cfg)}, {cfg.precision}, seeds "
            f"{cfg.sae_seeds} (± is the sd over seeds)."
        )
    return (
        f"SAE: tied, latent = {cfg.expansion}·d, top-k fraction {cfg.topk_frac:.4g}, Adam lr "
        f"{cfg.lr:g}, l1 {cfg.l1:g}, {cfg.epochs} {epochs_of(cfg)}, {cfg.precision}, seeds "
        f"{cfg.sae_seeds} (± is the sd over seeds)."
    )


def markdown(
    cfg: Config,
    prov: dict,
    rows: list[dict],
    failed: list[str],
    images: list[str],
    out: Path,
    holdouts: list[EvalBatch] = (),  # type: ignore[assignment]
) -> str:
    lines = [
        "# laminar profile",
        "",
        *articles_markdown(prov, out),
        f"Batch {cfg.n_seqs} × {cfg.seq_len} tokens ({cfg.sampling} windows, none crossing "
        f"articles, seed {cfg.seed}); hook `{cfg.hook}`; position 0 "
        f"{'kept' if cfg.keep_first_token else 'dropped'}.",
        "",
        sae_line(cfg),
        "",
        *(claims_markdown(judged(rows, cfg.sae_arch)) if rows else []),
        *(f"![{Path(i).stem}]({i})\n" for i in images),
        "",
        "| model | layer | rel. depth | density % | final loss | MSE | FVU | L0 | dead % | "
        "‖x‖ | var x | x<0 | s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['model']} | {r['layer']} | {r['rel_depth']:.3f} | {pm(r, 'density_pct', '.2f')} "
        f"| {r['final_loss']:.5g} ± {fmt(r['final_loss_sd'], '.2g')} | "
        f"{r['final_mse']:.5g} | {r['fvu']:.3f} | {r['l0']:.1f} | {r['dead_pct']:.1f} | "
        f"{r['x_mean_norm']:.3g} | {r['x_var']:.3g} | {r['x_neg_frac']:.3f} | "
        f"{r['seconds']:.1f} |"
        for r in rows
    ]
    lines += ["", *field_table(rows, holdouts), *stability_table(rows)]
    if failed:
        lines += ["", "**Failed (not in the table; rerun to retry them):**", ""]
        lines += [f"- {f}" for f in failed]
    lines += ["", *provenance.markdown(prov)]
    lines += ["Config:", "", "```json", cfg.model_dump_json(indent=2), "```", ""]
    return "\n".join(lines)


@task(
    name="report",
    task_run_name="report",
    cache_policy=cache.ContentKey(
        fields=tuple(f for f in Config.model_fields if f not in EXECUTION_FIELDS),
        exclude=("started_at",),  # a replayed report keeps the provenance of the run that made it
    ),
)
def write_report(
    cfg: Config,
    pages: list[Page],
    texts: list[Text],
    tokens: list[Batch],
    extractions: list[Extraction],
    results: list[LayerResult],
    failed: list[str],
    cards: list[FileRecord],
    started_at: str,
    holdouts: list[EvalBatch],
) -> Report:
    """Write the tables, figures, provenance and report.md (published to Prefect by `publish`)."""
    out = paths.report_dir(cfg)
    n_layers = {e["name"]: e["n_layers"] for e in extractions}
    rows = tables.metric_rows(results, n_layers)
    written = tables.write_tables(results, rows, out)
    images = figures.draw(rows, results, n_layers, out, cfg.shown_seed)
    write_json(out / "claims.json", judged(rows, cfg.sae_arch) if rows else {})
    prov = provenance.collect(cfg, pages, texts, tokens, extractions, results, started_at, holdouts)
    write_json(out / "provenance.json", prov)
    md = markdown(cfg, prov, rows, failed, images, out, holdouts)
    if cards:  # the latent cards, written beside the report by the latents task
        pages = [Path(c["path"]).name for c in cards if c["path"].endswith(".html")]
        md += (
            "\nLatent cards (what each layer's latents fire on): "
            + ", ".join(f"[{p}]({p})" for p in pages)
            + "\n"
        )
    write_bytes(out / "report.md", md.encode())
    files = [
        file_record(out / f)
        for f in [*written, *images, "claims.json", "provenance.json", "report.md"]
    ] + list(cards)
    return {"dir": str(out), "files": files, "failed": failed}


def publish(report: Report) -> None:
    """The table and report.md as artifacts of the current flow run, under stable keys (the
    Prefect UI keeps their history); also on a rerun whose report task was Cached."""
    out = Path(report["dir"])
    rows = []
    if (out / "metrics.csv").exists():
        with open(out / "metrics.csv") as f:
            rows = [{c: r[c] for c in columns.UI} for r in csv.DictReader(f)]
    create_table_artifact(key=TABLE_KEY, table=rows, description=f"laminar metrics in {out}")
    own = {Path(f["path"]).name for f in report["files"] if Path(f["path"]).parent == out}
    create_markdown_artifact(
        key=REPORT_KEY,
        markdown=figures.for_the_ui((out / "report.md").read_text(), out, own),
        description=f"laminar report: {out / 'report.md'}",
    )
