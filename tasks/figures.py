"""The report's figures, as PNG bytes written atomically. Rows are the report's per-(model,
layer) rows (means over SAE seeds, with `<metric>_sd`)."""

from __future__ import annotations

import base64
import functools
import io
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from tasks.records import LayerResult
from tasks.stats import FREQ_BINS
from tasks.store import write_bytes

PANELS = [
    ("final_loss", "final loss (MSE + l1·mean|z|)"),
    ("density_pct", "density (% non-zero latents)"),
    ("density_activation", "density × activation (min-max scaled)"),
]


P = ParamSpec("P")
R = TypeVar("R")
# matplotlib is not thread-safe: its mathtext parser (a log axis's "10^{0}" labels) shares one
# parse cache, and two figures rendered at once in threads fail with a ParseException. The
# points of a sweep on Dask draw their reports at once, each in a thread of one process.
DRAWING = threading.RLock()


def drawn_alone(draw: Callable[P, R]) -> Callable[P, R]:
    """`draw`, building and rendering its figure while no other thread of this process does."""

    @functools.wraps(draw)
    def alone(*args: P.args, **kwargs: P.kwargs) -> R:
        with DRAWING:
            return draw(*args, **kwargs)

    return alone


def subplots(*grid: int, figsize: tuple[float, float], **kw: Any) -> tuple[Figure, Any]:
    """A figure and its axes, as `pyplot.subplots` gives them, without pyplot and its
    process-global figure manager: a Figure of its own renders with the Agg canvas and is freed
    when dropped, so nothing needs closing."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, **kw)


def save_png(fig: Figure, path: Path) -> None:
    """Lay out, render at the report's resolution, and write atomically."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    write_bytes(path, buf.getvalue())


def _models(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["model"] for r in rows))


# With the SAEs spliced in (tasks.splice): what each costs the model, on the same axis
DOWNSTREAM_PANELS = [
    ("ce_loss_score", "CE loss score (1: costless, 0: as zeroing the hook)"),
    ("ce_delta", "ΔCE = CE with SAE − clean CE (nats)"),
]


@drawn_alone
def profile_overlay(rows: list[dict[str, Any]], path: Path) -> None:
    """Every model on one relative-depth axis, one panel per metric, ± sd over seeds; the
    downstream panels where every row has them."""
    panels = PANELS + [p for p in DOWNSTREAM_PANELS if all(r.get(p[0]) is not None for r in rows)]
    fig, axes = subplots(1, len(panels), figsize=(5 * len(panels), 4.2))
    for ax, (col, title) in zip(axes, panels, strict=True):
        for model in _models(rows):
            pts = [r for r in rows if r["model"] == model]
            x = [r["rel_depth"] for r in pts]
            y = [r[col] for r in pts]
            sd = [r.get(f"{col}_sd") or 0.0 for r in pts]
            (line,) = ax.plot(x, y, "o-", ms=3, label=model)
            lo = [a - b for a, b in zip(y, sd, strict=True)]
            hi = [a + b for a, b in zip(y, sd, strict=True)]
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2)
        ax.set(title=title, xlabel="relative depth = layer / (n_layers − 1)", xlim=(-0.03, 1.03))
        ax.grid(alpha=0.3)
    axes[0].legend()
    save_png(fig, path)


@drawn_alone
def course_panels(rows: list[dict[str, Any]], model: str, path: Path) -> None:
    """The course's three panels for one model, against the layer index."""
    pts = [r for r in rows if r["model"] == model]
    fig, axes = subplots(1, len(PANELS), figsize=(15, 4))
    for ax, (col, title) in zip(axes, PANELS, strict=True):
        ax.errorbar(
            [r["layer"] for r in pts],
            [r[col] for r in pts],
            yerr=[r.get(f"{col}_sd") or 0.0 for r in pts],
            fmt="o-",
            ms=3,
            capsize=2,
        )
        ax.set(title=f"{model}: {title}", xlabel="layer")
        ax.grid(alpha=0.3)
    save_png(fig, path)


