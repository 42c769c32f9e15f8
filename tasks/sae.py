"""The sparse autoencoder and its metrics, in one readable file.

The default is the course's SAE exactly: tied weights W (m, d), no biases,
    z = topk(ReLU(x Wᵀ)),   x̂ = z W,   loss = MSE(x̂, x) + l1 · mean|z|,
trained with Adam on the full batch, one step per epoch. Shapes: x (N, d), z (N, m)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812


def topk_k(latent: int, frac: float) -> int:
    """k = floor(latent * frac); the small epsilon makes 1/3 of 6144 exactly 2048 in floats."""
    return math.floor(latent * frac + 1e-9)


class TiedSAE(torch.nn.Module):
    def __init__(self, d: int, latent: int, k: int, generator: torch.Generator):
        super().__init__()
        # Same distribution as nn.Linear(d, latent, bias=False)'s default init, drawn from
        # our own generator so concurrent trainings stay reproducible.
        bound = 1.0 / math.sqrt(d)
        w = torch.empty(latent, d).uniform_(-bound, bound, generator=generator)
        self.weight = torch.nn.Parameter(w)  # (m, d)
        self.k = k

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = F.relu(x @ self.weight.T)  # (N, m)
        if 0 < self.k < z.shape[1]:
            # Keep entries >= the k-th largest of each token (ties kept), zero the rest.
            kth = z.topk(self.k, dim=1, sorted=False).values.min(dim=1, keepdim=True).values
            z = z * (z >= kth)
        return z

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return z @ self.weight, z  # x̂ (N, d), z (N, m)


def sae_loss(x: torch.Tensor, x_hat: torch.Tensor, z: torch.Tensor, l1: float) -> torch.Tensor:
    return F.mse_loss(x_hat, x) + l1 * z.abs().mean()


@dataclass
class TrainResult:
    sae: TiedSAE
    losses: list[float]  # total loss of each epoch, computed before that epoch's update


def train(
    x: torch.Tensor,
    *,
    expansion: int,
    topk_frac: float,
    epochs: int,
    lr: float,
    l1: float,
    seed: int,
) -> TrainResult:
    """Fresh seeded SAE, `epochs` full-batch Adam steps on x (N, d)."""
    generator = torch.Generator().manual_seed(seed)
    latent = expansion * x.shape[1]
    sae = TiedSAE(x.shape[1], latent, topk_k(latent, topk_frac), generator).to(x.device)
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    losses = torch.empty(epochs, device=x.device)  # kept on device: no sync per step
    for epoch in range(epochs):
        x_hat, z = sae(x)
        loss = sae_loss(x, x_hat, z, l1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses[epoch] = loss.detach()
    return TrainResult(sae, losses.tolist())


@torch.no_grad()
def metrics(sae: TiedSAE, x: torch.Tensor) -> dict[str, float]:
    """Metrics of the trained SAE on x (N, d); every one is over all tokens of the layer."""
    x_hat, z = sae(x)
    active = z != 0  # (N, m)
    mse = F.mse_loss(x_hat, x).item()
    var = (x - x.mean(dim=0)).pow(2).mean().item()  # variance of x about its (per-feature) mean
    per_latent = active.float().mean(dim=0)  # (m,) firing frequency
    fired = active.sum(dim=0)
    mean_mag = torch.where(fired > 0, z.sum(dim=0) / fired.clamp(min=1), 0.0)  # (m,)
    return {
        "density_pct": 100.0 * active.float().mean().item(),
        "final_mse": mse,
        "fvu": mse / var if var > 0 else float("nan"),
        "l0": active.sum(dim=1).float().mean().item(),
        "dead_pct": 100.0 * (fired == 0).float().mean().item(),
        "density_activation": (_minmax(per_latent) * _minmax(mean_mag)).mean().item(),
    }


def _minmax(v: torch.Tensor) -> torch.Tensor:
    span = v.max() - v.min()
    return (v - v.min()) / span if span > 0 else torch.zeros_like(v)
