"""The claims' statistics on constructed profiles whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.stats import claims, claims_markdown, density_trend, loss_shape

DEPTH = list(np.linspace(0, 1, 12))


def test_strictly_rising_density_holds() -> None:
    r = density_trend(DEPTH, [10 + 2 * i for i in range(12)])
    assert r["rho"] == pytest.approx(1.0) and r["p"] < 1e-6
    assert r["slope"] == pytest.approx(22.0) and r["r2"] == pytest.approx(1.0)
    assert r["holds"] is True


def test_falling_density_does_not_hold_and_a_flat_one_is_undefined() -> None:
    assert density_trend(DEPTH, [30 - i for i in range(12)])["holds"] is False
    flat = density_trend(DEPTH, [33.3] * 12)  # e.g. L0 = k under a TopK SAE
    assert flat["holds"] is None and flat["undefined"] == "constant across layers"


def test_planted_u_holds_with_its_vertex() -> None:
    loss = [2 + 5 * (x - 0.4) ** 2 for x in DEPTH]
    r = loss_shape(DEPTH, loss)
    assert r["curvature"] == pytest.approx(5.0) and r["vertex"] == pytest.approx(0.4)
    assert r["first_ratio"] > 1 and r["last_ratio"] > 1 and r["holds"] is True


def test_flat_loss_is_undefined_and_a_monotone_one_no_u() -> None:
    flat = loss_shape(DEPTH, [1.0] * 12)
    assert flat["holds"] is None and flat["undefined"] == "constant across layers"
    assert loss_shape(DEPTH, [1 + x for x in DEPTH])["holds"] is False  # rising: last only
    edge_u = loss_shape(DEPTH, [(x - 0.95) ** 2 + 1 for x in DEPTH])  # vertex outside the range
    assert edge_u["holds"] is False


def test_too_few_layers_is_not_judged() -> None:
    assert density_trend([0, 1], [1, 2])["holds"] is None
    r = loss_shape([0, 0.5, 1], [2, 1, 2])
    assert r["holds"] is None and r["vertex"] is None
    assert r["undefined"] == "fewer than 4 layers"


def test_a_perfect_family_fvu_zero_everywhere_is_undefined_json() -> None:
    """An identity SAE at every layer: FVU 0 at each layer (constant), and a profile whose
    median is 0 without being constant: undefined with the reason, and valid JSON."""
    import json

    zero = loss_shape(DEPTH, [0.0] * 12)
    assert zero["holds"] is None and zero["undefined"] == "constant across layers"
    mostly = loss_shape(DEPTH, [0.1] + [0.0] * 10 + [0.2])
    assert mostly["holds"] is None
    assert mostly["undefined"] == "the median layer's value is 0: no ratio to it"
    nan = density_trend(DEPTH, [1.0] * 11 + [float("nan")])
    assert nan["undefined"] == "a layer's value is not a finite number"
    rows = [
        {"model": "id", "rel_depth": x, "density_pct": 5.0, "final_loss": 0.0, "fvu": 0.0}
        for x in DEPTH
    ]
    result = claims(rows)
    json.dumps(result, allow_nan=False)
    text = "\n".join(claims_markdown(result))
    assert "**id** — neither claim can be judged: constant across layers." in text
    assert "on FVU: **undefined (constant across layers)**" in text


def test_undefined_statistics_are_null_never_nan() -> None:
    """A flat density (ρ undefined) and too few layers give JSON null and 'undefined' in the
    report, never NaN (which is not JSON, and reads as a number)."""
    import json

    rows = [
        {"model": m, "rel_depth": x, "density_pct": 33.3, "final_loss": 1 + (x - 0.5) ** 2}
        for m, depths in (("flat", DEPTH), ("short", [0.0, 1.0]))
        for x in depths
    ]
    result = claims(rows)
    json.dumps(result, allow_nan=False)  # raises on NaN or inf
    assert result["flat"]["density"] == {
        "rho": None,
        "p": None,
        "slope": None,
        "r2": None,
        "holds": None,
        "undefined": "constant across layers",
    }
    text = "\n".join(claims_markdown(result))
    assert "density rises with depth: **undefined (constant across layers)** (Spearman" in text
    assert "Spearman ρ = undefined, p = undefined" in text and "nan" not in text.lower()


def test_claims_per_model_and_markdown() -> None:
    rows = [
        {"model": m, "rel_depth": x, "density_pct": 10 + 20 * x, "final_loss": 1 + (x - 0.5) ** 2}
        for m in ["a", "b"]
        for x in DEPTH
    ]
    result = claims(rows)
    assert set(result) == {"a", "b"}
    assert result["a"]["density"]["holds"] and result["a"]["loss"]["holds"]
    text = "\n".join(claims_markdown(result))
    assert "**a** — density rises with depth: **holds**" in text
    assert "Loss is U-shaped: **holds**" in text and "vertex at depth 0.50" in text


def test_too_few_layers_reads_as_such() -> None:
    rows = [{"model": "m", "rel_depth": x, "density_pct": 1.0, "final_loss": 1.0} for x in (0, 1)]
    text = "\n".join(claims_markdown(claims(rows)))
    assert "**m** — neither claim can be judged: fewer than 4 layers." in text
    assert "nan" not in text