@drawn_alone
def loss_curves(curves: list[dict[str, Any]], model: str, n_layers: int, path: Path) -> None:
    """Training loss per epoch, one line per layer (colour = depth), first SAE seed."""
    fig, ax = subplots(figsize=(7, 4.5))
    cmap = colormaps["viridis"]
    for c in curves:
        if c["model"] == model:
            ax.plot(c["loss"], color=cmap(c["layer"] / max(n_layers - 1, 1)), lw=1)
    sm = ScalarMappable(cmap=cmap, norm=Normalize(0, n_layers - 1))
    fig.colorbar(sm, ax=ax, label="layer")
    ax.set(title=f"{model}: SAE training loss", xlabel="epoch", ylabel="loss", yscale="log")
    ax.grid(alpha=0.3)
    save_png(fig, path)


@drawn_alone
def density_heatmap(
    hists: dict[int, list[int]], edges: list[float], model: str, path: Path
) -> None:
    """Layer × log10(latent firing frequency): how many latents fire how often, per layer."""
    layers = sorted(hists)
    grid = [hists[layer] or [0] * (len(edges) - 1) for layer in layers]
    fig, ax = subplots(figsize=(7, 0.25 * len(layers) + 2))
    im = ax.imshow(
        grid,
        aspect="auto",
        origin="lower",
        cmap="magma",
        extent=(edges[0], edges[-1], -0.5, len(layers) - 0.5),
    )
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
    fig.colorbar(im, ax=ax, label="latents")
    ax.set(
        title=f"{model}: latent firing frequency per layer",
        xlabel="log10 firing frequency (fraction of tokens)",
        ylabel="layer",
    )
    save_png(fig, path)


ARTIFACT_WIDTH = 900  # px: figures as the Prefect UI shows them (the report folder keeps 1650)
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)")
_RELATIVE = re.compile(r"\]\((?!data:|[a-z]+://|/)([^)\s]+)\)")


def data_uri(png: Path, width: int = ARTIFACT_WIDTH) -> str:
    """The figure as a data: URI, downscaled to `width` pixels if wider."""
    from PIL import Image

    with Image.open(png) as im:
        if im.width > width:
            im = im.resize((width, round(im.height * width / im.width)), Image.LANCZOS)
        if im.mode == "RGBA" and im.getchannel("A").getextrema() == (255, 255):
            im = im.convert("RGB")  # opaque (every figure is): 10% smaller than with alpha
        buf = io.BytesIO()
        im.save(buf, format="PNG")  # PIL's optimize=True took 3x as long for 1-3% smaller
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def for_the_ui(markdown: str, folder: Path, own: set[str]) -> str:
    """Markdown written beside its figures, made to render where that folder cannot be read
    (the Prefect UI in a browser): the report's own figures (`own`, file names in `folder`)
    embedded as data URIs, other links made absolute paths on the machine that wrote them. Any
    other image link (text from a page can look like one) is never read, and a figure that has
    gone missing stays a link instead of failing the run."""

    def embed(m: re.Match[str]) -> str:
        path = folder / m[2]
        return f"![{m[1]}]({data_uri(path)})" if m[2] in own and path.is_file() else m[0]

    return _RELATIVE.sub(lambda m: f"]({folder / m[1]})", _IMAGE.sub(embed, markdown))


def draw(
    rows: list[dict],
    results: list[LayerResult],
    n_layers: dict[str, int],
    out: Path,
    shown_seed: int,
) -> list[str]:
    """Every figure of the report; returns their file names in report order. Per-SAE figures
    show the seed Config.shown_seed names."""
    if not rows:
        return []
    profile_overlay(rows, out / "laminar.png")
    names = ["laminar.png"]
    shown = [r for r in results if r["sae_seed"] == shown_seed]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in shown if r["name"] == model]
        course_panels(rows, model, out / f"{model}-panels.png")
        loss_curves(
            [{"model": model, "layer": r["layer"], "loss": r["loss_curve"]} for r in mine],
            model,
            n_layers[model],
            out / f"{model}-loss.png",
        )
        density_heatmap(
            {r["layer"]: r["freq_hist"] for r in mine},
            FREQ_BINS.tolist(),
            model,
            out / f"{model}-density.png",
        )
        names += [f"{model}-panels.png", f"{model}-loss.png", f"{model}-density.png"]
    return names
