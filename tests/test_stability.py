"""Cross-seed stability (tasks.sae.stability, tasks.stability): the matched share and MMCS on a
case worked by hand, chunking that changes nothing, and the pairs a run compares."""

from __future__ import annotations

import math

import pytest
import torch

from tasks.config import Config
from tasks.sae.stability import decoder_match
from tasks.stability import pairs, with_stability


def test_matched_share_and_mmcs_by_hand() -> None:
    # A's latents: e1, e2, (1,1) and a dead one; B's: e1 scaled, (1, 0.5) and -e2.
    w_a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, -1.0]])
    w_b = torch.tensor([[2.0, 0.0], [1.0, 0.5], [0.0, -1.0]])
    live = torch.tensor([True, True, True, False])
    got = decoder_match(w_a, w_b, live)
    # best cosines: e1 -> 1 (B0); e2 -> 0.5/sqrt(1.25) = 0.447 (B1); (1,1)/sqrt2 -> B1:
    # (1 + 0.5) / (sqrt2 * sqrt1.25) = 0.949
    best = [1.0, 0.5 / math.sqrt(1.25), 1.5 / (math.sqrt(2) * math.sqrt(1.25))]
    assert got["shared"] == pytest.approx(2 / 3)  # two of three at cosine >= 0.7
    assert got["mmcs"] == pytest.approx(sum(best) / 3)


def test_chunks_change_nothing_and_no_live_latent_is_undefined() -> None:
    g = torch.Generator().manual_seed(0)
    w_a, w_b = torch.randn(300, 16, generator=g), torch.randn(200, 16, generator=g)
    live = torch.rand(300, generator=g) > 0.3
    whole = decoder_match(w_a, w_b, live, chunk=1024)
    assert decoder_match(w_a, w_b, live, chunk=7) == pytest.approx(whole)
    assert decoder_match(w_a, w_a, live) == pytest.approx({"shared": 1.0, "mmcs": 1.0})
    nothing = decoder_match(w_a, w_b, torch.zeros(300, dtype=torch.bool))
    assert nothing == {"shared": None, "mmcs": None}


def record(name: str, layer: int, seed: int, kept: bool = True) -> dict:
    return {"name": name, "layer": layer, "sae_seed": seed, "sae_files": [{}] if kept else []}


def test_the_first_two_seeds_given_are_compared_where_both_were_kept() -> None:
    cfg = Config(sae_seeds=[3, 1, 2])
    results = [record("m", 0, s) for s in (1, 2, 3)] + [record("m", 1, 3), record("m", 2, 3)]
    results.append(record("m", 2, 1, kept=False))
    [(a, b)] = pairs(cfg, results)  # type: ignore[arg-type]
    assert (a["sae_seed"], b["sae_seed"]) == (3, 1)  # --sae-seeds order, not numeric
    measured = [
        {
            "name": "m",
            "layer": 0,
            "stability_seeds": [3, 1],
            "stability_shared": 0.5,
            "stability_mmcs": 0.8,
        }
    ]
    merged = with_stability(results, measured)  # type: ignore[arg-type]
    assert [r.get("stability_mmcs") for r in merged] == [0.8, 0.8, 0.8, None, None, None]
