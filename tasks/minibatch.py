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
metrics (after) are streamed the same way, in file order, and are over all N tokens: the same
definitions as tasks.sae.metrics, accumulated in float64."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from tasks import sae
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
) -> sae.TrainResult:
    """A fresh SAE seeded as tasks.sae.train seeds it, `epochs` passes over the file in
    minibatches. An epoch's loss is the token-weighted mean of its minibatches' losses, each
    taken before that minibatch's step. The shuffle has its own generator, seeded by `seed`."""
    model, opt = sae.fresh(src.d, expansion, topk_frac, lr, seed, device)
    rng = np.random.default_rng(seed)
    losses = torch.empty(epochs, device=device)
    ws = sae.Workspace()  # one set of buffers for every minibatch
    for epoch in range(epochs):
        total = torch.zeros((), dtype=torch.float64, device=device)
        for xb in minibatches(src, batch_tokens, rng):
            x = torch.from_numpy(xb).to(device)  # (b, d)
            total += sae.step_fn(x, precision, ws)(model, l1).double() * len(xb)
            opt.step()
        losses[epoch] = total / src.n_rows
        if on_epoch is not None:
            on_epoch(epoch + 1, losses[epoch])
    return sae.TrainResult(model, losses.tolist())


def _chunks(src: ActivationFile, device: str) -> Iterator[torch.Tensor]:
    for group in range(src.n_groups):
        yield torch.from_numpy(src.group(group)).to(device)


@torch.no_grad()
def input_stats(src: ActivationFile, device: str) -> dict[str, Any]:
    """What the SAE is fed, over all tokens: mean row norm, variance about the per-feature mean
    (FVU's denominator), share of negatives; and whether every value is finite."""
    n, d = src.n_rows, src.d
    s1 = torch.zeros(d, dtype=torch.float64, device=device)
    s2 = torch.zeros(d, dtype=torch.float64, device=device)
    norms = neg = 0.0
    finite = True
    for x in _chunks(src, device):
        finite = finite and bool(torch.isfinite(x).all())
        s1 += x.sum(dim=0, dtype=torch.float64)
        s2 += x.double().pow(2).sum(dim=0)
        norms += x.norm(dim=1).sum().item()
        neg += (x < 0).sum().item()
    var = ((s2 - s1.pow(2) / n).sum() / (n * d)).clamp(min=0).item()
    mean_sq = s2.sum().item() / (n * d)
    return {
        "x_mean_norm": norms / n,
        "x_var": var,
        "x_neg_frac": neg / (n * d),
        "finite": finite,
        # float64 sums leave a rounding residue where the exact variance is 0: below this share
        # of the mean square, the tokens are one vector (all zero when mean_sq is 0)
        "constant": var <= 1e-12 * mean_sq,
        "all_zero": mean_sq == 0,
    }


@torch.no_grad()
def metrics(model: sae.TiedSAE, src: ActivationFile, var: float, device: str) -> dict[str, Any]:
    """tasks.sae.metrics over all tokens of the file, a row group at a time."""
    m = model.weight.shape[0]
    fired = torch.zeros(m, dtype=torch.int64, device=device)
    z_sum = torch.zeros(m, dtype=torch.float64, device=device)
    sq_err = torch.zeros((), dtype=torch.float64, device=device)
    sums = {"l2_ratio": 0.0, "cossim": 0.0}
    for x in _chunks(src, device):
        x_hat, z = model(x)
        fired += (z != 0).sum(dim=0)
        z_sum += z.sum(dim=0, dtype=torch.float64)
        sq_err += (x_hat - x).double().pow(2).sum()
        for key, value in sae.row_sums(x, x_hat).items():
            sums[key] += value
    n, d = src.n_rows, src.d
    mse = sq_err.item() / (n * d)
    per_latent = fired.double() / n  # (m,) firing frequency
    mean_mag = torch.where(fired > 0, z_sum / fired.clamp(min=1), 0.0)
    fvu = mse / var if var > 0 else float("nan")
    return {
        "latent_freq": per_latent.float().cpu().numpy(),
        "density_pct": 100.0 * fired.sum().item() / (n * m),
        "final_mse": mse,
        "fvu": fvu,
        "explained_variance": 1.0 - fvu,
        "l2_ratio": sums["l2_ratio"] / n,
        "cossim": sums["cossim"] / n,
        "dense_pct": 100.0 * (per_latent > sae.DENSE_FREQ).double().mean().item(),
        "l0": fired.sum().item() / n,
        "dead_pct": 100.0 * (fired == 0).double().mean().item(),
        "density_activation": (sae.minmax(per_latent.float()) * sae.minmax(mean_mag.float()))
        .mean()
        .item(),
    }
