"""The two claims under test, judged by fixed rules (docs/experiment.md), not tuned to data.

Claim 1, density rises with depth: Spearman ρ of density against relative depth ≥ 0.5 with
p < 0.05, and the least-squares slope is positive.
Claim 2, the loss is U-shaped: a quadratic fit of final loss against relative depth curves
upward (a > 0) with its vertex inside [0.15, 0.85], and both the first and the last layer's loss
are above the median layer's.
A claim whose series allows no statistic (too few layers, a constant series such as L0 = k
under TopK, a value that is not finite, a median of 0 for the ratios) is undefined, with its
reason: holds None, never NaN."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

FREQ_BINS = np.linspace(-6, 0, 25)  # log10 firing frequency of a latent, for the heatmap
MIN_LAYERS = 4  # fewer points say nothing about a trend or a U
RHO_MIN, P_MAX = 0.5, 0.05
VERTEX_RANGE = (0.15, 0.85)


def undefined_because(x: np.ndarray, y: np.ndarray) -> str | None:
    """Why no statistic of y against depth x is defined, or None: too few layers, a value that
    is not a finite number, or a series constant across layers (no trend, no curve, no rank)."""
    if len(x) < MIN_LAYERS:
        return f"fewer than {MIN_LAYERS} layers"
    if not np.isfinite(y).all():
        return "a layer's value is not a finite number"
    if np.ptp(y) == 0:
        return "constant across layers"
    return None


def density_trend(depth: list[float], density: list[float]) -> dict[str, Any]:
    """Spearman ρ (and p) and a linear fit (slope per unit relative depth, R²); every value None
    (never NaN) where the series allows none (undefined_because, in 'undefined')."""
    x, y = np.asarray(depth, float), np.asarray(density, float)
    if why := undefined_because(x, y):
        return {"rho": None, "p": None, "slope": None, "r2": None, "holds": None, "undefined": why}
    rho, p = stats.spearmanr(x, y)
    fit = stats.linregress(x, y)
    holds = bool(rho >= RHO_MIN and p < P_MAX and fit.slope > 0)
    return {
        "rho": float(rho),
        "p": float(p),
        "slope": float(fit.slope),
        "r2": float(fit.rvalue**2),
        "holds": holds,
        "undefined": None,
    }


U_KEYS = ["curvature", "vertex", "min_depth", "first_ratio", "last_ratio", "holds"]


def loss_shape(depth: list[float], loss: list[float]) -> dict[str, Any]:
    """Quadratic fit a·x² + b·x + c (curvature a, vertex −b/2a), where the minimum sits, and
    the first and last layers' loss over the median layer's; None where undefined, with why."""
    x, y = np.asarray(depth, float), np.asarray(loss, float)
    order = np.argsort(x)
    x, y = x[order], y[order]
    median = float(np.median(y)) if len(y) else 0.0
    why = undefined_because(x, y)
    if why is None and median <= 0:  # first/median and last/median divide by it
        why = f"the median layer's value is {median:g}: no ratio to it"
    if why:
        return {**dict.fromkeys(U_KEYS), "undefined": why}
    a, b, _ = np.polyfit(x, y, 2)
    vertex = float(-b / (2 * a)) if a != 0 else None  # a straight line has no vertex
    first, last = float(y[0] / median), float(y[-1] / median)
    centred = vertex is not None and VERTEX_RANGE[0] <= vertex <= VERTEX_RANGE[1]
    holds = bool(a > 0 and centred and first > 1 and last > 1)
    return {
        "curvature": float(a),
        "vertex": vertex,
        "min_depth": float(x[np.argmin(y)]),
        "first_ratio": first,
        "last_ratio": last,
        "holds": holds,
        "undefined": None,
    }


def num(value: float | None, spec: str) -> str:
    """A statistic for the report: formatted, or 'undefined' where it has no value."""
    return "undefined" if value is None else format(value, spec)


def verdict(claim: dict[str, Any]) -> str:
    if claim["holds"] is None:
        return f"undefined ({claim['undefined']})"
    return "holds" if claim["holds"] else "does not hold"


def claims(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Both claims for every model in the metrics rows (rows of one model share n_layers)."""
    out = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        pts = [r for r in rows if r["model"] == model]
        depth = [r["rel_depth"] for r in pts]
        out[model] = {
            "density": density_trend(depth, [r["density_pct"] for r in pts]),
            "loss": loss_shape(depth, [r["final_loss"] for r in pts]),
        }
        for col in ("fvu", "ce_delta"):  # the U rule on scale-free measures too
            if all(r.get(col) is not None for r in pts):
                out[model][col] = loss_shape(depth, [r[col] for r in pts])
    return out


def u_line(name: str, u: dict[str, Any]) -> str:
    return (
        f"{name}: **{verdict(u)}** (curvature {num(u['curvature'], '.3g')}, vertex "
        f"{num(u['vertex'], '.2f')}, first/median {num(u['first_ratio'], '.3f')}, last/median "
        f"{num(u['last_ratio'], '.3f')})"
    )


def claim_lines(model: str, d: dict[str, Any], u: dict[str, Any]) -> list[str]:
    return [
        f"**{model}** — density rises with depth: **{verdict(d)}** "
        f"(Spearman ρ = {num(d['rho'], '.3f')}, p = {num(d['p'], '.3g')}; slope "
        f"{num(d['slope'], '.3g')} %/depth, R² = {num(d['r2'], '.3f')}). Loss is U-shaped: "
        f"**{verdict(u)}** (curvature {num(u['curvature'], '.3g')}, vertex at "
        f"depth {num(u['vertex'], '.2f')}, minimum at depth {num(u['min_depth'], '.2f')}, "
        f"first/median {num(u['first_ratio'], '.3f')}, last/median "
        f"{num(u['last_ratio'], '.3f')}).",
        "",
    ]


def claims_markdown(result: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["## The claims", ""]
    for model, c in result.items():
        d, u = c["density"], c["loss"]
        if d["undefined"] == u["undefined"] and d["undefined"] is not None:
            lines += [f"**{model}** — neither claim can be judged: {d['undefined']}.", ""]
        else:
            lines += claim_lines(model, d, u)
        names = {"fvu": "on FVU", "ce_delta": "on ΔCE (SAE spliced in)"}
        normalised = [u_line(n, c[col]) for col, n in names.items() if col in c]
        if normalised:
            lines += ["The same U rule beside the raw loss: " + "; ".join(normalised) + ".", ""]
    lines += [
        f"Rules: density holds if ρ ≥ {RHO_MIN}, p < {P_MAX} and slope > 0; the U holds if "
        f"curvature > 0, vertex in [{VERTEX_RANGE[0]}, {VERTEX_RANGE[1]}] and first and last "
        f"layers' loss above the median; at least {MIN_LAYERS} layers are needed, and a series "
        "constant across layers, or not finite, is undefined.",
        "",
    ]
    return lines
