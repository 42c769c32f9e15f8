"""Extract: one forward pass of a model over the batch, hooking every requested layer at once,
streaming each layer's activations into its own Parquet file.

Memory holds one chunk of sequences at one layer at a time: each hook writes its (chunk, pos, d)
slice as a row group and lets it go, so GPT-2 large never materialises 36 layers x 10k tokens."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from prefect import task

from tasks import cache, paths, store
from tasks.config import Config
from tasks.host import describe_device, this_process
from tasks.models import load_model
from tasks.precision import matmul_precision
from tasks.progress import Ticker
from tasks.records import Batch, Extraction, LayerFile
from tasks.settings import LaminarError, parse_layer_spec, resolve_device

log = logging.getLogger(__name__)


def hook_names(bridge: Any, hook: str, layers: list[int]) -> dict[int, str]:
    names = {layer: f"blocks.{layer}.{hook}" for layer in layers}
    if names[layers[0]] not in bridge.hook_dict:
        valid = sorted({n.split(".", 2)[2] for n in bridge.hook_dict if n.startswith("blocks.0.")})
        raise LaminarError(
            f"--hook '{hook}' is not a hook of this model's blocks: use one of {', '.join(valid)}."
        )
    return names


class LayerWriters:
    """One Parquet writer per layer, opened on first use, renamed into place only on success."""

    def __init__(self, out_dir: Path, metadata: dict[str, str], stack: contextlib.ExitStack):
        self.out_dir, self.metadata, self.stack = out_dir, metadata, stack
        self.writers: dict[int, pq.ParquetWriter] = {}

    def path(self, layer: int) -> Path:
        return paths.layer_file(self.out_dir, layer)

    def write(self, layer: int, rows: tuple[np.ndarray, ...], acts: np.ndarray) -> None:
        if layer not in self.writers:
            tmp = self.stack.enter_context(store.atomic_path(self.path(layer)))
            meta = {**self.metadata, "layer": str(layer), "d": str(acts.shape[1])}
            schema = store.activation_schema(acts.shape[1], meta)
            writer = pq.ParquetWriter(tmp, schema, compression="none", use_dictionary=False)
            self.stack.callback(writer.close)  # closes before the rename (LIFO)
            self.writers[layer] = writer
        self.writers[layer].write_table(store.activation_table(*rows, acts))


def _row_columns(start: int, chunk: np.ndarray, first: int) -> tuple[np.ndarray, ...]:
    """seq, pos and token_id of each row a hook writes for this chunk (chunk, seq_len)."""
    pos = np.arange(first, chunk.shape[1])
    seq = np.repeat(np.arange(start, start + len(chunk)), len(pos))
    return seq, np.tile(pos, len(chunk)), chunk[:, first:].ravel()


def _capture(
    act: torch.Tensor, hook: Any, *, layer: int, first: int, rows: tuple, out: LayerWriters
) -> None:
    # act: (chunk, seq_len, d). Drop position 0 unless kept, flatten to (chunk*(seq_len-first), d).
    # Non-finite values are written as they are: the layer's training task rejects them, so
    # one broken layer fails alone, named, while the others go on.
    x = act[:, first:, :].detach().float().reshape(-1, act.shape[-1]).cpu().numpy()
    out.write(layer, rows, x)


def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return lambda pad: None


_TRIM = _malloc_trim()


def _release(act: torch.Tensor, hook: Any, *, attn: Any) -> None:
    # TransformerLens's attention bridge keeps its last pattern (batch, heads, pos, pos) on the
    # module: 36 x 84 MB per GPT-2-large sequence. Drop it once the block is done, and hand the
    # block's freed buffers back to the OS: glibc otherwise keeps them, and RSS grows by
    # gigabytes over one pass of a deep model (measured by benchmarks/bench.py).
    if attn is not None:
        attn._pattern = None
    if act.device.type == "cpu":
        _TRIM(0)


def forward_hooks(bridge: Any, names: dict[int, str], capture: Any) -> list[tuple[str, Any]]:
    """The capture hook at each requested layer, plus a memory release after every block."""
    hooks = [(hn, functools.partial(capture, layer=layer)) for layer, hn in names.items()]
    for i in range(max(names) + 1):
        attn = getattr(bridge.blocks[i], "attn", None)
        hooks.append((f"blocks.{i}.hook_resid_post", functools.partial(_release, attn=attn)))
    return hooks


@task(
    name="extract",
    task_run_name="extract {name}",
    cache_policy=cache.ContentKey(
        fields=("layers", "hook", "keep_first_token"), exclude=("model",)
    ),
)
def extract_activations(
    cfg: Config, model: str, name: str, weights_fingerprint: str, tokens: Batch
) -> Extraction:
    """Run the batch through `model` once and write one activation file per requested layer."""
    bridge = load_model(model, resolve_device(cfg.device))
    n_layers = bridge.cfg.n_layers
    layers = parse_layer_spec(cfg.layers, n_layers)
    names = hook_names(bridge, cfg.hook, layers)
    batch = store.read_batch(tokens["tokens"])  # (n_seqs, seq_len)
    first = 0 if cfg.keep_first_token else 1
    sha = tokens["tokens"]["sha256"]
    out_dir = paths.activation_dir(cfg, name, weights_fingerprint, sha)
    meta = {
        "model": model,
        "hook": cfg.hook,
        "tokens_sha256": sha,
        "keep_first_token": str(cfg.keep_first_token),
    }
    device = next(bridge.parameters()).device
    store.sweep_temporaries(out_dir)
    tick = Ticker(f"extract {name}", len(batch), -1.0 if cfg.quiet else cfg.progress_every)
    with contextlib.ExitStack() as stack:
        out = LayerWriters(out_dir, meta, stack)
        for start in range(0, len(batch), cfg.extract_batch):
            tick(start)
            chunk = batch[start : start + cfg.extract_batch]
            rows = _row_columns(start, chunk, first)
            capture = functools.partial(_capture, first=first, rows=rows, out=out)
            hooks = forward_hooks(bridge, names, capture)
            # exact fp32 matmuls, even while a TF32 training runs in another thread
            with torch.inference_mode(), matmul_precision("fp32"):
                bridge.run_with_hooks(
                    torch.from_numpy(chunk).to(device),
                    fwd_hooks=hooks,
                    return_type=None,
                    stop_at_layer=max(layers) + 1,  # blocks past the last hooked one never run
                )
    files: list[LayerFile] = [
        {"layer": layer, **store.file_record(out.path(layer))} for layer in layers
    ]
    log.info("%s: wrote %d activation files under %s", name, len(files), out_dir)
    return {
        "model": model,
        "name": name,
        "n_layers": n_layers,
        "files": files,
        "ran_on": this_process(),
        "hardware": describe_device(str(device)),
    }
