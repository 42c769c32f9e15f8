"""The sparse autoencoder and its metrics, in one readable file.

The default is the course's SAE exactly: tied weights W (m, d), no biases,
    z = topk(ReLU(x Wᵀ)),   x̂ = z W,   loss = MSE(x̂, x) + l1 · mean|z|,
trained with Adam on the full batch, one step per epoch. Shapes: x (N, d), z (N, m)."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from tasks import store


@contextlib.contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """'tf32' allows TF32 tensor cores for float32 matmuls (CUDA) while the block runs."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def topk_k(latent: int, frac: float) -> int:
    """k = floor(latent * frac); the small epsilon makes 1/3 of 6144 exactly 2048 in floats."""
    return math.floor(latent * frac + 1e-9)


def topk_mask(z: torch.Tensor, k: int) -> torch.Tensor | None:
    """(N, m) bool: True where an entry is >= its row's k-th largest (ties at the k-th value are
    all kept); None when k keeps every entry."""
    if not 0 < k < z.shape[1]:
        return None
    kth = z.topk(k, dim=1, sorted=False).values.min(dim=1, keepdim=True).values  # (N, 1)
    return z >= kth


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
        keep = topk_mask(z, self.k)
        return z if keep is None else z * keep

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return z @ self.weight, z  # x̂ (N, d), z (N, m)


def sae_loss(x: torch.Tensor, x_hat: torch.Tensor, z: torch.Tensor, l1: float) -> torch.Tensor:
    return F.mse_loss(x_hat, x) + l1 * z.abs().mean()


@dataclass
class TrainResult:
    sae: TiedSAE
    losses: list[float]  # total loss of each epoch, computed before that epoch's update


@torch.no_grad()
def loss_and_grad(sae: TiedSAE, x: torch.Tensor, l1: float) -> torch.Tensor:
    """One full-batch step's loss, with W's gradient written to sae.weight.grad by hand.

    The same function and gradient as autograd through `forward` + `sae_loss` (a test checks
    it), in five matmuls and a few in-place passes over the (N, m) latents, with no autograd
    graph: the matmuls are ~90% of the work at GPT-2 widths. Shapes: x (N, d), W (m, d)."""
    w = sae.weight
    n, d = x.shape
    z = torch.mm(x, w.t()).clamp_(min=0)  # (N, m) pre-activations, ReLU in place
    if (keep := topk_mask(z, sae.k)) is not None:
        z.mul_(keep)
    err = torch.mm(z, w).sub_(x)  # (N, d) x̂ - x
    loss = err.pow(2).mean() + l1 * z.mean()  # z >= 0, so mean|z| = mean z
    g_err = err.mul_(2.0 / (n * d))  # (N, d) dL/dx̂, reusing err's memory
    g_z = torch.mm(g_err, w.t()).add_(l1 / z.numel())  # (N, m) dL/dz
    g_z.mul_(z > 0)  # through the top-k mask and the ReLU: only kept positive entries
    grad = torch.mm(g_z.t(), x)  # (m, d) encoder's share
    grad.addmm_(z.t(), g_err)  # + decoder's share (tied weights)
    w.grad = grad
    return loss


@torch.no_grad()
def loss_and_grad_bf16(sae: TiedSAE, x: torch.Tensor, x16: torch.Tensor, l1: float) -> torch.Tensor:
    """loss_and_grad with the five matmuls on bf16 operands (x16 = x in bf16, made once): the
    kernels accumulate in fp32 and round their outputs to bf16 (8 significant bits, a relative
    error of at most 2^-9 per element). W, its gradient, x̂ - x, the loss and Adam's state stay
    fp32, so rounding enters the step's direction, never the weights' precision. z is kept in
    bf16: its top-k runs on half the bytes."""
    w = sae.weight
    n, d = x.shape
    w16 = w.to(torch.bfloat16)  # (m, d)
    z = torch.mm(x16, w16.t()).clamp_(min=0)  # (N, m) bf16
    if (keep := topk_mask(z, sae.k)) is not None:
        z.mul_(keep)
    err = torch.mm(z, w16).float().sub_(x)  # (N, d) fp32: x̂ - x
    loss = err.pow(2).mean() + l1 * z.mean(dtype=torch.float32)
    g_err = err.mul_(2.0 / (n * d)).to(torch.bfloat16)  # (N, d) dL/dx̂
    g_z = torch.mm(g_err, w16.t()).add_(l1 / z.numel())  # (N, m) bf16 dL/dz
    g_z.mul_(z > 0)
    grad = torch.mm(g_z.t(), x16).float()  # (m, d) encoder's share
    grad.add_(torch.mm(z.t(), g_err).float())  # + decoder's share
    w.grad = grad
    return loss


def step_fn(x: torch.Tensor, precision: str) -> Callable[[TiedSAE, float], torch.Tensor]:
    """The loss-and-gradient step for x at `precision` ('bf16': bf16 matmuls; else fp32, where
    'tf32' is the caller's matmul_precision setting)."""
    if precision == "bf16":
        x16 = x.to(torch.bfloat16)  # (N, d), once per training
        return lambda sae, l1: loss_and_grad_bf16(sae, x, x16, l1)
    return lambda sae, l1: loss_and_grad(sae, x, l1)


