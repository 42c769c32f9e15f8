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


def test_falling_or_flat_density_does_not_hold() -> None:
    assert density_trend(DEPTH, [30 - i for i in range(12)])["holds"] is False
    flat = density_trend(DEPTH, [33.3] * 12)
    assert flat["holds"] is False and flat["slope"] == 0.0


def test_planted_u_holds_with_its_vertex() -> None:
    loss = [2 + 5 * (x - 0.4) ** 2 for x in DEPTH]
    r = loss_shape(DEPTH, loss)
    assert r["curvature"] == pytest.approx(5.0) and r["vertex"] == pytest.approx(0.4)
    assert r["first_ratio"] > 1 and r["last_ratio"] > 1 and r["holds"] is True


def test_flat_or_monotone_loss_is_no_u() -> None:
    assert loss_shape(DEPTH, [1.0] * 12)["holds"] is False
    assert loss_shape(DEPTH, [1 + x for x in DEPTH])["holds"] is False  # rising: last only
    edge_u = loss_shape(DEPTH, [(x - 0.95) ** 2 + 1 for x in DEPTH])  # vertex outside the range
    assert edge_u["holds"] is False


def test_too_few_layers_is_not_judged() -> None:
    assert density_trend([0, 1], [1, 2])["holds"] is None
    r = loss_shape([0, 0.5, 1], [2, 1, 2])
    assert r["holds"] is None and r["vertex"] is None


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
        "slope": 0.0,
        "r2": None,
        "holds": False,
    }
    text = "\n".join(claims_markdown(result))
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
    assert "**m** — too few layers to judge (fewer than 4 layers)." in text and "nan" not in text
