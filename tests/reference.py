"""Test-only references for the SAE: the course's forward pass and loss through autograd (what
the hand-written step must equal), a layer's metrics in one call, and a Workspace's buffers."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from tasks.sae import course, kernels, measures


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
