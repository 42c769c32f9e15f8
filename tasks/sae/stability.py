"""Do fresh SAEs find the same latents? Two SAEs of one layer, trained from different seeds,
compared by their decoder directions (Paulo & Belrose 2025, "Sparse autoencoders trained on the
same data learn different features"):

    shared   the share of SAE A's live latents whose decoder direction has a match with
             cosine >= MATCH_COS among SAE B's decoder directions
    mmcs     the mean over A's live latents of the largest such cosine (mean max cosine
             similarity)

A's rows are compared in chunks, so memory holds the two normalised decoders and one
(chunk, m_B) block of cosines: at GPT-2 large's width (10,240 latents of 5,120) about 0.5 GB.
Shapes: decoders W (m, d), one row per latent."""

from __future__ import annotations

import torch

MATCH_COS = 0.7  # Paulo & Belrose's threshold for "the same feature"
CHUNK = 1024  # rows of A compared at once: (CHUNK, m_B) cosines, 42 MB at m_B = 10,240


@torch.no_grad()
def decoder_match(
    w_a: torch.Tensor, w_b: torch.Tensor, live_a: torch.Tensor, chunk: int = CHUNK
) -> dict[str, float | None]:
    """shared and mmcs (see the module docstring) of decoders w_a (m_a, d) against w_b (m_b, d)
    over the latents of A marked in `live_a` (m_a,) bool; both None where A has no live latent
    (nothing to compare) or B has no direction (a zero decoder)."""
    a = _unit_rows(w_a[live_a.to(w_a.device)])  # (live, d)
    b = _unit_rows(w_b)  # (m_b, d)
    if len(a) == 0 or len(b) == 0:
        return {"shared": None, "mmcs": None}
    best = torch.empty(len(a), dtype=torch.float64)
    for start in range(0, len(a), chunk):
        cos = a[start : start + chunk] @ b.T  # (chunk, m_b)
        best[start : start + chunk] = cos.amax(dim=1).double().cpu()
    return {
        "shared": (best >= MATCH_COS).double().mean().item(),
        "mmcs": best.mean().item(),
    }


def _unit_rows(w: torch.Tensor) -> torch.Tensor:
    """w's rows scaled to norm 1, in fp32; rows of norm 0 (no direction) dropped."""
    w = w.float()
    norms = w.norm(dim=1, keepdim=True)
    keep = norms.squeeze(1) > 0
    return w[keep] / norms[keep]
