"""The sparse autoencoder and its metrics, in one readable file.

The default is the course's SAE exactly: tied weights W (m, d), no biases,
    z = topk(ReLU(x Wᵀ)),   x̂ = z W,   loss = MSE(x̂, x) + l1 · mean|z|,
trained with Adam on the full batch, one step per epoch. Shapes: x (N, d), z (N, m)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from tasks import store


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


# Same-width integers: a float's bits read as an integer. For floats >= +0 the integers sort as
# the floats do, and every negative float (and -0.0) reads as a negative integer, below them.
BITS = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.bfloat16: torch.int16,
    torch.float16: torch.int16,
}
_POOL: ThreadPoolExecutor | None = None


def tiny(dtype: torch.dtype) -> float:
    """The smallest float > 0 of `dtype`: a threshold that keeps exactly the positive values."""
    zero = torch.zeros((), dtype=dtype)
    return torch.nextafter(zero, torch.ones((), dtype=dtype)).item()


def kth_bits(z: torch.Tensor, k: int, scratch: torch.Tensor) -> torch.Tensor:
    """(N,) the k-th largest entry of each row of z (N, m), as its integer bits, on the CPU:
    numpy's introselect over the rows' bits (partition, not sort: 0.02-0.04 s where topk takes
    0.3 s at GPT-2 small's width), the rows split among torch's threads. `scratch` is an (N, m)
    buffer of z's size that the partition may overwrite."""
    global _POOL
    n, m = z.shape
    bits = z.view(BITS[z.dtype]).numpy()
    work = scratch.view(BITS[z.dtype]).numpy()
    out = np.empty(n, dtype=bits.dtype)

    def rows(part: slice) -> None:
        np.copyto(work[part], bits[part])
        work[part].partition(m - k, axis=1)  # the k-th largest now at column m - k
        out[part] = work[part, m - k]

    parts = max(1, min(torch.get_num_threads(), n // 64))
    step = -(-n // parts)
    if parts == 1:
        rows(slice(0, n))
    else:
        _POOL = _POOL or ThreadPoolExecutor(max(2, os.cpu_count() or 2), "laminar-topk")
        list(_POOL.map(rows, [slice(i, i + step) for i in range(0, n, step)]))
    return torch.from_numpy(out)


def threshold(z: torch.Tensor, k: int, ws: Workspace) -> torch.Tensor:
    """(N, 1) in z's dtype: each row's keep threshold, max(its k-th largest, smallest float > 0).
    A latent is kept where z >= threshold: in the top k (ties at the k-th value all kept) and
    positive. z may be taken before or after the ReLU (the ReLU commutes with taking the k-th
    largest, and the threshold is > 0 either way); before is faster, since a ReLU'd row's many
    zeros make ties that slow the selection. k <= 0 or k >= m keeps every positive latent."""
    n, m = z.shape
    floor = tiny(z.dtype)
    if not 0 < k < m:
        return torch.full((n, 1), floor, dtype=z.dtype, device=z.device)
    with torch.profiler.record_function("laminar::topk"):
        scratch = ws.get("g_z", (n, m), z)  # free until dL/dz is computed
        if z.device.type == "cpu" and z.dtype in BITS:
            kth = kth_bits(z, k, scratch).clamp_(min=1).view(z.dtype)  # 1: the bits of `floor`
            return kth.unsqueeze(1)
        # elsewhere (CUDA) topk is fast; its values and indices live in the scratch buffer
        indices_at = -(-n * k * z.element_size() // 64) * 64  # after the values, aligned
        out = (ws.get("g_z", (n, k), z), ws.get("g_z", (n, k), z, torch.long, at=indices_at))
        kth = torch.topk(z, k, dim=1, sorted=False, out=out).values.amin(dim=1, keepdim=True)
        return kth.clamp_(min=floor)


def keep_mask(z: torch.Tensor, k: int, ws: Workspace) -> torch.Tensor:
    """(N, m) integer mask of z's width: all bits set where a latent survives the ReLU and the
    top-k (see `threshold`), else 0. `masked(t, mask)` then applies the ReLU and top-k to z and
    passes dL/dz through both, one bitwise AND each: in bf16 a float multiply by a 0/1 mask is
    4x slower here (it converts every element), and AND leaves kept values bit for bit."""
    n, m = z.shape
    bits = BITS[z.dtype]
    # compared as integer bits: the same order as the floats for a threshold > 0 (negatives
    # read as negative integers), and 20x faster here than a float compare into integers
    limit = threshold(z, k, ws).view(bits)
    mask = torch.ge(z.view(bits), limit, out=ws.get("mask", (n, m), z, bits))
    return mask.neg_()  # 1 -> all bits set


def masked(t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """t with every entry where `mask` is 0 set to +0.0, in place."""
    t.view(mask.dtype).bitwise_and_(mask)
    return t


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
        pre = x @ self.weight.T  # (N, m), before the ReLU
        if not torch.is_grad_enabled():  # metrics: in place, no second (N, m) tensor
            return masked(pre, keep_mask(pre, self.k, Workspace()))
        # for autograd, a 0/1 float mask: its product's gradient is the mask, as the ReLU's
        # and top-k's together are
        keep = torch.ge(pre.detach(), threshold(pre.detach(), self.k, Workspace()))
        return pre * keep.to(pre.dtype)

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
    graph: the matmuls are 96-98% of its fp32 time at GPT-2 widths (docs/performance.md, the
    step profile).
    Shapes: x (N, d), W (m, d)."""
    ws = ws or Workspace()
    w = sae.weight
    (n, d), m = x.shape, w.shape[0]
    z = torch.mm(x, w.t(), out=ws.get("z", (n, m), x))  # (N, m), before the ReLU
    mask = keep_mask(z, sae.k, ws)
    z = masked(z, mask)  # ReLU and top-k
    err = torch.mm(z, w, out=ws.get("err", (n, d), x)).sub_(x)  # (N, d) x̂ - x
    mse = torch.pow(err, 2, out=ws.get("square", (n, d), x)).mean()
    loss = mse + l1 * z.mean()  # z >= 0, so mean|z| = mean z
    g_err = err.mul_(2.0 / (n * d))  # (N, d) dL/dx̂, reusing err's memory
    g_z = torch.mm(g_err, w.t(), out=ws.get("g_z", (n, m), x)).add_(l1 / z.numel())  # dL/dz
    masked(g_z, mask)  # through the top-k and the ReLU
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
    z = torch.mm(x16, w16.t(), out=ws.get("z", (n, m), x16))  # (N, m) bf16, before the ReLU
    mask = keep_mask(z, sae.k, ws)
    z = masked(z, mask)  # ReLU and top-k
    x_hat = torch.mm(z, w16, out=ws.get("x_hat16", (n, d), x16))
    # (N, d) fp32: x̂ - x, widened into its buffer first (a mixed-dtype sub widens x̂ into a
    # fresh tensor: 0.12 s at GPT-2 small's shape)
    err = ws.get("err", (n, d), x).copy_(x_hat).sub_(x)
    mse = torch.pow(err, 2, out=ws.get("square", (n, d), x)).mean()
    # mean z from its row sums (a matvec, fp32 accumulation, each row rounded to bf16): a
    # mean over a bf16 tensor in fp32 converts every element and costs 10x as much here
    ones = ws.get("ones", (m, 1), x16).fill_(1)
    row_sums = torch.mm(z, ones, out=ws.get("row_sums16", (n, 1), x16))
    loss = mse + l1 * row_sums.sum(dtype=torch.float32) / z.numel()
    g_err = ws.get("g_err16", (n, d), x16).copy_(err.mul_(2.0 / (n * d)))  # (N, d) dL/dx̂
    g_z = torch.mm(g_err, w16.t(), out=ws.get("g_z", (n, m), x16)).add_(l1 / z.numel())
    masked(g_z, mask)
    # (m, d): the encoder's and the decoder's shares summed in bf16, then widened once into the
    # fp32 gradient (adding a bf16 share to an fp32 tensor widens it into a fresh one first:
    # 0.14 s at GPT-2 large; accumulating it with addmm_ ran that GEMM 1.6x slower)
    both = torch.mm(g_z.t(), x16, out=ws.get("grad16", (m, d), x16))
    both.add_(torch.mm(z.t(), g_err, out=ws.get("dec16", (m, d), x16)))
    w.grad = ws.get("grad", (m, d), x).copy_(both)
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
def metrics(sae: TiedSAE, x: torch.Tensor, mean_abs_z: bool = False) -> dict[str, float]:
    """Metrics of the trained SAE on x (N, d); every one is over all tokens of the layer. With
    `mean_abs_z`, also mean |z| (the L1 term of the course's loss), from the same encoding."""
    x_hat, z = sae(x)
    active = z != 0  # (N, m)
    mse = F.mse_loss(x_hat, x).item()
    var = variance(x)
    per_latent = active.float().mean(dim=0)  # (m,) firing frequency
    fired = active.sum(dim=0)
    mean_mag = torch.where(fired > 0, z.sum(dim=0) / fired.clamp(min=1), 0.0)  # (m,)
    fvu = mse / var if var > 0 else float("nan")
    return {
        "latent_freq": per_latent.cpu().numpy(),
        "density_pct": 100.0 * active.float().mean().item(),
        "final_mse": mse,
        "fvu": fvu,
        "l0": active.sum(dim=1).float().mean().item(),
        "dead_pct": 100.0 * (fired == 0).float().mean().item(),
        "density_activation": (minmax(per_latent) * minmax(mean_mag)).mean().item(),
        **shape_metrics(x, x_hat, per_latent, fvu),
        **({"mean_abs_z": z.abs().mean().item()} if mean_abs_z else {}),
    }


DENSE_FREQ = 0.1  # a latent firing on more than this share of tokens counts as dense (SAEBench)


def shape_metrics(
    x: torch.Tensor, x_hat: torch.Tensor, freq: torch.Tensor, fvu: float
) -> dict[str, float]:
    """How the reconstruction x̂ (N, d) sits against x (N, d), as SAELens's evals report it:
    explained variance 1 - FVU, mean ‖x̂‖/‖x‖ (below 1: shrinkage) and mean cosine of x̂ and x
    over tokens (a token with ‖x‖ = 0 counts as ratio 0 and cosine 0); and the share of latents
    firing on more than DENSE_FREQ of tokens, from their frequencies `freq` (m,)."""
    sums = row_sums(x, x_hat)
    return {
        "explained_variance": 1.0 - fvu,
        "l2_ratio": sums["l2_ratio"] / len(x),
        "cossim": sums["cossim"] / len(x),
        "dense_pct": 100.0 * (freq > DENSE_FREQ).double().mean().item(),
    }


def row_sums(x: torch.Tensor, x_hat: torch.Tensor) -> dict[str, float]:
    """Sums over tokens of ‖x̂‖/‖x‖ and of cos(x̂, x), for rows x, x̂ (N, d); tokens with a zero
    norm add 0 (SAELens's cosine clamps the norms the same way)."""
    nx, nh = x.norm(dim=1).double(), x_hat.norm(dim=1).double()
    dot = (x * x_hat).sum(dim=1).double()
    ratio = torch.where(nx > 0, nh / nx.clamp(min=1e-30), 0.0)
    cos = torch.where((nx > 0) & (nh > 0), dot / (nx * nh).clamp(min=1e-30), 0.0)
    return {"l2_ratio": ratio.sum().item(), "cossim": cos.sum().item()}


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
