"""Latent cards: what the latents of each layer's SAE fire on, in the manner of SAE dashboards.

For each (model, layer), from its saved SAE (first seed) and that layer's tokens: 24 live latents,
the 8 that fire most often, the 8 rarest that fire at least MIN_FIRES times and 8 more drawn at
random (seeded), each with its firing frequency, its mean activation where it fires and its 6
highest-activating tokens in context (WINDOW tokens of decoded text either side, the token
marked). Written per model as `<model>-latents.json` and a self-contained `<model>-latents.html`
(inline CSS, nothing from the network) in the report folder."""

from __future__ import annotations

import html
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from prefect import task

from tasks import cache, paths, store
from tasks.config import Config
from tasks.models import load_tokenizer
from tasks.precision import matmul_precision
from tasks.records import Batch, FileRecord, LayerResult
from tasks.sae import files

PER_GROUP = 8  # latents per group: frequent, rare, random
MIN_FIRES = 3  # a rare latent fires at least this often (fewer says nothing about it)
CONTEXTS = 6  # top-activating tokens shown per latent
WINDOW = 10  # tokens of context either side


def pick(counts: np.ndarray, seed: int) -> list[tuple[int, str]]:
    """(latent, group) of the latents to show, from each latent's firing count (m,)."""
    live = np.flatnonzero(counts > 0)
    by_count = live[np.argsort(-counts[live], kind="stable")]
    frequent = [int(i) for i in by_count[:PER_GROUP]]
    rare_pool = [int(i) for i in by_count[::-1] if counts[i] >= MIN_FIRES and i not in frequent]
    rare = rare_pool[:PER_GROUP]
    rest = sorted(set(live.tolist()) - set(frequent) - set(rare))
    drawn = np.random.default_rng(seed).choice(rest, min(PER_GROUP, len(rest)), replace=False)
    chosen = [(i, "frequent") for i in frequent] + [(i, "rare") for i in rare]
    return chosen + [(int(i), "random") for i in sorted(drawn)]


def cards(
    z: np.ndarray,
    where: np.ndarray,
    batch: np.ndarray,
    decode: Callable[[list[int]], str],
    seed: int,
) -> list[dict[str, Any]]:
    """Cards of one layer. z (N, m) latents; where (N, 2) the (seq, pos) of each row in the
    token batch (n_seqs, seq_len)."""
    counts = (z > 0).sum(axis=0)
    return cards_for(pick(counts, seed), counts, lambda latent: z[:, latent], where, batch, decode)


def cards_for(
    chosen: list[tuple[int, str]],
    counts: np.ndarray,
    column: Callable[[int], np.ndarray],
    where: np.ndarray,
    batch: np.ndarray,
    decode: Callable[[list[int]], str],
) -> list[dict[str, Any]]:
    """The cards of the chosen latents: counts (m,) how often each fires; column(latent) its
    activation on every token (N,); where and batch as for `cards`."""
    out = []
    for latent, group in chosen:
        col = column(latent)
        top = [int(i) for i in np.argsort(-col, kind="stable")[:CONTEXTS] if col[i] > 0]
        contexts = []
        for i in top:
            s, p = (int(v) for v in where[i])
            contexts.append(
                {
                    "before": decode(batch[s, max(0, p - WINDOW) : p].tolist()),
                    "token": decode([int(batch[s, p])]),
                    "after": decode(batch[s, p + 1 : p + 1 + WINDOW].tolist()),
                    "activation": float(col[i]),
                }
            )
        out.append(
            {
                "latent": latent,
                "group": group,
                "freq": float(counts[latent] / len(col)),
                "mean_activation": float(col[col > 0].mean()),
                "contexts": contexts,
            }
        )
    return out


def layer_cards(result: LayerResult, batch: np.ndarray, decode: Any, seed: int) -> list[dict]:
    """Encode the layer's activations with its saved SAE and make its cards: a row group at a
    time, twice (the firing counts that choose the latents, then the chosen latents' columns),
    so memory holds one group's (rows, m) latents and the (N, 24) chosen columns, whatever N."""
    model = files.load(Path(result["sae_files"][0]["path"]).parent)
    src = store.ActivationFile(result["activations"])

    def encoded() -> Iterator[np.ndarray]:  # (rows, m) per row group
        for group in range(src.n_groups):
            with torch.no_grad(), matmul_precision("fp32"):
                z = model.encode(torch.from_numpy(src.group(group))).numpy()
            yield z

    counts = sum(((z > 0).sum(axis=0) for z in encoded()), np.zeros(model.weight.shape[0], int))
    chosen = pick(counts, seed)
    ids = [latent for latent, _ in chosen]
    cols = np.concatenate([z[:, ids] for z in encoded()])  # (N, 24)
    where = pq.read_table(result["activations"]["path"], columns=["seq", "pos"])
    rows = np.stack([where["seq"].to_numpy(), where["pos"].to_numpy()], axis=1)
    return cards_for(chosen, counts, lambda latent: cols[:, ids.index(latent)], rows, batch, decode)


CSS = (
    "body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}nav a{margin-right:.6em}"
    ".cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(24em,1fr));gap:.8em}"
    ".card{border:1px solid #ccc;border-radius:6px;padding:.5em .8em}"
    ".card h3{margin:.2em 0;font-size:1em}.card ol{padding-left:1.2em;margin:.3em 0}"
    ".card li{font-family:monospace;white-space:pre-wrap}mark{background:#fd6;font-weight:bold}"
    ".v{color:#666;float:right}.g{color:#666;font-weight:normal}"
)


