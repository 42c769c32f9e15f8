"""Cross-seed stability: per layer trained from two or more SAE seeds, how many of the first
seed's live latents the second seed's SAE finds again (tasks.sae.stability: the share matched
with decoder cosine >= 0.7, and the mean max cosine). A latent is live where it fires at least
once on the layer's training tokens, read from the layer's activation file a row group at a
time."""

from __future__ import annotations

from pathlib import Path

import torch
from prefect import task

from tasks import cache, minibatch, store
from tasks.config import Config
from tasks.precision import matmul_precision
from tasks.records import LayerResult, Stability
from tasks.sae import files, measures
from tasks.sae.stability import decoder_match
from tasks.settings import resolve_device


def pairs(cfg: Config, results: list[LayerResult]) -> list[tuple[LayerResult, LayerResult]]:
    """(first seed's result, second seed's) per (model, layer) with both SAEs kept: the seeds
    in --sae-seeds order, so the first is Config.shown_seed."""
    order = {seed: i for i, seed in enumerate(cfg.sae_seeds)}
    by_layer: dict[tuple[str, int], list[LayerResult]] = {}
    for r in results:
        if r["sae_files"]:
            by_layer.setdefault((r["name"], r["layer"]), []).append(r)
    out = []
    for runs in by_layer.values():
        runs = sorted(runs, key=lambda r: order.get(r["sae_seed"], len(order)))
        if len(runs) >= 2:
            out.append((runs[0], runs[1]))
    return out


@task(
    name="stability",
    task_run_name="stability {label}",
    cache_policy=cache.ContentKey(fields=(), exclude=("label",)),
    retries=0,  # deterministic: a retry would fail the same way
)
def seed_stability(cfg: Config, first: LayerResult, second: LayerResult, label: str) -> Stability:
    """The first seed's SAE against the second's on one layer (see the module docstring)."""
    device = resolve_device(cfg.device)
    a = files.load(Path(first["sae_files"][0]["path"]).parent).to(device)
    b = files.load(Path(second["sae_files"][0]["path"]).parent).to(device)
    src = store.ActivationFile(first["activations"])
    with matmul_precision("fp32"):
        freq = measures.metrics(a, minibatch.chunks(src, device), first["x_var"])["latent_freq"]
        live = torch.from_numpy(freq > 0)
        match = decoder_match(a.weight, b.weight, live)
    return {
        "name": first["name"],
        "layer": first["layer"],
        "stability_seeds": [first["sae_seed"], second["sae_seed"]],
        "stability_shared": match["shared"],
        "stability_mmcs": match["mmcs"],
    }


def with_stability(results: list[LayerResult], measured: list[Stability]) -> list[LayerResult]:
    """Each result with its layer's stability (the same for every seed of the layer)."""
    by_layer = {(s["name"], s["layer"]): s for s in measured}
    out = []
    for r in results:
        s = by_layer.get((r["name"], r["layer"]))
        extra = {k: v for k, v in s.items() if k.startswith("stability_")} if s else {}
        out.append({**r, **extra})  # type: ignore[typeddict-item]
    return out
