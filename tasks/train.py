"""Train: one freshly initialised SAE per (model, layer), the fan-out of the DAG."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import task
from prefect.logging import get_run_logger

from tasks import cache, minibatch, paths, sae, store
from tasks.config import RESULT_FIELDS, SAE_FIELDS, Config, LaminarError, resolve_device
from tasks.host import describe_device, this_process
from tasks.precision import matmul_precision
from tasks.progress import EpochReporter
from tasks.records import FileRecord, LayerFile, LayerResult
from tasks.stats import FREQ_BINS


def input_stats(x: torch.Tensor) -> dict[str, float]:
    """What the SAE is fed: mean row norm, variance about the mean, share of negatives."""
    return {
        "x_mean_norm": x.norm(dim=1).mean().item(),
        "x_var": sae.variance(x),
        "x_neg_frac": (x < 0).float().mean().item(),
    }


def refuse_unusable(label: str, n: int, finite: bool, constant: bool, all_zero: bool) -> None:
    """A layer an SAE cannot be trained on fails by name, before any training."""
    if not finite:
        raise LaminarError(f"{label}: activations contain NaN or inf; nothing was trained.")
    if constant:
        kind = "all zero" if all_zero else "the same vector for every token"
        raise LaminarError(
            f"{label}: its activations do not vary ({kind}, {n} tokens): an SAE has "
            "nothing to learn there and FVU is undefined; check --hook, or leave the layer out "
            "with --layers."
        )


def train_layer(
    x_np: np.ndarray,
    cfg: Config,
    label: str,
    seed: int = 0,
    on_epoch: Callable[[int, torch.Tensor], None] | None = None,
) -> tuple[dict[str, Any], sae.TiedSAE]:
    """Train on one layer's activations (N, d) in full batch, the course's way: its metrics and
    loss curve, and the SAE."""
    refuse_unusable(label, len(x_np), bool(np.isfinite(x_np).all()), False, False)
    device = resolve_device(cfg.device)
    start = time.perf_counter()
    with warnings.catch_warnings():  # Arrow's buffer is read-only; nothing writes to x
        warnings.simplefilter("ignore", UserWarning)
        x = torch.from_numpy(x_np).to(device)
    var = sae.variance(x)
    refuse_unusable(label, x.shape[0], True, var == 0, not x.any())
    with matmul_precision(cfg.precision):
        settings = cfg.subset(*SAE_FIELDS, "precision")
        result = sae.train(x, **settings, seed=seed, on_epoch=on_epoch)
    check_losses(label, result.losses)
    with matmul_precision("fp32"):  # metrics are exact whatever the training's precision
        out = {**sae.metrics(result.sae, x), **input_stats(x)}
    return finish(out, result, start, device, x.shape, var, label), result.sae


def train_layer_streamed(
    src: store.ActivationFile,
    cfg: Config,
    label: str,
    seed: int = 0,
    on_epoch: Callable[[int, torch.Tensor], None] | None = None,
) -> tuple[dict[str, Any], sae.TiedSAE]:
    """Train on one layer's activations in minibatches of cfg.batch_tokens tokens, read from
    the file a row group at a time (tasks.minibatch): memory does not grow with N."""
    device = resolve_device(cfg.device)
    start = time.perf_counter()
    stats = minibatch.input_stats(src, device)
    refuse_unusable(
        label, src.n_rows, stats.pop("finite"), stats.pop("constant"), stats.pop("all_zero")
    )
    with matmul_precision(cfg.precision):
        result = minibatch.train(
            src,
            batch_tokens=cfg.batch_tokens,
            **cfg.subset(*SAE_FIELDS, "precision"),
            seed=seed,
            device=device,
            on_epoch=on_epoch,
        )
    check_losses(label, result.losses)
    with matmul_precision("fp32"):
        out = {**minibatch.metrics(result.sae, src, stats["x_var"], device), **stats}
    return finish(
        out, result, start, device, (src.n_rows, src.d), stats["x_var"], label
    ), result.sae


def check_losses(label: str, losses: list[float]) -> None:
    if not all(math.isfinite(v) for v in losses):
        bad = next(i for i, v in enumerate(losses) if not math.isfinite(v))
        raise LaminarError(
            f"{label}: the SAE loss became {losses[bad]} at epoch {bad}; try a lower --lr."
        )


def finish(
    out: dict[str, Any],
    result: sae.TrainResult,
    start: float,
    device: str,
    shape: tuple[int, int],
    var: float,
    label: str,
) -> dict[str, Any]:
    """The layer's metrics row: the SAE's metrics and input statistics, the histogram of latent
    frequencies, the loss curve and where and how long it ran. Every number is finite, or the
    layer fails by name."""
    out.update(
        freq_hist=freq_hist(out.pop("latent_freq")),
        final_loss=result.losses[-1],
        seconds=time.perf_counter() - start,
        device=device,
        hardware=describe_device(device),
        ran_on=this_process(),
        n_tokens=shape[0],
        d=shape[1],
        latent=result.sae.weight.shape[0],
        k=result.sae.k,
        loss_curve=result.losses,
    )
    bad = [k for k, v in out.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:  # never reported as a number: the layer fails by name instead
        raise LaminarError(
            f"{label}: {', '.join(bad)} came out as {out[bad[0]]} (activation variance {var:.3g}); "
            "nothing was written for this layer."
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
    try:
        if cfg.batch_tokens:
            src = store.ActivationFile(acts)
            out, model = train_layer_streamed(src, cfg, label, sae_seed, report)
        else:
            out, model = train_layer(store.read_activations(acts), cfg, label, sae_seed, report)
    finally:
        progress.unlink(missing_ok=True)
    saved = []
    if cfg.save_saes:  # before the metrics JSON, which marks the layer done
        folder = paths.sae_dir(json_path)
        store.sweep_temporaries(folder)  # a killed run's half-written SAE (151-419 MB each)
        about = {"layer": layer, "sae_seed": sae_seed, "activations": acts}
        about["settings"] = paths.layer_settings(cfg, sae_seed)
        sae.save(model, folder, f"blocks.{layer}.{cfg.hook}", name, about)
        saved = [store.file_record(folder / f) for f in (sae.WEIGHTS_FILE, sae.CFG_FILE)]
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