def to_html(name: str, layers: dict[int, list[dict]]) -> str:
    """One self-contained page: a section per layer, a card per latent."""

    def e(text: str) -> str:  # escaped, a line break shown as ↵ so each context stays one line
        return html.escape(text).replace("\n", "↵")

    nav = " ".join(f'<a href="#L{layer:02d}">L{layer}</a>' for layer in layers)
    parts = [f"<!doctype html><meta charset=utf-8><title>{e(name)} latents</title>"]
    parts += [f"<style>{CSS}</style><h1>{e(name)}: latent cards</h1><nav>{nav}</nav>"]
    for layer, layer_cards_ in layers.items():
        parts.append(f'<section id="L{layer:02d}"><h2>layer {layer}</h2><div class="cards">')
        for c in layer_cards_:
            items = "".join(
                f"<li>{e(x['before'])}<mark>{e(x['token'])}</mark>{e(x['after'])}"
                f'<span class="v">{x["activation"]:.3g}</span></li>'
                for x in c["contexts"]
            )
            parts.append(
                f'<div class="card" data-latent="{c["latent"]}"><h3>latent {c["latent"]} '
                f'<span class="g">{c["group"]}</span></h3><p>fires on {100 * c["freq"]:.2f}% of '
                f"tokens, mean activation {c['mean_activation']:.3g}</p><ol>{items}</ol></div>"
            )
        parts.append("</div></section>")
    return "".join(parts)


CARDS_KEY = "laminar-latents"  # + the model's name: one markdown artifact per model
_PUNCTUATION = set("\\`*_{}[]()#+-.!|~<>&\"'=:/$%^")


def md_text(text: str) -> str:
    """Text from a page or a tokenizer as literal markdown: every ASCII punctuation mark that
    markdown or HTML could read as syntax is backslash-escaped (CommonMark allows that for any
    of them), so no link, image, tag, code span or table cell can be made from it; a line
    break shows as ↵ so each context stays one line."""
    out = "".join("\\" + c if c in _PUNCTUATION else c for c in text)
    return out.replace("\r", "").replace("\n", "↵")


def md_token(token: str) -> str:
    """The marked token, bold in a cell of its own, without its edge spaces (the cells already
    part it from its neighbours, and a `**` next to a space would not make it bold); a token of
    spaces alone shows as ␣."""
    core = token.strip(" ")
    return f"**{md_text(core) if core else '␣' * len(token)}**"


def to_markdown(name: str, layers: dict[int, list[dict]]) -> str:
    """The cards as one markdown page (the Prefect UI's artifact): a section per layer, per
    latent its group, frequency and mean activation, and a table of its top contexts, read
    across: the text before, the token in bold, the text after."""
    md = [f"# {md_text(name)}: latent cards", ""]
    md.append(
        f"Per layer, {3 * PER_GROUP} live latents of its SAE: the {PER_GROUP} that fire most "
        f"often, the {PER_GROUP} rarest that fire at least {MIN_FIRES} times and {PER_GROUP} "
        f"at random, each with its {CONTEXTS} highest-activating tokens in context."
    )
    for layer, layer_cards_ in layers.items():
        md += ["", f"## Layer {layer}"]
        for c in layer_cards_:
            md += [
                "",
                f"**latent {c['latent']}** ({c['group']}): fires on {100 * c['freq']:.2f}% of "
                f"tokens, mean activation {c['mean_activation']:.3g}",
                "",
                "| before | token | after | activation |",
                "|--:|:-:|:--|--:|",
            ]
            md += [
                f"| {md_text(x['before'])} | {md_token(x['token'])} | {md_text(x['after'])} "
                f"| {x['activation']:.3g} |"
                for x in c["contexts"]
            ]
    return "\n".join(md) + "\n"


def publish_cards(name: str, files: list[FileRecord]) -> None:
    """The model's latent cards as a markdown artifact of the flow run, so the Prefect UI shows
    what the latents respond to (the HTML page sits on the worker's disk)."""
    import json

    from prefect.artifacts import create_markdown_artifact

    [cards_json] = [f for f in files if f["path"].endswith(".json")]
    layers = {int(k): v for k, v in json.loads(Path(cards_json["path"]).read_text()).items()}
    slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    create_markdown_artifact(
        key=f"{CARDS_KEY}-{slug}",
        markdown=to_markdown(name, layers),
        description=f"latent cards of {name}",
    )


@task(
    name="latents",
    task_run_name="latents {name}",
    cache_policy=cache.ContentKey(fields=("seed",)),  # `results` are Config.shown_seed's
)
def latent_cards(
    cfg: Config, model: str, name: str, results: list[LayerResult], tokens: Batch
) -> list[FileRecord]:
    """The model's latent cards (Config.shown_seed's SAE of every layer whose SAE was saved), as
    JSON and HTML in the report folder."""
    tokenizer = load_tokenizer(model)
    batch = store.read_batch(tokens["tokens"])

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, clean_up_tokenization_spaces=False)

    layers = {
        r["layer"]: layer_cards(r, batch, decode, cfg.seed)
        for r in sorted(results, key=lambda r: r["layer"])
        if r["sae_seed"] == cfg.shown_seed and r["sae_files"]
    }
    out = paths.report_dir(cfg)
    store.write_json(out / f"{name}-latents.json", {str(k): v for k, v in layers.items()})
    store.write_bytes(out / f"{name}-latents.html", to_html(name, layers).encode())
    return [store.file_record(out / f"{name}-latents.{x}") for x in ("json", "html")]
