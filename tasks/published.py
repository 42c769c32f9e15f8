"""Published SAEs (--saes): the family found and checked before any heavy work, then per layer
the SAE loaded and measured on that layer's activations instead of a fresh one trained.

A source is a local folder, or a Hugging Face repo id (`org/name`, optionally `org/name:sub`
for one subfolder). From the hub, the check reads only the cfg.json files; each layer's task
downloads its own weights. The hub goes through tasks.models's offline logic: unreachable, it
serves what the local cache holds, and says so."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from prefect import task

from tasks import cache, saefiles, saelens, store
from tasks.config import Config
from tasks.models import ensure_hub_or_offline, hub_offline
from tasks.precision import matmul_precision
from tasks.records import LayerFile, LayerResult
from tasks.sae import files, measures
from tasks.settings import LaminarError, resolve_device
from tasks.train import InMemory, checked_stats, finish, write_layer_json


def split_source(source: str) -> tuple[str, str]:
    """'org/name:sub/dir' -> ('org/name', 'sub/dir'); a repo alone -> (repo, ''). A subfolder
    that leads outside the repo ('..', an absolute path) is refused."""
    repo, _, sub = source.partition(":")
    return repo, saefiles.relative_subfolder(source, sub.rstrip("/")) if sub else ""


def fetch_configs(source: str) -> Path:
    """The folder holding the family's cfg.json files: the local folder, or a hub snapshot of
    just the cfg.json files (the weights come per layer, in the layer's task)."""
    if Path(source).expanduser().is_dir():
        return Path(source).expanduser().resolve()
    if Path(source).expanduser().exists():
        raise LaminarError(f"--saes '{source}' is a file: give the folder that holds the SAEs.")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    repo, sub = split_source(source)
    ensure_hub_or_offline([repo])
    pattern = f"{sub}/**cfg.json" if sub else "**cfg.json"
    try:
        root = Path(snapshot_download(repo, allow_patterns=[pattern, pattern.replace("**", "*/")]))
    except HFValidationError:
        raise LaminarError(
            f"--saes '{source}' is neither a local folder nor a hub repo id (org/name, "
            "optionally org/name:subfolder): check the path or the id."
        ) from None
    except Exception as exc:  # the hub client's errors have no common base to catch
        raise LaminarError(hub_problem(source, exc)) from None
    return root / sub if sub else root


def hub_problem(source: str, exc: BaseException) -> str:
    names = {type(e).__name__ for e in (exc, exc.__cause__, exc.__context__) if e is not None}
    if hub_offline() or names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled"}:
        why = "the hub cannot be reached and its SAEs are not in the local cache"
        fix = "connect once to download them, or pass a local folder"
    elif names & {"RepositoryNotFoundError", "GatedRepoError"}:
        why, fix = "the hub has no such repo (or it is private)", "check the id"
    else:
        why, fix = (
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            ("try again later, or pass a local folder"),
        )
    return f"--saes '{source}': cannot read its SAEs; {why}: {fix}."


def check_family(cfg: Config, layers: list[int], d: int, found: dict[int, saelens.Entry]) -> None:
    """Every layer the run profiles has an SAE, of the hook's width `d`."""
    missing = [la for la in layers if la not in found]
    if missing:
        have = ",".join(map(str, sorted(found)))
        raise LaminarError(
            f"--saes '{cfg.saes}' has no SAE for layer(s) {','.join(map(str, missing))} of "
            f"{cfg.models[0]} (it has layers {have}): give --layers {have}, or a fuller family."
        )
    for layer in layers:
        if found[layer].d_in != d:
            raise LaminarError(
                f"--saes '{cfg.saes}': the layer-{layer} SAE reads d_in {found[layer].d_in} but "
                f"{cfg.models[0]}'s {cfg.hook} is {d} wide: these SAEs belong to another model."
            )


def prepare(cfg: Config) -> tuple[Config, dict[int, saelens.Entry]]:
    """The family of --saes, read and checked (no weights loaded), and the config with the
    family's hook (refused when --hook was given as another)."""
    folder = fetch_configs(cfg.saes)
    found = saelens.family(folder, cfg.saes, weights_here=not is_hub(cfg.saes))
    hook = next(iter(found.values())).hook
    if "hook" in cfg.model_fields_set and cfg.hook != hook:
        raise LaminarError(
            f"--hook {cfg.hook} was given, but the SAEs of --saes '{cfg.saes}' read {hook}: "
            "leave --hook out (the SAEs' hook is used)."
        )
    return cfg.model_copy(update={"hook": hook}), found


def is_hub(source: str) -> bool:
    return not Path(source).expanduser().exists()


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
