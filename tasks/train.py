"""Train: one freshly initialised SAE per (model, layer), the fan-out of the DAG."""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import task
from prefect.logging import get_run_logger

from tasks import cache, sae, store
from tasks.config import Config, LaminarError, resolve_device, stable_hash

SAE_FIELDS = ("epochs", "lr", "l1", "expansion", "topk_frac", "seed")


def train_layer(x_np: np.ndarray, cfg: Config, label: str) -> dict[str, Any]:
    """Train on one layer's activations (N, d) and return its metrics and loss curve."""
    if not np.isfinite(x_np).all():
        raise LaminarError(f"{label}: activations contain NaN or inf; nothing was trained.")
    device = resolve_device(cfg.device)
    start = time.perf_counter()
    with warnings.catch_warnings():  # Arrow's buffer is read-only; nothing writes to x
        warnings.simplefilter("ignore", UserWarning)
        x = torch.from_numpy(x_np).to(device)
    result = sae.train(x, **cfg.subset(*SAE_FIELDS))
    losses = result.losses
    if not all(math.isfinite(v) for v in losses):
        bad = next(i for i, v in enumerate(losses) if not math.isfinite(v))
        raise LaminarError(
            f"{label}: the SAE loss became {losses[bad]} at epoch {bad}; try a lower --lr."
        )
    out = sae.metrics(result.sae, x)
    out.update(
        final_loss=losses[-1],
        seconds=time.perf_counter() - start,
        device=device,
        n_tokens=x.shape[0],
        d=x.shape[1],
        latent=result.sae.weight.shape[0],
        k=result.sae.k,
        loss_curve=losses,
    )
    return out


def write_layer_json(
    cfg: Config, acts: dict[str, Any], row: dict[str, Any], label: str
) -> dict[str, Any]:
    """Metrics and loss curve as JSON beside the activations' layout:
    activations/<model>/<hook>/<tokens>/L03.parquet -> sae/<model>/<hook>/<tokens>/L03/<key>.json
    where <key> hashes the SAE settings, so other settings never overwrite this file."""
    rel = Path(acts["path"]).relative_to(cfg.root / "activations")
    settings = cfg.subset(*SAE_FIELDS)
    path = cfg.root / "sae" / rel.parent / rel.stem / f"{stable_hash(settings)[:16]}.json"
    try:
        store.write_json(path, {**row, "settings": settings, "activations": acts})
    except OSError as exc:
        raise LaminarError(
            f"{label}: cannot write '{path}' ({exc.strerror}): free that path or check the "
            "artifacts dir, then rerun; finished layers are kept."
        ) from exc
    return store.file_record(path)


@task(
    name="sae",
    task_run_name="sae {name} L{layer}",
    cache_policy=cache.ContentKey(fields=SAE_FIELDS, modules=("tasks.sae", "tasks.store")),
    retries=0,  # training is deterministic: a retry would fail the same way
)
def train_sae(cfg: Config, name: str, layer: int, acts: dict[str, Any]) -> dict[str, Any]:
    """Train the layer's SAE; the result is one metrics row (plus its loss curve)."""
    label = f"{name} L{layer}"
    out = train_layer(store.read_activations(acts), cfg, label)
    record = write_layer_json(cfg, acts, {"model": name, "layer": layer, **out}, label)
    get_run_logger().info(
        "%-16s %7.1fs  density %6.2f%%  loss %.5g  fvu %.3f",
        label,
        out["seconds"],
        out["density_pct"],
        out["final_loss"],
        out["fvu"],
    )
    return {"name": name, "layer": layer, "activations": acts, "json": record, **out}
