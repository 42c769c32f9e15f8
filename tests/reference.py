"""Test-only references for the SAE: the course's and the field's architectures' forward pass
and loss through autograd (what the hand-written steps must equal), a layer's metrics in one
call, and a Workspace's buffers."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from tasks.sae import course, kernels, measures, recipes


def autograd_forward(model: course.TiedSAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x̂ (N, d) and z (N, m) of the course's SAE with autograd's graph: ReLU then top-k as a
    0/1 float mask, whose product's gradient is the mask, as the ReLU's and top-k's together
    are."""
    pre = x @ model.weight.T  # (N, m)
    keep = torch.ge(pre.detach(), kernels.threshold(pre.detach(), model.k, kernels.Workspace()))
    z = pre * keep.to(pre.dtype)
    return z @ model.weight, z


def sae_loss(x: torch.Tensor, x_hat: torch.Tensor, z: torch.Tensor, l1: float) -> torch.Tensor:
    """The course's loss: MSE + l1 · mean|z|."""
    return F.mse_loss(x_hat, x) + l1 * z.abs().mean()


def autograd_loss(model: course.TiedSAE, x: torch.Tensor, l1: float) -> torch.Tensor:
    with torch.enable_grad():
        x_hat, z = autograd_forward(model, x)
        return sae_loss(x, x_hat, z, l1)


def metrics(model: Any, x: torch.Tensor, mean_abs_z: bool = False) -> dict[str, Any]:
    """measures.metrics of a layer x (N, d) held whole, with its own variance."""
    var = measures.input_stats([x])["x_var"]
    return measures.metrics(model, [x], var, mean_abs_z)


def buffers(ws: kernels.Workspace) -> dict[str, torch.Tensor]:
    return dict(ws._bytes)


def recipe_activate(sae: recipes.Standard, pre: torch.Tensor) -> torch.Tensor:
    """z (N, m) from pre (N, m) with autograd's graph: ReLU (standard), or the selection, a
    masked fill whose gradient passes to the kept latents only (topk, batchtopk)."""
    if isinstance(sae, recipes.TopK):
        return pre.masked_fill(pre < sae.selection(pre), 0.0)
    return pre.relu()


def recipe_loss(sae: recipes.Standard, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A tasks.sae.recipes SAE's training loss on x (N, d) and z (N, m), through autograd, as
    SAELens's training_forward_pass computes them with the SAE's dead latents: Σ_d (x̂ - x)²
    averaged over tokens, plus standard's L1 term or topk's aux term (the module's docstring)."""
    pre = sae.pre(x)  # (N, m)
    z = recipe_activate(sae, pre)
    if not isinstance(sae, recipes.TopK):
        x_hat = z @ sae.W_dec + sae.b_dec
        aux = sae.l1_coefficient() * (z * sae.W_dec.norm(dim=1)).norm(p=1, dim=-1).mean()
        return (x_hat - x).pow(2).sum(dim=-1).mean() + aux, z
    unit = sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True)  # (m, d), rows of norm 1
    x_hat = z @ unit + sae.b_dec
    loss = (x_hat - x).pow(2).sum(dim=-1).mean()
    dead = sae.dead()
    n_dead = int(dead.sum())
    if n_dead == 0:
        return loss, z
    k_aux = x.shape[-1] // 2
    scale = min(n_dead / k_aux, 1.0)
    top = torch.where(dead[None], pre, -torch.inf).topk(min(k_aux, n_dead), sorted=False)
    acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values)  # (N, m)
    recons = acts @ unit  # no bias: b_dec is in x_hat
    residual = (x - x_hat).detach()
    aux = (recons - residual).pow(2).sum(dim=-1).mean()
    return loss + sae.recipe.aux_coefficient * scale * aux, z


def recipe_gradient(sae: recipes.Standard, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """recipe_loss(sae, x) and z, each parameter's gradient written by autograd."""
    for p in sae.parameters():
        p.grad = None
    with torch.enable_grad():
        loss, z = recipe_loss(sae, x)
        loss.backward()
    return loss.detach(), z.detach()