def fresh(
    d: int, expansion: int, topk_frac: float, lr: float, seed: int, device: Any
) -> tuple[TiedSAE, torch.optim.Adam]:
    """A new SAE for width d, initialised from `seed` alone, and its Adam optimizer."""
    generator = torch.Generator().manual_seed(seed)
    latent = expansion * d
    sae = TiedSAE(d, latent, topk_k(latent, topk_frac), generator).to(device)
    return sae, torch.optim.Adam(sae.parameters(), lr=lr)


def train(
    x: torch.Tensor,
    *,
    expansion: int,
    topk_frac: float,
    epochs: int,
    lr: float,
    l1: float,
    seed: int,
    precision: str = "fp32",
    on_epoch: Callable[[int, torch.Tensor], None] | None = None,
) -> TrainResult:
    """Fresh seeded SAE, `epochs` full-batch Adam steps on x (N, d). `on_epoch(k, loss)` is told
    after epoch k with the loss still on the device (reading it is the caller's choice)."""
    sae, opt = fresh(x.shape[1], expansion, topk_frac, lr, seed, x.device)
    losses = torch.empty(epochs, device=x.device)  # kept on device: no sync per step
    step = step_fn(x, precision)
    for epoch in range(epochs):
        losses[epoch] = step(sae, l1)
        opt.step()
        if on_epoch is not None:
            on_epoch(epoch + 1, losses[epoch])
    return TrainResult(sae, losses.tolist())


@torch.no_grad()
def metrics(sae: TiedSAE, x: torch.Tensor) -> dict[str, float]:
    """Metrics of the trained SAE on x (N, d); every one is over all tokens of the layer."""
    x_hat, z = sae(x)
    active = z != 0  # (N, m)
    mse = F.mse_loss(x_hat, x).item()
    var = variance(x)
    per_latent = active.float().mean(dim=0)  # (m,) firing frequency
    fired = active.sum(dim=0)
    mean_mag = torch.where(fired > 0, z.sum(dim=0) / fired.clamp(min=1), 0.0)  # (m,)
    return {
        "latent_freq": per_latent.cpu().numpy(),
        "density_pct": 100.0 * active.float().mean().item(),
        "final_mse": mse,
        "fvu": mse / var if var > 0 else float("nan"),
        "l0": active.sum(dim=1).float().mean().item(),
        "dead_pct": 100.0 * (fired == 0).float().mean().item(),
        "density_activation": (minmax(per_latent) * minmax(mean_mag)).mean().item(),
    }


def variance(x: torch.Tensor) -> float:
    """Mean squared deviation of x (N, d) from its per-feature mean: the denominator of FVU."""
    return (x - x.mean(dim=0)).pow(2).mean().item()


def minmax(v: torch.Tensor) -> torch.Tensor:
    span = v.max() - v.min()
    return (v - v.min()) / span if span > 0 else torch.zeros_like(v)


# ------------------------------------------------------------- on disk, in SAELens's format

WEIGHTS_FILE, CFG_FILE = "sae_weights.safetensors", "cfg.json"


def save(sae: TiedSAE, folder: Path, hook_name: str, model_name: str, laminar: dict) -> None:
    """Write the SAE as SAELens writes a TopK SAE (SAE.load_from_disk(folder) reads it): its
    encoder W_enc = Wᵀ (d, m), decoder W_dec = W (m, d), zero biases (laminar's SAE has none),
    and cfg.json with k, the hook and the model, plus laminar's own record under "laminar".
    Both files are written atomically; the weights first, so a cfg.json means a whole SAE."""
    from safetensors.torch import save as to_bytes

    w = sae.weight.detach().float().cpu()  # (m, d)
    m, d = w.shape
    state = {
        "W_enc": w.t().contiguous(),
        "W_dec": w.contiguous(),
        "b_enc": torch.zeros(m),
        "b_dec": torch.zeros(d),
    }
    cfg = {
        "architecture": "topk",
        "d_in": d,
        "d_sae": m,
        "k": sae.k if 0 < sae.k < m else m,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"model_name": model_name, "hook_name": hook_name, "hook_head_index": None},
        "laminar": laminar,
    }
    store.write_bytes(folder / WEIGHTS_FILE, to_bytes(state))
    store.write_json(folder / CFG_FILE, cfg)


def load(folder: str | Path) -> TiedSAE:
    """A saved SAE (see `save`) as laminar's TiedSAE, on the CPU, without SAELens."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg: dict[str, Any] = json.loads((folder / CFG_FILE).read_text())
    w = load_file(folder / WEIGHTS_FILE)["W_dec"]  # (m, d)
    sae = TiedSAE(cfg["d_in"], cfg["d_sae"], cfg["k"], torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.weight.copy_(w)
    return sae
