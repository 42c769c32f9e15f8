"""SAELens's standard SAE, as SAELens 6 computes it (x_in = x - b_dec when
apply_b_dec_to_input, else x):
    pre = x_in W_enc + b_enc,   z = ReLU(pre),   x̂ = z W_dec + b_dec.
The base of the other SAELens architectures, which differ only in `activate`.
Shapes: x (N, d_in), pre and z (N, d_sae)."""

from __future__ import annotations

from typing import Any

import torch


class Standard(torch.nn.Module):
    def __init__(self, cfg: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.k = int(cfg.get("k") or 0)  # 0: no fixed number of latents per token
        self.b_dec_to_input = bool(cfg.get("apply_b_dec_to_input", False))
        self.W_enc = state["W_enc"].float()  # (d_in, d_sae)
        self.b_enc = state["b_enc"].float()  # (d_sae,)
        self.weight = state["W_dec"].float()  # (d_sae, d_in): the decoder, named as TiedSAE's
        self.b_dec = state["b_dec"].float()  # (d_in,)

    def to(self, *args: Any, **kwargs: Any) -> Standard:  # plain tensors, not parameters
        for name in ("W_enc", "b_enc", "weight", "b_dec", "threshold"):
            if isinstance(getattr(self, name, None), torch.Tensor):
                setattr(self, name, getattr(self, name).to(*args, **kwargs))
        return self

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return pre.relu()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x_in = x - self.b_dec if self.b_dec_to_input else x
        return self.activate(x_in @ self.W_enc + self.b_enc)  # (N, d_sae)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.weight + self.b_dec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return self.decode(z), z  # x̂ (N, d_in), z (N, d_sae)
