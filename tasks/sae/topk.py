"""SAELens's TopK SAE (Gao et al. 2024) as SAELens 6 computes it: the standard SAE's pre-
activations, then per token the ReLU of the k largest, the rest 0 (exactly k, as torch.topk
picks them). Shapes: pre and z (N, d_sae)."""

from __future__ import annotations

import torch

from tasks.sae.standard import Standard


class TopK(Standard):
    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        top = torch.topk(pre, k=min(self.k, pre.shape[-1]), dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, top.indices, top.values.relu())
