"""Every column laminar writes, declared once: its name, unit, meaning, and where it goes.

The records (tasks.records) carry these columns; the report's tables (metrics, metrics by
seed), the UI's table and the column list of docs/measures.md are all derived from this list
(`python -m tasks.columns docs/measures.md` rewrites that list, and a test checks it is current).
A column written that is not declared here fails tests/test_columns.py."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Column:
    name: str
    unit: str  # "" for a count, a label or a pure number without unit
    meaning: str
    group: str  # see GROUPS
    spread: bool = False  # averaged over SAE seeds in metrics.csv, with <name>_sd beside it
    ui: bool = False  # in the Prefect UI's table


GROUPS = {  # group: what it holds, in table order
    "row": "which layer a row is",
    "course": "the course's measures and the ones laminar adds beside them (training tokens)",
    "field": "the field's reconstruction measures (SAELens, SAEBench), on the training tokens",
    "downstream": "what the SAE costs the model, spliced in on the held-out windows",
    "stability": "do fresh SAEs find the same latents: the first two seeds compared",
    "run": "where and how long it ran, and the SAE's shape",
    "inputs": "what the SAE is fed",
    "eval": "the held-out windows the downstream measures use",
    "undefined": "why a score is undefined (empty where it has a value)",
    "record": "carried by the per-SAE record and its JSON, not a table column",
}
ACT = "activation units²"  # squared units of the hooked activation
NATS = "nats/token"
C = Column
COLUMNS: tuple[Column, ...] = (
    C("model", "", "the model's short name", "row", ui=True),
    C("layer", "", "the block whose hook is profiled (0-based)", "row", ui=True),
    C("n_layers", "", "blocks in the model", "row", ui=True),
    C("rel_depth", "", "layer / (n_layers − 1): 0 first block, 1 last", "row", ui=True),
    C("n_seeds", "", "SAE seeds averaged in the row", "row", ui=True),
    C("sae_seed", "", "the SAE's initialisation seed (metrics_by_seed)", "row"),
    C(
        "density_pct",
        "%",
        "share of (token, latent) entries that are non-zero",
        "course",
        True,
        True,
    ),
    C(
        "final_loss",
        ACT,
        "the loss of the last epoch, before its update: MSE + l1·mean|z|",
        "course",
        True,
        True,
    ),
    C(
        "final_mse",
        ACT,
        "mean squared reconstruction error over tokens and features",
        "course",
        True,
        True,
    ),
    C(
        "fvu",
        "",
        "final_mse / variance of the activations (fraction of variance unexplained)",
        "course",
        True,
        True,
    ),
    C("l0", "latents/token", "mean non-zero latents per token", "course", True, True),
    C("dead_pct", "%", "share of latents that never fire", "course", True, True),
    C(
        "density_activation",
        "",
        "mean over latents of minmax(firing frequency)·minmax(mean magnitude when firing)",
        "course",
        True,
        True,
    ),
    C("explained_variance", "", "1 − FVU (SAELens's explained_variance)", "field", True, True),
    C("l2_ratio", "", "mean over tokens of ‖x̂‖/‖x‖ (below 1: shrinkage)", "field", True),
    C("cossim", "", "mean over tokens of cos(x̂, x)", "field", True),
    C("dense_pct", "%", "share of latents firing on more than 10% of tokens", "field", True),
    C(
        "ce_clean",
        NATS,
        "the clean model's mean next-token cross-entropy on the held-out windows",
        "downstream",
        True,
    ),
    C("ce_sae", NATS, "the same with the SAE spliced in", "downstream", True),
    C("ce_ablation", NATS, "the same with the hook zeroed", "downstream", True),
    C("ce_delta", NATS, "ce_sae − ce_clean: what the SAE costs", "downstream", True, True),
    C(
        "ce_loss_score",
        "",
        "(ce_ablation − ce_sae) / (ce_ablation − ce_clean): SAELens's CE loss score",
        "downstream",
        True,
        True,
    ),
    C(
        "kl_sae",
        NATS,
        "mean KL(clean ‖ SAE spliced in) of the next-token distributions",
        "downstream",
        True,
    ),
    C("kl_ablation", NATS, "mean KL(clean ‖ hook zeroed)", "downstream", True),
    C(
        "kl_div_score",
        "",
        "(kl_ablation − kl_sae) / kl_ablation: SAELens's KL score",
        "downstream",
        True,
        True,
    ),
    C(
        "stability_shared",
        "",
        "share of the first seed's live latents whose decoder direction has a match with cosine"
        " ≥ 0.7 in the second seed's SAE (Paulo & Belrose 2025); empty with one seed",
        "stability",
    ),
    C(
        "stability_mmcs",
        "",
        "mean over the first seed's live latents of the largest decoder cosine with the second"
        " seed's latents (mean max cosine similarity); empty with one seed",
        "stability",
    ),
    C("seconds", "s", "training (or measuring) time, summed over seeds", "run"),
    C("device", "", "where it ran (cpu, cuda, mps)", "run"),
    C("n_tokens", "", "tokens the SAE was trained and measured on", "run"),
    C("d", "", "width of the hooked activation", "run"),
    C("latent", "", "latents of the SAE (m)", "run"),
    C("k", "", "latents kept per token by the top-k (0: none fixed)", "run"),
    C("x_mean_norm", "activation units", "mean ‖x‖ over tokens", "inputs"),
    C(
        "x_var",
        ACT,
        "mean squared deviation from the per-feature mean (FVU's denominator)",
        "inputs",
    ),
    C("x_neg_frac", "", "share of activation values below 0", "inputs"),
    C("eval_tokens", "", "tokens of the held-out windows", "eval"),
    C("eval_held_out", "", "windows disjoint from every training window", "eval"),
    C("eval_in_sample", "", "windows that are training windows (no room for more)", "eval"),
    C("ce_loss_score_undefined", "", "why ce_loss_score is empty", "undefined"),
    C("kl_div_score_undefined", "", "why kl_div_score is empty", "undefined"),
    C("name", "", "the model's short name (the record's key; `model` in the tables)", "record"),
    C("activations", "", "the layer's activation file (path, size, sha256)", "record"),
    C("json", "", "the SAE's metrics JSON (path, size, sha256)", "record"),
    C("sae_files", "", "the SAE's weights and cfg.json ([] when not kept)", "record"),
    C("freq_hist", "latents", "latents per log10-frequency bin of those that fire", "record"),
    C("loss_curve", ACT, "the loss of each epoch, before its update", "record"),
    C("hardware", "", "the device's model and flags", "record"),
    C("ran_on", "", "host:pid of the process that ran it", "record"),
    C("sae_source", "", "where a published SAE came from (--saes)", "record"),
    C("splice_seconds", "s", "time of the downstream measures", "record"),
    C("stability_seeds", "", "the two SAE seeds the stability columns compare", "record"),
)
BY_NAME = {c.name: c for c in COLUMNS}
assert len(BY_NAME) == len(COLUMNS), "a column declared twice"


def group(*names: str) -> list[str]:
    """The columns of the named groups, in declaration order."""
    return [c.name for c in COLUMNS if c.group in names]


SPREAD = [c.name for c in COLUMNS if c.spread]
UI = [c.name for c in COLUMNS if c.ui]
# metrics.csv: one row per (model, layer), every table column, then each spread's sd
TABLE = [c.name for c in COLUMNS if c.group not in ("record",) and c.name != "sae_seed"]
METRICS = [*TABLE, *(f"{name}_sd" for name in SPREAD)]
# metrics_by_seed.csv: one row per SAE
BY_SEED = ["model", "layer", "sae_seed", *SPREAD, *group("undefined"), "seconds"]


def undeclared(names: Iterable[str]) -> list[str]:
    """The names (keys of a row) that no column declares; `<spread>_sd` counts as declared."""
    sds = {f"{name}_sd" for name in SPREAD}
    return sorted(n for n in names if n not in BY_NAME and n not in sds)


def check_declared(row: Mapping[str, object], what: str) -> None:
    """A row about to be written whose every key is declared here; else a ValueError naming
    the undeclared ones (a programming error: declare the column above)."""
    if missing := undeclared(row):
        raise ValueError(
            f"{what} carries undeclared column(s) {missing}: declare them in tasks/columns.py"
        )


BEGIN, END = "<!-- columns: begin -->", "<!-- columns: end -->"


def docs_table() -> str:
    """The list of every column as docs/measures.md shows it, by group."""
    lines = [BEGIN, ""]
    for name, what in GROUPS.items():
        lines += [f"**{what[0].upper()}{what[1:]}**", "", "| column | unit | meaning |"]
        lines += ["|---|---|---|"]
        for c in (c for c in COLUMNS if c.group == name):
            suffix = " (mean over seeds, `_sd` their sd)" if c.spread else ""
            lines.append(f"| `{c.name}` | {c.unit or '—'} | {c.meaning}{suffix} |")
        lines.append("")
    return "\n".join([*lines, END])


def with_docs_table(page: str) -> str:
    """The page with its column list (between BEGIN and END) made from COLUMNS."""
    start, end = page.index(BEGIN), page.index(END) + len(END)
    return page[:start] + docs_table() + page[end:]


if __name__ == "__main__":
    target = Path(sys.argv[1])
    target.write_text(with_docs_table(target.read_text()))
