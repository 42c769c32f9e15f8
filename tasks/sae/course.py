"""The course's SAE (Mike X Cohen's LLM course, mikexcohen/LLM_course, Part5_ObservationInterp/
circuits/solutions/part5_circuits_CCSAElaminarProfile.ipynb), in one readable file:
tied weights W (m, d), no biases,
    z = topk(ReLU(x Wᵀ)),   x̂ = z W,   loss = MSE(x̂, x) + l1 · mean|z|,
with its loss and gradient written by hand (the step), and its SAELens form on disk (a TopK
SAE with zero biases). Shapes: x (N, d), z (N, m)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from tasks.sae.kernels import Workspace, keep_mask, masked, topk_k

__all__ = ["TiedSAE", "Workspace", "fresh", "loss_and_grad", "loss_and_grad_bf16", "step_fn"]


class TiedSAE(torch.nn.Module):
    def __init__(self, d: int, latent: int, k: int, generator: torch.Generator):
        super().__init__()
        # Same distribution as nn.Linear(d, latent, bias=False)'s default init, drawn from
        # our own generator so concurrent trainings stay reproducible.
        bound = 1.0 / math.sqrt(d)
        w = torch.empty(latent, d).uniform_(-bound, bound, generator=generator)
        self.weight = torch.nn.Parameter(w)  # (m, d)
        self.k = k

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z (N, m): the ReLU and top-k applied in place to x Wᵀ (no second (N, m) tensor).
        Training never calls it: the step computes z and its gradient itself."""
        pre = x @ self.weight.T  # (N, m), before the ReLU
        return masked(pre, keep_mask(pre, self.k, Workspace()))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return z @ self.weight, z  # x̂ (N, d), z (N, m)


@torch.no_grad()
def loss_and_grad(
    sae: TiedSAE, x: torch.Tensor, l1: float, ws: Workspace | None = None
) -> torch.Tensor:
    """One full-batch step's loss, with W's gradient written to sae.weight.grad by hand.

    The same function and gradient as autograd through the course's forward pass and loss (a
    test checks it), in five matmuls and a few in-place passes over the (N, m) latents, with no
    autograd graph: the matmuls are 96-98% of its fp32 time at GPT-2 widths
    (docs/performance.md, the step profile). Shapes: x (N, d), W (m, d)."""
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
    sae: TiedSAE,
    x: torch.Tensor,
    x16: torch.Tensor,
    x16t: torch.Tensor,
    l1: float,
    ws: Workspace | None = None,
) -> torch.Tensor:
    """loss_and_grad with the five matmuls on bf16 operands (x16 = x in bf16 and x16t its
    transpose (d, N), both made once per batch): the kernels accumulate in fp32 and round their
    outputs to bf16 (8 significant bits, a relative error of at most 2^-9 per element). W, its
    gradient, x̂ - x, the loss and Adam's state stay fp32, so rounding enters the step's
    direction, never the weights' precision. z is kept in bf16: its top-k runs on half the
    bytes."""
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
    # The weight gradient, transposed: (d, m) = xᵀ dL/dz + dL/dx̂ᵀ z. Both products then read
    # row-major operands (x16t made once per batch, dL/dx̂ᵀ copied here: (d, N) is a twentieth
    # of z's size at the course's width); with a transposed (N, ·) view as the first operand,
    # oneDNN ran each 1.7x slower on AMX (docs/performance.md). The shares are summed in bf16,
    # then widened into the fp32 gradient (m, d) by one transposing copy.
    g_err_t = ws.get("g_err_t16", (d, n), x16).copy_(g_err.t())
    both_t = torch.mm(x16t, g_z, out=ws.get("grad16", (d, m), x16))  # encoder's share
    both_t.add_(torch.mm(g_err_t, z, out=ws.get("dec16", (d, m), x16)))  # + decoder's share
    w.grad = ws.get("grad", (m, d), x).copy_(both_t.t())
    return loss


def step_fn(
    x: torch.Tensor, precision: str, ws: Workspace
) -> Callable[[TiedSAE, float], torch.Tensor]:
    """The loss-and-gradient step for x at `precision` ('bf16': bf16 matmuls; else fp32, where
    'tf32' is the caller's matmul_precision setting), its buffers in `ws`."""
    if precision == "bf16":
        (n, d) = x.shape
        x16 = ws.get("x16", (n, d), x, torch.bfloat16).copy_(x)
        x16t = ws.get("x16t", (d, n), x, torch.bfloat16).copy_(x16.t())
        return lambda sae, l1: loss_and_grad_bf16(sae, x, x16, x16t, l1, ws)
    return lambda sae, l1: loss_and_grad(sae, x, l1, ws)


def fresh(
    d: int,
    expansion: int,
    topk_frac: float,
    lr: float,
    seed: int,
    device: Any,
    precision: str = "fp32",
) -> tuple[TiedSAE, torch.optim.Adam]:
    """A new SAE for width d, initialised from `seed` alone, and its Adam optimizer: PyTorch's
    default Adam (the course's, bit for bit) in fp32 and TF32; in bf16, whose steps are not
    bit-identical to fp32's anyway, the fused Adam (one kernel: 0.04 s against 0.27 s for the
    default at GPT-2 large's weight shape on the AMX Xeon)."""
    generator = torch.Generator().manual_seed(seed)
    latent = expansion * d
    sae = TiedSAE(d, latent, topk_k(latent, topk_frac), generator).to(device)
    return sae, torch.optim.Adam(sae.parameters(), lr=lr, fused=precision == "bf16")


def saelens_state(sae: TiedSAE) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The SAE as SAELens holds a TopK SAE: encoder W_enc = Wᵀ (d, m), decoder W_dec = W (m, d),
    zero biases (the course's SAE has none), and the cfg.json fields that say so."""
    w = sae.weight.detach().float().cpu()  # (m, d)
    m, d = w.shape
    state = {
        "W_enc": w.t().contiguous(),
        "W_dec": w.contiguous(),
        "b_enc": torch.zeros(m),
        "b_dec": torch.zeros(d),
    }
    cfg = {"architecture": "topk", "d_in": d, "d_sae": m, "k": sae.k if 0 < sae.k < m else m}
    return state, {**cfg, "apply_b_dec_to_input": False}


def from_saelens(cfg: dict[str, Any], state: dict[str, torch.Tensor]) -> TiedSAE:
    """saelens_state's inverse: the SAE laminar saved, from its cfg.json and weights."""
    sae = TiedSAE(cfg["d_in"], cfg["d_sae"], cfg["k"], torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.weight.copy_(state["W_dec"])
    return sae
