"""Published SAEs (--saes), per layer: the SAE loaded (its weights downloaded from the hub if
need be) and measured on that layer's activations instead of a fresh one trained. The family was
found and checked before any heavy work (tasks.family); the hub goes through tasks.models's
offline logic: unreachable, it serves what the local cache holds, and says so."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from prefect import task

from tasks import cache, saefiles, store
from tasks.config import Config
from tasks.family import hub_problem, is_hub, split_source
from tasks.precision import matmul_precision
from tasks.records import LayerFile, LayerResult
from tasks.sae import files, measures
from tasks.settings import LaminarError, resolve_device
from tasks.train import InMemory, checked_stats, finish, write_layer_json


def weights_of(cfg: Config, folder: Path) -> Path:
    """The layer's SAE folder with its weights present (downloaded from the hub if need be)."""
    if (folder / files.WEIGHTS_FILE).is_file():
        return folder
    from huggingface_hub import hf_hub_download

    repo, _ = split_source(cfg.saes)
    snapshot = next(p for p in folder.parents if p.parent.name == "snapshots")
    rel = (folder / files.WEIGHTS_FILE).relative_to(snapshot)
    try:
        return Path(hf_hub_download(repo, str(rel), revision=snapshot.name)).parent
    except Exception as exc:  # the hub client's errors have no common base to catch
        raise LaminarError(hub_problem(cfg.saes, exc)) from None


def measure_layer(
    model: measures.Encoder, chunks: Iterable[torch.Tensor], var: float, l1: float
) -> dict[str, Any]:
    """measures.metrics of a published SAE, and the course's loss evaluated on it
    (MSE + l1·mean|z|): the training loss a trained SAE would report. One encoding."""
    out = measures.metrics(model, chunks, var, mean_abs_z=True)
    mean_abs_z = out.pop("mean_abs_z")  # a term of the loss, not a column of its own
    return {**out, "final_loss": out["final_mse"] + l1 * mean_abs_z}


@task(
    name="published",
    task_run_name="sae {label}",
    cache_policy=cache.ContentKey(fields=("saes", "l1"), exclude=("label",)),
    retries=0,
)
def profile_sae(
    cfg: Config,
    name: str,
    layer: int,
    acts: LayerFile,
    folder: str,
    sae_fingerprint: str,
    label: str,
) -> LayerResult:
    """Measure the published SAE in `folder` (its files' identity: `sae_fingerprint`,
    saelens.fingerprint) on the layer's activations `acts`."""
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    here = weights_of(cfg, Path(folder))
    if is_hub(cfg.saes):  # downloaded here: checked in full as a local family's are in preflight
        root = saefiles.bounded_root(here)
        cfg_json = saefiles.read_cfg(here / files.CFG_FILE, root)
        saefiles.check_weights(here / files.WEIGHTS_FILE, root, cfg_json)
    model = files.load(here).to(device)
    data = InMemory(store.read_activations(acts), device)
    stats = checked_stats(data, label)
    with matmul_precision("fp32"):
        out = {**measure_layer(model, data.chunks(), stats["x_var"], cfg.l1), **stats}
    out = finish(out, [], model, (device, data.n_rows, start), label)
    out["sae_source"] = f"{cfg.saes} ({here})"
    row = {"model": name, "layer": layer, "sae_seed": cfg.sae_seeds[0], **out}
    record = write_layer_json(cfg, acts, row, label, cfg.sae_seeds[0])
    saved = [store.file_record(here / f) for f in (files.WEIGHTS_FILE, files.CFG_FILE)]
    return {
        "name": name,
        "sae_seed": cfg.sae_seeds[0],
        "layer": layer,
        "activations": acts,
        "json": record,
        "sae_files": saved,
        **out,
    }
