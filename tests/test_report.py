"""Report: one row per (model, layer) with relative depth and the spread over seeds; the files
a person reads; the claims judged in report.md."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from prefect.logging import disable_run_logger

from tasks.config import Config
from tasks.figures import ARTIFACT_WIDTH, for_the_ui
from tasks.report import write_report
from tasks.tables import COLUMNS, metric_rows


def result(name: str, layer: int, density: float, seed: int = 0) -> dict:
    return {
        "name": name,
        "layer": layer,
        "sae_seed": seed,
        "density_pct": density,
        "final_loss": 1.5 - density / 100,
        "final_mse": 0.5,
        "fvu": 0.2,
        "l0": 3.0,
        "dead_pct": 0.0,
        "density_activation": 0.1,
        "seconds": 1.0,
        "device": "cpu",
        "hardware": "cpu: test CPU, 2 threads on here",
        "n_tokens": 10,
        "d": 4,
        "latent": 8,
        "k": 2,
        "x_mean_norm": 2.0,
        "x_var": 1.0,
        "x_neg_frac": 0.5,
        "loss_curve": [2.0, 1.0 + layer],
        "freq_hist": [0] * 23 + [8],
    }


def test_rows_are_sorted_with_relative_depth_and_seed_spread() -> None:
    results = [
        result("big", 35, 30),
        result("small", 11, 20),
        result("small", 0, 10),
        result("small", 0, 14, seed=1),
    ]
    rows = metric_rows(results, {"small": 12, "big": 36})
    assert [(r["model"], r["layer"], r["rel_depth"], r["n_seeds"]) for r in rows] == [
        ("big", 35, 1.0, 1),
        ("small", 0, 0.0, 2),
        ("small", 11, 1.0, 1),
    ]
    assert rows[1]["density_pct"] == 12.0
    assert rows[1]["density_pct_sd"] == pytest.approx(2**0.5 * 2)  # sd of (10, 14)
    assert rows[0]["density_pct_sd"] is None and list(rows[0]) == COLUMNS  # one seed: no sd


def record(path: Path, data: bytes) -> dict:
    from tasks.store import file_record

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return file_record(path)


def test_report_files(tmp_path: Path) -> None:
    cfg = Config(artifacts_dir=str(tmp_path))
    page = {
        "url": "http://x/wiki/LED",
        "revision_id": 42,
        "fetched_at": "2026-01-01T00:00:00",
        "html": record(tmp_path / "pages" / "p.html", b"<html></html>"),
    }
    text = {"text": record(tmp_path / "pages" / "p.text.txt", b"prose"), "chars": 5}
    tokens = {
        "tokens": record(tmp_path / "tokens" / "t.parquet", b"t"),
        "n_article_tokens": 12345,
        "articles": [{"tokens": 12345, "windows": 10}],
    }
    extraction = {
        "model": "org/m",
        "name": "m",
        "n_layers": 5,
        "ran_on": "here:1",
        "hardware": "cpu: test CPU, 2 threads on here",
    }
    with disable_run_logger():
        out = write_report.fn(
            cfg,
            [page],
            [text],
            [tokens],
            [extraction],
            [result("m", layer, 10 + 5 * layer) for layer in (4, 0, 1, 2)],
            ["sae m L3: boom"],
            [],  # no latent cards
            "2026-01-01T00:00:01+00:00",
            [],  # no downstream measures
        )
    folder = Path(out["dir"])
    with open(folder / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["layer"], float(r["rel_depth"]), float(r["density_pct"])) for r in rows] == [
        ("0", 0.0, 10.0),
        ("1", 0.25, 15.0),
        ("2", 0.5, 20.0),
        ("4", 1.0, 30.0),
    ]
    assert pq.read_table(folder / "metrics.parquet").num_rows == 4
    assert pq.read_table(folder / "metrics_by_seed.parquet").num_rows == 4
    curves = pq.read_table(folder / "loss_curves.parquet").to_pylist()
    assert {"model": "m", "layer": 2, "sae_seed": 0, "epoch": 1, "loss": 3.0} in curves
    md = (folder / "report.md").read_text()
    assert "revision 42" in md and "12345 tokens" in md and "- sae m L3: boom" in md
    assert "[p.text.txt](../../pages/p.text.txt)" in md  # the text that was fed, linked
    assert (folder / "../../pages/p.text.txt").read_bytes() == b"prose"
    assert "## Provenance" in md and "run 2026-01-01T00:00:01+00:00 to " in md
    assert "| m | 4 | 1.000 | 30.00 ± — |" in md
    assert "**m** — density rises with depth: **holds**" in md
    claims = json.loads((folder / "claims.json").read_text())
    assert claims["m"]["density"]["holds"] is True and claims["m"]["density"]["rho"] == 1.0
    for png in ["laminar.png", "m-panels.png", "m-loss.png", "m-density.png"]:
        assert f"]({png})" in md
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # What the Prefect UI gets: the same text, its figures embedded (downscaled), links absolute.
    own = {"laminar.png", "m-panels.png", "m-loss.png", "m-density.png"}
    ui = for_the_ui(md, folder, own)
    uris = re.findall(r"!\[[^\]]*\]\((data:image/png;base64,[^)]+)\)", ui)
    assert len(uris) == 4 and "](laminar.png)" not in ui
    in_order = [m for m in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md) if m in own]
    for uri, png in zip(uris, in_order, strict=True):
        with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as im:
            assert im.format == "PNG" and im.width <= ARTIFACT_WIDTH
            with Image.open(folder / png) as figure:  # the figure's pixels, only downscaled
                size = (im.width, round(figure.height * im.width / figure.width))
                assert im.width == min(figure.width, ARTIFACT_WIDTH) and im.size == size
                want = figure.resize(im.size, Image.LANCZOS) if im.size != figure.size else figure
                assert im.convert("RGBA").tobytes() == want.convert("RGBA").tobytes(), png
    assert f"]({folder}/../../pages/p.text.txt)" in ui
    assert len(ui) < 1_000_000  # 0.2 MB for one model's four figures
    # Only the report's own figures are read: an image link from elsewhere (page text can look
    # like one) is never embedded, and a figure gone missing stays a link, never an error.
    (folder.parent / "outside.png").write_bytes((folder / "laminar.png").read_bytes())
    planted = "![x](../outside.png) ![y](m-loss.png) ![z](gone.png)"
    (folder / "m-loss.png").unlink()
    shown = for_the_ui(planted, folder, own)
    assert "data:" not in shown
    assert shown == planted.replace("](", f"]({folder}/")  # links, made absolute as any other


def spliced(r: dict, ce_sae: float, score: float | None, why: str | None = None) -> dict:
    """A result with the downstream measures (tasks.splice) of one SAE."""
    measures = {"ce_clean": 3.0, "ce_sae": ce_sae, "ce_ablation": 5.0, "ce_delta": ce_sae - 3.0}
    measures |= {"ce_loss_score": score, "ce_loss_score_undefined": why}
    measures |= {"kl_sae": 0.1, "kl_ablation": 0.5, "kl_div_score": 0.8}
    measures |= {"kl_div_score_undefined": None, "explained_variance": 0.8, "l2_ratio": 0.9}
    return {**r, **measures, "cossim": 0.95, "dense_pct": 1.0}


def test_field_table_shows_the_ablation_the_spread_and_why_a_score_is_undefined() -> None:
    from tasks.report import field_table

    why = "the zero ablation did not raise CE (-0.01): nothing to score against"
    results = [
        spliced(result("m", 0, 10, seed=0), 3.5, 0.75),
        spliced(result("m", 0, 12, seed=1), 3.7, 0.65),
        spliced(result("m", 1, 10), 3.2, None, why),
    ]
    rows = metric_rows(results, {"m": 2})
    held = {"tokens": {}, "held_out": 2, "in_sample": 0, "windows": [], "train_windows": []}
    text = "\n".join(field_table(rows, [held]))  # type: ignore[list-item]
    assert "| CE clean | CE SAE | CE ablation | ΔCE | CE score | KL SAE | KL ablation |" in text
    two_seeds, one_seed = (line for line in text.splitlines() if line.startswith("| m |"))
    sd = 0.1 * 2**0.5 / 2 * 2  # sd of (3.5, 3.7) = 0.1414
    assert f"| 3.6000 ± {sd:.4f} | 5.0000 ± 0.0000 |" in two_seeds
    assert "| 0.700 ± 0.071 |" in two_seeds  # the CE score over two seeds
    assert "| 3.2000 ± — | 5.0000 ± — | 0.2000 ± — | — | 0.1000 ± — |" in one_seed
    assert f"- m L1 ce_loss_score: {why}." in text
    assert "± 0.00 |" not in one_seed


def test_per_sae_figures_show_the_first_seed_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--sae-seeds 3 1: the loss curves and frequency heatmaps show seed 3's SAE (the first
    given, Config.shown_seed), as the latent cards do; the tables average both."""
    from tasks import figures

    drawn: dict[str, object] = {}
    monkeypatch.setattr(figures, "profile_overlay", lambda *a: None)
    monkeypatch.setattr(figures, "course_panels", lambda *a: None)
    monkeypatch.setattr(figures, "loss_curves", lambda c, *a: drawn.update(curves=c))
    monkeypatch.setattr(figures, "density_heatmap", lambda h, *a: drawn.update(hist=h))
    cfg = Config(sae_seeds=[3, 1])
    assert cfg.shown_seed == 3
    results = [result("m", 0, 10, seed=3), result("m", 0, 12, seed=1)]
    results[0]["loss_curve"], results[1]["loss_curve"] = [3.0, 3.0], [1.0, 1.0]
    rows = metric_rows(results, {"m": 2})
    figures.draw(rows, results, {"m": 2}, tmp_path, cfg.shown_seed)
    assert drawn["curves"] == [{"model": "m", "layer": 0, "loss": [3.0, 3.0]}]
