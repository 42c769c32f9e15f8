"""Minibatch training with bounded memory (--batch-tokens B > 0): a layer's activations are read
from their Parquet file a row group at a time (store.ActivationFile), never all at once.

Each epoch visits the file's row groups (a sequence each, with the default --extract-batch) in
a seeded random order and pools them; once the pool holds POOL_BATCHES x B tokens (or the file
is done) it is shuffled and cut into minibatches of B tokens, one Adam step each, the leftover
staying in the pool. The epoch ends with whatever is left as one smaller minibatch, so each
token is seen exactly once per epoch. Memory holds the pool (about POOL_BATCHES x B tokens, in
two copies while it is shuffled), the minibatch's latents (B, m) and the SAE with its Adam
state: whatever the layer's token count N is.

The input statistics (before training, so a layer that cannot be trained fails at once) and the
metrics (after) read the file the same way, a row group at a time in file order (`chunks`), by
tasks.sae.measures: the one definition every path uses."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from tasks.sae import course, fit
from tasks.store import ActivationFile

POOL_BATCHES = 4  # minibatches' worth of tokens pooled before a shuffle


def minibatches(
    src: ActivationFile, batch_tokens: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """One epoch of (<= batch_tokens, d) float32 minibatches (see the module docstring)."""
    order = rng.permutation(src.n_groups)
    parts: list[np.ndarray] = []
    size = 0
    for i, group in enumerate(order):
        parts.append(src.group(int(group)))
        size += len(parts[-1])
        last = i == len(order) - 1
        if size < POOL_BATCHES * batch_tokens and not last:
            continue
        pool = np.concatenate(parts)
        pool = pool[rng.permutation(len(pool))]
        full = len(pool) // batch_tokens
        for j in range(full):
            yield pool[j * batch_tokens : (j + 1) * batch_tokens]
        rest = pool[full * batch_tokens :]
        parts, size = [rest], len(rest)
        if last and size:
            yield rest


def train(
    src: ActivationFile,
    *,
    batch_tokens: int,
    expansion: int,
    topk_frac: float,
    epochs: int,
    lr: float,
    l1: float,
    seed: int,
    device: str,
    precision: str = "fp32",
    on_epoch: Callable[[int, torch.Tensor], None] | None = None,
) -> fit.TrainResult:
    """A fresh SAE seeded as the full batch's, `epochs` passes over the file in minibatches
    (tasks.sae.fit's epoch loop). The shuffle has its own generator, seeded by `seed`."""
    model, opt = course.fresh(src.d, expansion, topk_frac, lr, seed, device, precision)
    rng = np.random.default_rng(seed)
    ws = course.Workspace()  # one set of buffers for every minibatch

    def epoch() -> Iterator[tuple[fit.Step, int]]:
        for xb in minibatches(src, batch_tokens, rng):
            step = course.step_fn(torch.from_numpy(xb).to(device), precision, ws)  # (b, d)
            yield (lambda step=step: step(model, l1)), len(xb)

    return fit.run_epochs(model, opt, epochs, epoch, src.n_rows, on_epoch)


def chunks(src: ActivationFile, device: str) -> Iterator[torch.Tensor]:
    """The file's rows a row group at a time, in file order: what tasks.sae.measures reads."""
    for group in range(src.n_groups):
        yield torch.from_numpy(src.group(group)).to(device)
