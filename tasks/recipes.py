"""Train with one of the field's recipes (--sae-arch standard, topk or batchtopk;
tasks.sae.recipes): the same fan-out, measures, files and row as the course's SAE (tasks.train),
in full batch or in minibatches (--batch-tokens), saved in SAELens's format as the architecture
SAELens loads it as. A module of its own, so the course's SAEs keep their cache keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import task
from prefect.logging import get_run_logger

from tasks import cache, minibatch, paths, store
from tasks.config import RECIPE_FIELDS, RESULT_FIELDS, Config
from tasks.progress import EpochReporter
from tasks.records import LayerFile, LayerResult
from tasks.sae import files, fit, recipes
from tasks.settings import resolve_device
from tasks.train import InMemory, OnEpoch, Streamed, train_layer, write_layer_json


def recipe_of(cfg: Config) -> recipes.Recipe:
    return recipes.Recipe(**cfg.subset(*RECIPE_FIELDS), l1=cfg.l1)


class RecipeLayer:
    """A layer (held whole, or streamed from its file) trained with cfg's recipe; what
    train.train_layer measures is the SAE in the form it is saved in (`saved`)."""

    def __init__(self, layer: InMemory | Streamed) -> None:
        self.layer, self.n_rows, self.d = layer, layer.n_rows, layer.d
        self.saved: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None

    def chunks(self) -> Iterator[torch.Tensor]:
        return self.layer.chunks()

    def fit(self, cfg: Config, seed: int, on_epoch: OnEpoch) -> fit.TrainResult:
        layer = self.layer
        device = layer.x.device.type if isinstance(layer, InMemory) else layer.device
        m = self.d * cfg.expansion
        sae, opt = recipes.fresh(self.d, m, recipe_of(cfg), seed, device, cfg.lr)
        if isinstance(layer, InMemory):  # the full batch: one step per epoch
            batch = [(lambda: sae.step(layer.x), self.n_rows)]
            result = fit.run_epochs(sae, opt, cfg.epochs, lambda: batch, self.n_rows, on_epoch)  # type: ignore[arg-type]
        else:
            rng = np.random.default_rng(seed)  # the shuffle, seeded as the course's

            def epoch() -> Iterator[tuple[fit.Step, int]]:
                for xb in minibatch.minibatches(layer.src, cfg.batch_tokens, rng):
                    x = torch.from_numpy(xb).to(device)  # (b, d)
                    yield (lambda x=x: sae.step(x)), len(xb)

            result = fit.run_epochs(sae, opt, cfg.epochs, epoch, self.n_rows, on_epoch)  # type: ignore[arg-type]
        state, fields = sae.inference()
        self.saved = (state, fields)
        inference = files.PUBLISHED[fields["architecture"]](fields, state).to(device)
        return fit.TrainResult(inference, result.losses)  # type: ignore[arg-type]


def save(saved: tuple[dict[str, torch.Tensor], dict[str, Any]], folder: Path, about: dict) -> None:
    """The SAE in SAELens's format, weights first (a cfg.json means a whole SAE); laminar's
    record under "laminar_recipe", so tasks.sae.files.load reads it as its architecture."""
    from safetensors.torch import save as to_bytes

    state, fields = saved
    hook, model = about.pop("hook"), about.pop("model")
    cfg = {
        **fields,
        "dtype": "float32",
        "device": "cpu",
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"model_name": model, "hook_name": hook, "hook_head_index": None},
        "laminar_recipe": about,
    }
    store.write_bytes(folder / files.WEIGHTS_FILE, to_bytes({k: v.cpu() for k, v in state.items()}))
    store.write_json(folder / files.CFG_FILE, cfg)


@task(
    name="sae",
    task_run_name="sae {label}",
    cache_policy=cache.ContentKey(
        fields=(*RESULT_FIELDS, *RECIPE_FIELDS, "save_saes"), exclude=("label",)
    ),
    retries=0,  # training is deterministic: a retry would fail the same way
)
def train_recipe(
    cfg: Config, name: str, layer: int, acts: LayerFile, sae_seed: int, label: str
) -> LayerResult:
    """Train the layer's SAE of cfg.sae_arch from seed `sae_seed`: one metrics row, as
    tasks.train.train_sae gives for the course's SAE."""
    json_path = paths.layer_json(cfg, Path(acts["path"]), sae_seed)
    progress = paths.epochs_file(json_path)
    progress.parent.mkdir(parents=True, exist_ok=True)
    report = EpochReporter(label, cfg.epochs, -1.0 if cfg.quiet else cfg.progress_every, progress)
    device = resolve_device(cfg.device)
    try:
        if cfg.batch_tokens:
            data = RecipeLayer(Streamed(store.ActivationFile(acts), device))
        else:
            data = RecipeLayer(InMemory(store.read_activations(acts), device))
        out, _ = train_layer(data, cfg, label, sae_seed, report)  # type: ignore[arg-type]
    finally:
        progress.unlink(missing_ok=True)
    saved = []
    if cfg.save_saes and data.saved is not None:  # before the metrics JSON (the layer's mark)
        folder = paths.sae_dir(json_path)
        store.sweep_temporaries(folder)
        about = {"layer": layer, "sae_seed": sae_seed, "activations": acts}
        about |= {"settings": paths.layer_settings(cfg, sae_seed), "sae_arch": cfg.sae_arch}
        save(data.saved, folder, about | {"hook": f"blocks.{layer}.{cfg.hook}", "model": name})
        saved = [store.file_record(folder / f) for f in (files.WEIGHTS_FILE, files.CFG_FILE)]
    row = {"model": name, "layer": layer, "sae_seed": sae_seed, **out}
    record = write_layer_json(cfg, acts, row, label, sae_seed)
    get_run_logger().info(
        "%-16s %7.1fs  %s  L0 %.1f  loss %.5g  fvu %.3f",
        label,
        out["seconds"],
        cfg.sae_arch,
        out["l0"],
        out["final_loss"],
        out["fvu"],
    )
    return {
        "name": name,
        "sae_seed": sae_seed,
        "layer": layer,
        "activations": acts,
        "json": record,
        "sae_files": saved,
        **out,
    }
