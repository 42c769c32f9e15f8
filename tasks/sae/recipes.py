"""The SAEs the field trains, trained as SAELens 6 trains them (sae_lens.saes'
StandardTrainingSAE, TopKTrainingSAE and BatchTopKTrainingSAE, and SAETrainer's step), then
saved as the architecture SAELens loads them as for inference (tasks.sae.standard, .topk,
.jumprelu run that form).

All three start as SAELens starts them: W_dec's rows drawn Kaiming-uniform and scaled to norm
DECODER_INIT_NORM, W_enc = W_decᵀ, zero biases. All share the forward pass
    pre = (x - b_dec) W_enc + b_enc,   z = act(pre),   x̂ = z W_dec + b_dec
and the loss Σ_d (x̂ - x)², averaged over tokens, plus each one's auxiliary term:
  standard   act = ReLU; + l1 · warm-up(step) · mean over tokens of Σ_i z_i ‖W_dec,i‖
  topk       pre scaled by ‖W_dec,i‖, act = ReLU of the k largest per token, decoded as
             (z / ‖W_dec‖) W_dec; + the top d/2 dead latents reconstruct the residual (Gao et
             al. 2024, Appendix B.1), weighted by aux_coefficient · min(n_dead / (d/2), 1)
  batchtopk  as topk, but the k·N largest over a batch of N tokens; the mean of each step's
             smallest firing value (an EMA) becomes the JumpReLU threshold it is saved with
Each step clips the gradient's norm to 1 before Adam, as SAETrainer does. Each gradient is
written by hand (`Standard.gradient`, `TopK.gradient`), checked against autograd's of the loss
above (tests/reference.py) and against SAELens's (tests/test_interop.py).
Shapes: x (N, d), pre and z (N, m), W_enc (d, m), W_dec (m, d)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tasks.sae import kernels

DECODER_INIT_NORM = 0.1  # SAELens's TrainingSAEConfig.decoder_init_norm
THRESHOLD_LR = 0.01  # SAELens's BatchTopKTrainingSAEConfig.topk_threshold_lr
CLIP_NORM = 1.0  # SAETrainer clips every step's gradient to this norm


@dataclass(frozen=True)
class Recipe:
    """The settings an architecture reads (Config's fields of the same names)."""

    sae_arch: str
    l1: float  # standard: the L1 coefficient
    k: int  # topk: per token; batchtopk: mean per token over a batch
    l1_warm_up_steps: int
    aux_coefficient: float
    dead_steps: int  # steps without firing after which a latent counts as dead


def encode(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, b_dec: torch.Tensor) -> torch.Tensor:
    """(x - b_dec) w + b, computed as x w + (b - b_dec w): the same function, whose backward
    reaches b_dec through the (d,) product b_dec w instead of an (N, d) gradient of x - b_dec,
    one N·d·m matmul of six fewer a step. x (N, d), w (d, m), b (m,), b_dec (d,) -> (N, m)."""
    return torch.addmm(b - b_dec @ w, x, w)


def batch_threshold(z: torch.Tensor, k: int, workspace: kernels.Workspace) -> torch.Tensor:
    """() in z's dtype: max(the k-th largest of all N·m entries of z, smallest float > 0), so
    z >= it keeps the batch's k largest that are positive (ties at the k-th value all kept).
    On the CPU, numpy's introselect over the entries' bits in a reused buffer: 0.08 s where
    torch.topk over the flattened (N, m) takes 1.4 s at GPT-2 small's width, 100 per token."""
    floor = kernels.tiny(z.dtype)
    if not 0 < k < z.numel():
        return torch.tensor(floor, dtype=z.dtype, device=z.device)
    flat = z.detach().reshape(-1)
    if z.device.type != "cpu" or z.dtype not in kernels.BITS:
        return torch.topk(flat, k, sorted=False).values.min().clamp(min=floor)
    bits = kernels.BITS[z.dtype]  # for floats >= +0 their bits sort as they do
    work = workspace.get("batch_topk", flat.shape, flat, bits)
    values = work.copy_(flat.view(bits)).numpy()
    values.partition(len(values) - k)  # the k-th largest now at index len - k
    return torch.tensor(values[len(values) - k]).clamp_(min=1).view(z.dtype).to(z.device)


class Standard(nn.Module):
    def __init__(self, d: int, m: int, recipe: Recipe, generator: torch.Generator) -> None:
        super().__init__()
        w_dec = torch.empty(m, d)
        nn.init.kaiming_uniform_(w_dec, generator=generator)
        w_dec *= DECODER_INIT_NORM / w_dec.norm(dim=-1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)  # (m, d)
        self.W_enc = nn.Parameter(w_dec.T.clone().contiguous())  # (d, m)
        self.b_enc = nn.Parameter(torch.zeros(m))
        self.b_dec = nn.Parameter(torch.zeros(d))
        self.recipe = recipe
        self.steps = 0  # steps taken, for the L1 warm-up
        self.register_buffer("since_fired", torch.zeros(m, dtype=torch.long))
        self.workspace = kernels.Workspace()  # the top-k selections' buffers, kept across steps

    @property
    def weight(self) -> torch.Tensor:  # the decoder, as every laminar SAE names it
        return self.W_dec

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        return encode(x, self.W_enc, self.b_enc, self.b_dec)  # (N, m)

    def l1_coefficient(self) -> float:
        r = self.recipe
        warm = min(self.steps / r.l1_warm_up_steps, 1.0) if r.l1_warm_up_steps else 1.0
        return r.l1 * warm

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """One training step's loss on x, its gradient written and clipped (Adam steps next)."""
        for p in self.parameters():
            p.grad = None
        loss, z = self.gradient(x)
        nn.utils.clip_grad_norm_(self.parameters(), CLIP_NORM)
        self.after_step(z)
        return loss

    @torch.no_grad()
    def gradient(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training loss on x (N, d) and z (N, m), each parameter's gradient written: autograd's
        of that loss (tests/reference.py: recipe_loss), by hand. With
        c = the L1 coefficient, n_i = ‖W_dec,i‖, g = dL/dx̂ = 2 (x̂ - x) / N (N, d):
            dL/dz = g W_decᵀ + c n / N, zero where z = 0 (the ReLU)        (N, m)
            dW_dec = zᵀ g + (c / N) Σ_tokens z_i · W_dec,i / n_i             (m, d)
            dW_enc = xᵀ dL/dz − b_dec ⊗ Σ_tokens dL/dz   (encode's form)   (d, m)
        Its (N, m) passes: the ReLU, the mask, two column sums; autograd's also made the L1
        term's product, its absolute value and sign, and a copy of z."""
        n = len(x)
        c = self.l1_coefficient()
        z = self.pre(x).relu_()  # (N, m); the pre-activations are not needed again
        norms = self.W_dec.norm(dim=1)  # (m,)
        fired = z.sum(dim=0)  # (m,): Σ_tokens z_i, so the L1 term is c · fired · n / N
        err = torch.addmm(self.b_dec, z, self.W_dec).sub_(x)  # x̂ - x (N, d)
        loss = err.flatten().dot(err.flatten()) / n + c * fired.dot(norms) / n
        g = err.mul_(2.0 / n)  # (N, d)
        g_z = torch.addmm((c / n) * norms, g, self.W_dec.T).masked_fill_(z == 0, 0.0)  # (N, m)
        s = g_z.sum(dim=0)  # (m,)
        per_norm = torch.where(norms > 0, (c / n) * fired / norms, 0.0)  # (m,)
        self.W_dec.grad = torch.addmm(self.W_dec * per_norm[:, None], z.T, g)
        self.b_dec.grad = g.sum(dim=0) - self.W_enc @ s
        self.W_enc.grad = torch.addmm(torch.outer(self.b_dec, s), x.T, g_z, beta=-1)
        self.b_enc.grad = s
        return loss, z

    @torch.no_grad()
    def after_step(self, z: torch.Tensor) -> None:
        fired = (z != 0).any(dim=0)
        self.since_fired += 1
        self.since_fired[fired] = 0
        self.steps += 1

    def dead(self) -> torch.Tensor:
        return self.since_fired > self.recipe.dead_steps  # (m,) bool

    @torch.no_grad()
    def inference(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The state and cfg.json fields SAELens saves for inference."""
        state = {n: getattr(self, n).detach().clone() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
        m, d = self.W_dec.shape
        return state, {"architecture": "standard", "d_in": d, "d_sae": m} | APPLY_B_DEC


APPLY_B_DEC = {"apply_b_dec_to_input": True}  # SAELens's default: x - b_dec is encoded


class TopK(Standard):
    # SAELens's rescale_acts_by_decoder_norm (its default) scales pre by ‖W_dec,i‖ and divides z
    # by it before decoding; the scaling is applied to the (d, m) weights here, not the (N, m)
    # latents: the same function and gradient, two passes over the latents fewer.
    def pre(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.W_dec.norm(dim=-1)  # (m,)
        return encode(x, self.W_enc * norm, self.b_enc * norm, self.b_dec)

    def selection(self, pre: torch.Tensor) -> torch.Tensor:
        """The smallest pre-activation kept, per row (N, 1): each row's k largest (ties at the
        k-th all kept), from a partition instead of SAELens's sort, and only positive ones."""
        return kernels.threshold(pre.detach(), self.recipe.k, self.workspace)

    @torch.no_grad()
    def gradient(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As Standard's, for the selection: autograd's gradient, by hand. The two
        ‖W_dec,i‖ scalings cancel: with q = (x - b_dec) W_enc + b_enc, pre = q n, z = pre ⊙ M
        (M the selection, held fixed as autograd holds it) and U = W_dec / n,
        x̂ = z U + b_dec = (q ⊙ M) W_dec + b_dec, linear in W_dec. So, g = 2 (x̂ - x) / N (N, d):
            dq = (g W_decᵀ) ⊙ M                                       (N, m)
            dW_dec = (zᵀ g) / n                                       (m, d)
            dW_enc = xᵀ dq − b_dec ⊗ Σ_tokens dq,  db_enc = Σ_tokens dq,  db_dec = Σ g − W_enc Σ dq
        plus the aux term's share on the dead latents (`aux_gradient`). Five N·d·m matmuls, as
        autograd's; the selection overwrites pre in place, and nothing (N, m) is made for n."""
        n_tok = len(x)
        norms = self.W_dec.norm(dim=1)  # (m,)
        pre = self.pre(x)  # (N, m)
        dead = self.dead().nonzero().squeeze(1)  # (n_dead,)
        pre_dead = pre[:, dead]  # (N, n_dead): a copy, taken before the selection
        z = pre.masked_fill_(pre < self.selection(pre), 0.0)  # (N, m), in pre's memory
        err = torch.addmm(self.b_dec, z, self.W_dec / norms[:, None]).sub_(x)  # x̂ - x (N, d)
        loss = err.flatten().dot(err.flatten()) / n_tok
        aux = self.aux_gradient(err, pre_dead, dead, norms)  # before err is scaled below
        g = err.mul_(2.0 / n_tok)  # (N, d)
        g_z = (g @ self.W_dec.T).masked_fill_(z == 0, 0.0)  # dq (N, m)
        self.W_dec.grad = (z.T @ g).div_(norms[:, None])
        if aux is not None:
            aux_loss, g_dead, w_dead = aux
            loss += aux_loss
            g_z[:, dead] += g_dead
            self.W_dec.grad[dead] += w_dead
        s = g_z.sum(dim=0)  # (m,)
        self.b_dec.grad = g.sum(dim=0) - self.W_enc @ s
        self.W_enc.grad = torch.addmm(torch.outer(self.b_dec, s), x.T, g_z, beta=-1)
        self.b_enc.grad = s
        return loss, z

    def aux_gradient(
        self, err: torch.Tensor, pre_dead: torch.Tensor, dead: torch.Tensor, norms: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The aux term on the dead latents only: its value, its dq on their columns
        (N, n_dead) and its dW_dec on their rows (n_dead, d); None while none is dead. With A
        each token's top d/2 dead pre-activations (all of them when fewer are dead), acts =
        pre ⊙ A, recons = acts U and r = x - x̂: aux = c Σ (recons - r)² / N, and with
        h = 2 c (recons - r) / N, dq = (h W_decᵀ) ⊙ A and dW_dec = (actsᵀ h) / n."""
        n_dead, (n_tok, d) = len(dead), err.shape
        if n_dead == 0:
            return None
        k_aux = d // 2
        c = self.recipe.aux_coefficient * min(n_dead / k_aux, 1.0)
        chosen = None
        if n_dead > k_aux:
            top = pre_dead.topk(k_aux, dim=-1, sorted=False).indices
            chosen = torch.zeros_like(pre_dead, dtype=torch.bool).scatter_(-1, top, True)
            pre_dead.masked_fill_(~chosen, 0.0)  # acts (N, n_dead)
        w_dead = self.W_dec[dead]  # (n_dead, d)
        diff = torch.addmm(err, pre_dead, w_dead / norms[dead, None])  # recons - r (N, d)
        loss = c * diff.flatten().dot(diff.flatten()) / n_tok
        h = diff.mul_(2.0 * c / n_tok)
        g_dead = h @ w_dead.T  # (N, n_dead)
        if chosen is not None:
            g_dead.masked_fill_(~chosen, 0.0)
        return loss, g_dead, (pre_dead.T @ h).div_(norms[dead, None])

    @torch.no_grad()
    def inference(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """As SAELens saves it: ‖W_dec‖ folded into the encoder, the decoder's rows unit norm,
        so inference needs no rescaling."""
        state, fields = super().inference()
        norm = self.W_dec.norm(dim=-1)  # (m,)
        state["W_enc"] *= norm
        state["b_enc"] *= norm
        state["W_dec"] /= norm[:, None]
        return state, fields | {"architecture": "topk", "k": self.recipe.k}


class BatchTopK(TopK):
    def __init__(self, d: int, m: int, recipe: Recipe, generator: torch.Generator) -> None:
        super().__init__(d, m, recipe, generator)
        self.register_buffer("threshold", torch.zeros((), dtype=torch.float64))
        self.keep: torch.Tensor | None = None  # the last selection's threshold, for after_step

    def selection(self, pre: torch.Tensor) -> torch.Tensor:
        """() : the batch's k·N largest that are positive (SAELens: ReLU, then topk of the
        flattened batch); the smallest kept value is this threshold itself when more than k·N
        are > 0. Kept for after_step's threshold update."""
        self.keep = batch_threshold(pre, self.recipe.k * len(pre), self.workspace)
        return self.keep

    @torch.no_grad()
    def after_step(self, z: torch.Tensor) -> None:
        super().after_step(z)
        keep, self.keep = self.keep, None  # set by this step's activate, read once
        if keep is not None and keep > kernels.tiny(z.dtype):
            smallest = keep.double()  # a kept value: the k·N-th largest
        elif bool((positive := z[z > 0]).numel()):
            smallest = positive.min().double()  # every positive latent kept
        else:
            return  # nothing fired
        self.threshold.mul_(1 - THRESHOLD_LR).add_(THRESHOLD_LR * smallest)

    @torch.no_grad()
    def inference(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        state, fields = super().inference()
        state["threshold"] = torch.full_like(state["b_enc"], self.threshold.item())
        del fields["k"]
        return state, fields | {"architecture": "jumprelu"}


ARCHITECTURES: dict[str, type[Standard]] = {
    "standard": Standard,
    "topk": TopK,
    "batchtopk": BatchTopK,
}


def fresh(
    d: int, m: int, recipe: Recipe, seed: int, device: str, lr: float
) -> tuple[Standard, torch.optim.Adam]:
    """A seeded SAE of the recipe's architecture and its Adam (SAELens's betas 0.9, 0.999),
    fused: SAELens's update, not bit-identical to torch's default Adam (its sums are rounded in
    another order); over GPT-2 large's two (5120, 10240) weights a step takes 0.08 s against
    the default's 1.09 s (medians of 5, interleaved, on a 2-core avx512f Xeon). The course's
    SAE keeps the default Adam (its numbers are golden)."""
    generator = torch.Generator().manual_seed(seed)
    sae = ARCHITECTURES[recipe.sae_arch](d, m, recipe, generator).to(device)
    return sae, torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999), fused=True)
