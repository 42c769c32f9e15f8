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


class Workspace:
    """The step's large buffers, kept from one step to the next. A fresh (N, m) tensor is new
    memory the kernel must fault in page by page (~0.07 s for 250 MB on a 2-core CPU), and a
    step makes several; views of buffers that only grow cost nothing after the first step.
    Minibatches of any size up to the first use views of the same buffers."""

    def __init__(self) -> None:
        self._bytes: dict[str, torch.Tensor] = {}

    def get(
        self, name: str, shape: tuple[int, ...], like: torch.Tensor, dtype: Any = None, at: int = 0
    ) -> torch.Tensor:
        """A contiguous `shape` view of buffer `name`, `at` bytes in (contents undefined)."""
        dtype = dtype or like.dtype
        end = at + math.prod(shape) * dtype.itemsize
        buf = self._bytes.get(name)
        if buf is None or buf.numel() < end or buf.device != like.device:
            buf = self._bytes[name] = torch.empty(end, dtype=torch.uint8, device=like.device)
        return buf[at:end].view(dtype).view(shape)

    def buffers(self) -> dict[str, torch.Tensor]:
        return dict(self._bytes)


def kept(z: torch.Tensor, k: int, ws: Workspace) -> torch.Tensor:
    """(N, m) mask in z's dtype, 1.0 where a ReLU'd latent z >= 0 survives the top-k and is
    positive, else 0.0: multiplying z by it applies the top-k, multiplying dL/dz by it passes
    the gradient through the top-k and the ReLU, one mask for both. Kept means >= the row's
    k-th largest (ties at the k-th value all kept) and > 0: >= max(k-th, smallest float > 0).
    A float mask, because multiplying by a bool tensor costs 6x a float one here."""
    n, m = z.shape
    tiny = torch.nextafter(torch.zeros((), dtype=z.dtype), torch.ones((), dtype=z.dtype)).item()
    threshold: torch.Tensor | float = tiny
    if 0 < k < m:
        # topk's values (N, k) and indices live in the buffer that dL/dz takes later (free
        # until then): in fp32, 12 bytes per kept entry fit in its 4 per latent if k <= m / 3
        indices_at = -(-n * k * z.element_size() // 64) * 64  # after the values, aligned
        indices = ws.get("g_z", (n, k), z, torch.long, at=indices_at)
        out = (ws.get("g_z", (n, k), z), indices)
        kth = torch.topk(z, k, dim=1, sorted=False, out=out).values.amin(dim=1, keepdim=True)
        threshold = kth.clamp_(min=tiny)  # (N, 1)
    return torch.ge(z, threshold, out=ws.get("mask", (n, m), z))


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
        mask = kept(z.detach(), self.k, Workspace())  # takes no gradient
        # in place unless autograd needs ReLU's output: no third (N, m) tensor in metrics
        return z * mask if torch.is_grad_enabled() else z.mul_(mask)

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
def loss_and_grad(
    sae: TiedSAE, x: torch.Tensor, l1: float, ws: Workspace | None = None
) -> torch.Tensor:
    """One full-batch step's loss, with W's gradient written to sae.weight.grad by hand.

    The same function and gradient as autograd through `forward` + `sae_loss` (a test checks
    it), in five matmuls and a few in-place passes over the (N, m) latents, with no autograd
    graph: the matmuls are 96-98% of its time at GPT-2 widths (README, the step profile).
    Shapes: x (N, d), W (m, d)."""
    ws = ws or Workspace()
    w = sae.weight
    (n, d), m = x.shape, w.shape[0]
    z = torch.mm(x, w.t(), out=ws.get("z", (n, m), x)).clamp_(min=0)  # (N, m), ReLU'd
    mask = kept(z, sae.k, ws)
    z.mul_(mask)
    err = torch.mm(z, w, out=ws.get("err", (n, d), x)).sub_(x)  # (N, d) x̂ - x
    mse = torch.pow(err, 2, out=ws.get("square", (n, d), x)).mean()
    loss = mse + l1 * z.mean()  # z >= 0, so mean|z| = mean z
    g_err = err.mul_(2.0 / (n * d))  # (N, d) dL/dx̂, reusing err's memory
    g_z = torch.mm(g_err, w.t(), out=ws.get("g_z", (n, m), x)).add_(l1 / z.numel())  # dL/dz
    g_z.mul_(mask)  # through the top-k and the ReLU
    grad = torch.mm(g_z.t(), x, out=ws.get("grad", (m, d), x))  # (m, d) encoder's share
    grad.addmm_(z.t(), g_err)  # + decoder's share (tied weights)
    w.grad = grad
    return loss


@torch.no_grad()
def loss_and_grad_bf16(
    sae: TiedSAE, x: torch.Tensor, x16: torch.Tensor, l1: float, ws: Workspace | None = None
) -> torch.Tensor:
    """loss_and_grad with the five matmuls on bf16 operands (x16 = x in bf16, made once): the
    kernels accumulate in fp32 and round their outputs to bf16 (8 significant bits, a relative
    error of at most 2^-9 per element). W, its gradient, x̂ - x, the loss and Adam's state stay
    fp32, so rounding enters the step's direction, never the weights' precision. z is kept in
    bf16: its top-k runs on half the bytes."""
    ws = ws or Workspace()
    w = sae.weight
    (n, d), m = x.shape, w.shape[0]
    w16 = ws.get("w16", (m, d), x16).copy_(w)  # (m, d)
    z = torch.mm(x16, w16.t(), out=ws.get("z", (n, m), x16)).clamp_(min=0)  # (N, m) bf16
    mask = kept(z, sae.k, ws)
    z.mul_(mask)
    x_hat = torch.mm(z, w16, out=ws.get("x_hat16", (n, d), x16))
    err = torch.sub(x_hat, x, out=ws.get("err", (n, d), x))  # (N, d) fp32: x̂ - x
    mse = torch.pow(err, 2, out=ws.get("square", (n, d), x)).mean()
    # mean z from its row sums (a matvec, fp32 accumulation, each row rounded to bf16): a
    # mean over a bf16 tensor in fp32 converts every element and costs 10x as much here
    ones = ws.get("ones", (m, 1), x16).fill_(1)
    row_sums = torch.mm(z, ones, out=ws.get("row_sums16", (n, 1), x16))
    loss = mse + l1 * row_sums.sum(dtype=torch.float32) / z.numel()
    g_err = ws.get("g_err16", (n, d), x16).copy_(err.mul_(2.0 / (n * d)))  # (N, d) dL/dx̂
    g_z = torch.mm(g_err, w16.t(), out=ws.get("g_z", (n, m), x16)).add_(l1 / z.numel())
    g_z.mul_(mask)
    part = ws.get("grad16", (m, d), x16)  # (m, d) bf16: each share, then summed in fp32
    grad = ws.get("grad", (m, d), x).copy_(torch.mm(g_z.t(), x16, out=part))  # encoder's
    grad.add_(torch.mm(z.t(), g_err, out=part))  # + decoder's share
    w.grad = grad
    return loss


def step_fn(
    x: torch.Tensor, precision: str, ws: Workspace
) -> Callable[[TiedSAE, float], torch.Tensor]:
    """The loss-and-gradient step for x at `precision` ('bf16': bf16 matmuls; else fp32, where
    'tf32' is the caller's matmul_precision setting), its buffers in `ws`."""
    if precision == "bf16":
        x16 = ws.get("x16", tuple(x.shape), x, torch.bfloat16).copy_(x)  # (N, d)
        return lambda sae, l1: loss_and_grad_bf16(sae, x, x16, l1, ws)
    return lambda sae, l1: loss_and_grad(sae, x, l1, ws)


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
    step = step_fn(x, precision, Workspace())
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
