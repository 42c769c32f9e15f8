"""What an SAE is fed and how well it does, over all tokens of a layer: one definition for every
path (full batch, minibatches, published SAEs). Both read the layer as chunks of rows (x (n, d)
each; the whole layer is one chunk or many) and accumulate in float64, so a layer of any size
is measured in the memory of one chunk's latents."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import torch

DENSE_FREQ = 0.1  # a latent firing on more than this share of tokens counts as dense (SAEBench)


class Encoder(Protocol):
    """Any SAE: model(x) gives (x̂ (n, d), z (n, m)), z >= 0; weight is the decoder (m, d)."""

    weight: torch.Tensor

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


@torch.no_grad()
def input_stats(chunks: Iterable[torch.Tensor]) -> dict[str, Any]:
    """What the SAE is fed, over all tokens: mean row norm, variance about the per-feature mean
    (FVU's denominator), share of negatives; whether every value is finite, and whether the
    tokens are all one vector (`constant`; `all_zero` when that vector is 0)."""
    s1 = s2 = None
    n = 0
    norms = neg = 0.0
    finite = True
    for x in chunks:
        if s1 is None or s2 is None:
            s1 = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
            s2 = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
        finite = finite and bool(torch.isfinite(x).all())
        s1 += x.sum(dim=0, dtype=torch.float64)
        s2 += x.double().pow(2).sum(dim=0)
        norms += x.norm(dim=1).sum().item()
        neg += (x < 0).sum().item()
        n += len(x)
    assert s1 is not None and s2 is not None, "no tokens"
    d = len(s1)
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
def metrics(
    model: Encoder, chunks: Iterable[torch.Tensor], var: float, mean_abs_z: bool = False
) -> dict[str, Any]:
    """The SAE's metrics over every token of `chunks`; `var` is input_stats's x_var. With
    `mean_abs_z`, also mean |z| (the L1 term of the course's loss), from the same encoding."""
    m = model.weight.shape[0]
    fired = z_sum = sq_err = None
    sums = {"l2_ratio": 0.0, "cossim": 0.0}
    n = d = 0
    for x in chunks:
        if fired is None:
            fired = torch.zeros(m, dtype=torch.int64, device=x.device)
            z_sum = torch.zeros(m, dtype=torch.float64, device=x.device)
            sq_err = torch.zeros((), dtype=torch.float64, device=x.device)
        x_hat, z = model(x)  # (n, d), (n, m)
        fired += (z != 0).sum(dim=0)
        z_sum += z.sum(dim=0, dtype=torch.float64)
        sq_err += (x_hat - x).double().pow(2).sum()
        for key, value in row_sums(x, x_hat).items():
            sums[key] += value
        n, d = n + len(x), x.shape[1]
    assert fired is not None and z_sum is not None and sq_err is not None, "no tokens"
    mse = sq_err.item() / (n * d)
    per_latent = fired.double() / n  # (m,) firing frequency
    mean_mag = torch.where(fired > 0, z_sum / fired.clamp(min=1), 0.0)  # (m,)
    fvu = mse / var if var > 0 else float("nan")
    return {
        "latent_freq": per_latent.float().cpu().numpy(),
        "density_pct": 100.0 * fired.sum().item() / (n * m),
        "final_mse": mse,
        "fvu": fvu,
        "explained_variance": 1.0 - fvu,
        "l2_ratio": sums["l2_ratio"] / n,
        "cossim": sums["cossim"] / n,
        "dense_pct": 100.0 * (per_latent > DENSE_FREQ).double().mean().item(),
        "l0": fired.sum().item() / n,
        "dead_pct": 100.0 * (fired == 0).double().mean().item(),
        "density_activation": (minmax(per_latent.float()) * minmax(mean_mag.float())).mean().item(),
        # z >= 0 for every architecture laminar runs, so mean |z| = sum z / (N m)
        **({"mean_abs_z": z_sum.sum().item() / (n * m)} if mean_abs_z else {}),
    }


def row_sums(x: torch.Tensor, x_hat: torch.Tensor) -> dict[str, float]:
    """Sums over tokens of ‖x̂‖/‖x‖ and of cos(x̂, x), for rows x, x̂ (N, d); tokens with a zero
    norm add 0 (SAELens's cosine clamps the norms the same way). Their means are SAELens's
    l2_ratio (below 1: shrinkage) and cossim."""
    nx, nh = x.norm(dim=1).double(), x_hat.norm(dim=1).double()
    dot = (x * x_hat).sum(dim=1).double()
    ratio = torch.where(nx > 0, nh / nx.clamp(min=1e-30), 0.0)
    cos = torch.where((nx > 0) & (nh > 0), dot / (nx * nh).clamp(min=1e-30), 0.0)
    return {"l2_ratio": ratio.sum().item(), "cossim": cos.sum().item()}


def minmax(v: torch.Tensor) -> torch.Tensor:
    span = v.max() - v.min()
    return (v - v.min()) / span if span > 0 else torch.zeros_like(v)
