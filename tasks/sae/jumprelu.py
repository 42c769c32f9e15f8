"""SAELens's JumpReLU SAE as SAELens 6 computes it: the standard SAE's pre-activations, kept
where they exceed each latent's learned threshold, else 0:
    z = ReLU(pre) · [pre > threshold].
The threshold is saved as `threshold`, or as `log_threshold` by older files.
Shapes: pre and z (N, d_sae), threshold (d_sae,)."""

from __future__ import annotations

from typing import Any

import torch

from tasks.sae.standard import Standard


class JumpReLU(Standard):
    def __init__(self, cfg: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
        super().__init__(cfg, state)
        threshold = state.get("threshold")
        if threshold is None:
            threshold = state["log_threshold"].exp()
        self.threshold = threshold.float()  # (d_sae,)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return pre.relu() * (pre > self.threshold).to(pre.dtype)
