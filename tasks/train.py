"""Train: one freshly initialised SAE per (model, layer), the fan-out of the DAG."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import task
from prefect.logging import get_run_logger

from tasks import cache, minibatch, paths, store
from tasks.config import RESULT_FIELDS, SAE_FIELDS, Config
from tasks.host import describe_device, this_process
from tasks.precision import matmul_precision
from tasks.progress import EpochReporter
from tasks.records import FileRecord, LayerFile, LayerResult
from tasks.sae import course, files, fit, measures
from tasks.settings import LaminarError, resolve_device
from tasks.stats import FREQ_BINS

OnEpoch = Callable[[int, torch.Tensor], None] | None
INPUT_COLUMNS = ("x_mean_norm", "x_var", "x_neg_frac")  # the input statistics a row reports


class InMemory:
    """A layer held whole in memory, trained in full batch (the course's way)."""

    def __init__(self, x_np: np.ndarray, device: str) -> None:
        with warnings.catch_warnings():  # Arrow's buffer is read-only; nothing writes to x
            warnings.simplefilter("ignore", UserWarning)
            self.x = torch.from_numpy(x_np).to(device)  # (N, d)
        self.n_rows, self.d = self.x.shape

    def chunks(self) -> Iterator[torch.Tensor]:
        yield self.x

    def fit(self, cfg: Config, seed: int, on_epoch: OnEpoch) -> fit.TrainResult:
        settings = cfg.subset(*SAE_FIELDS, "precision")
        return fit.train(self.x, **settings, seed=seed, on_epoch=on_epoch)


class Streamed:
    """A layer read from its file a row group at a time, trained in minibatches of
    cfg.batch_tokens tokens (tasks.minibatch): memory does not grow with N."""

    def __init__(self, src: store.ActivationFile, device: str) -> None:
        self.src, self.device = src, device
        self.n_rows, self.d = src.n_rows, src.d

    def chunks(self) -> Iterator[torch.Tensor]:
        return minibatch.chunks(self.src, self.device)

    def fit(self, cfg: Config, seed: int, on_epoch: OnEpoch) -> fit.TrainResult:
        settings = cfg.subset(*SAE_FIELDS, "precision")
        return minibatch.train(
            self.src,
            batch_tokens=cfg.batch_tokens,
            **settings,
            seed=seed,
            device=self.device,
            on_epoch=on_epoch,
        )


def refuse_unusable(label: str, n: int, stats: dict[str, Any]) -> None:
    """A layer an SAE cannot be trained on (or measured on) fails by name, before any work.
    `stats`: measures.input_stats of its activations."""
    if not stats["finite"]:
        raise LaminarError(f"{label}: activations contain NaN or inf; nothing was trained.")
    if stats["constant"]:
        kind = "all zero" if stats["all_zero"] else "the same vector for every token"
        raise LaminarError(
            f"{label}: its activations do not vary ({kind}, {n} tokens): an SAE has "
            "nothing to learn there and FVU is undefined; check --hook, or leave the layer out "
            "with --layers."
        )


def checked_stats(layer: InMemory | Streamed, label: str) -> dict[str, Any]:
    """The layer's input statistics (measures.input_stats), refused by name when unusable;
    only the reported ones are returned."""
    stats = measures.input_stats(layer.chunks())
    refuse_unusable(label, layer.n_rows, stats)
    return {k: stats[k] for k in INPUT_COLUMNS}


def train_layer(
    layer: InMemory | Streamed,
    cfg: Config,
    label: str,
    seed: int = 0,
    on_epoch: OnEpoch = None,
) -> tuple[dict[str, Any], course.TiedSAE]:
    """Train a fresh SAE on one layer (in full batch or minibatches, as `layer` says): its
    metrics row and loss curve, and the SAE. Every path measures with tasks.sae.measures."""
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    stats = checked_stats(layer, label)
    with matmul_precision(cfg.precision):
        result = layer.fit(cfg, seed, on_epoch)
    check_losses(label, result.losses)
    with matmul_precision("fp32"):  # metrics are exact whatever the training's precision
        out = {**measures.metrics(result.sae, layer.chunks(), stats["x_var"]), **stats}
    where = (device, layer.n_rows, start)
    return finish(out, result.losses, result.sae, where, label), result.sae


def check_losses(label: str, losses: list[float]) -> None:
    if not all(math.isfinite(v) for v in losses):
        bad = next(i for i, v in enumerate(losses) if not math.isfinite(v))
        raise LaminarError(
            f"{label}: the SAE loss became {losses[bad]} at epoch {bad}; try a lower --lr."
        )


def finish(
    out: dict[str, Any], losses: list[float], model: Any, where: tuple[str, int, float], label: str
) -> dict[str, Any]:
    """The layer's metrics row, for a trained SAE and a published one alike: the SAE's metrics
    and input statistics, the histogram of latent frequencies, the loss curve ([] for a
    published SAE) and where and how long it ran. Every number is finite, or the layer fails by
    name. `where`: (device, tokens measured, perf_counter at the layer's start)."""
    device, n_tokens, start = where
    m, d = model.weight.shape
    out.update(
        freq_hist=freq_hist(out.pop("latent_freq")),
        final_loss=losses[-1] if losses else out.get("final_loss"),
        seconds=time.perf_counter() - start,
        device=device,
        hardware=describe_device(device),
        ran_on=this_process(),
        n_tokens=n_tokens,
        d=d,
        latent=m,
        k=int(getattr(model, "k", 0) or 0),
        loss_curve=losses,
    )
    bad = [k for k, v in out.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:  # never reported as a number: the layer fails by name instead
        raise LaminarError(
            f"{label}: {', '.join(bad)} came out as {out[bad[0]]} (activation variance "
            f"{out['x_var']:.3g}); nothing was written for this layer."
        )
    return out


def freq_hist(freq: np.ndarray) -> list[int]:
    """Latents per log10-frequency bin (stats.FREQ_BINS) of the latents that fire."""
    live = freq[freq > 0]
    return np.histogram(np.log10(live), FREQ_BINS)[0].tolist() if len(live) else []


def write_layer_json(
    cfg: Config, acts: LayerFile, row: dict[str, Any], label: str, seed: int
) -> FileRecord:
    """Metrics and loss curve as JSON at paths.layer_json."""
    path = paths.layer_json(cfg, Path(acts["path"]), seed)
    settings = paths.layer_settings(cfg, seed)
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
    task_run_name="sae {label}",
    cache_policy=cache.ContentKey(
        fields=(*RESULT_FIELDS, "save_saes"),
        exclude=("label",),
    ),
    retries=0,  # training is deterministic: a retry would fail the same way
)
def train_sae(
    cfg: Config, name: str, layer: int, acts: LayerFile, sae_seed: int, label: str
) -> LayerResult:
    """Train the layer's SAE from seed `sae_seed`; the result is one metrics row (plus its loss
    curve and latent-frequency histogram). `label` names the run: 'gpt2 L3' (or 'gpt2 L3 s1'
    when several seeds are trained)."""
    json_path = paths.layer_json(cfg, Path(acts["path"]), sae_seed)
    progress = paths.epochs_file(json_path)
    progress.parent.mkdir(parents=True, exist_ok=True)
    every = -1.0 if cfg.quiet else cfg.progress_every
    report = EpochReporter(label, cfg.epochs, every, progress)
    device = resolve_device(cfg.device)
    try:
        if cfg.batch_tokens:
            layer_data: InMemory | Streamed = Streamed(store.ActivationFile(acts), device)
        else:
            layer_data = InMemory(store.read_activations(acts), device)
        out, model = train_layer(layer_data, cfg, label, sae_seed, report)
    finally:
        progress.unlink(missing_ok=True)
    saved = []
    if cfg.save_saes:  # before the metrics JSON, which marks the layer done
        folder = paths.sae_dir(json_path)
        store.sweep_temporaries(folder)  # a killed run's half-written SAE (151-419 MB each)
        about = {"layer": layer, "sae_seed": sae_seed, "activations": acts}
        about["settings"] = paths.layer_settings(cfg, sae_seed)
        files.save(model, folder, f"blocks.{layer}.{cfg.hook}", name, about)
        saved = [store.file_record(folder / f) for f in (files.WEIGHTS_FILE, files.CFG_FILE)]
    row = {"model": name, "layer": layer, "sae_seed": sae_seed, **out}
    record = write_layer_json(cfg, acts, row, label, sae_seed)
    get_run_logger().info(
        "%-16s %7.1fs  density %6.2f%%  loss %.5g  fvu %.3f",
        label,
        out["seconds"],
        out["density_pct"],
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
