"""benchmarks/science.py: the bf16-against-fp32 comparison resumes at the next unfinished
training, refuses a partial file made by other settings, and computes its differences right."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from benchmarks import science
from tasks.config import Config

QUICK = Config(device="cpu", epochs=2)


def counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Labels of the trainings that run from now on."""
    calls: list[str] = []
    real = science.train_layer

    def train_layer(x: Any, cfg: Config, label: str) -> Any:
        calls.append(label)
        assert label.endswith(cfg.precision)
        return real(x, cfg, label)

    monkeypatch.setattr(science, "train_layer", train_layer)
    return calls


class FirstRun(NamedTuple):
    out: Path
    partial: Path
    calls: list[str]  # labels of the trainings run since (cleared after the first run)
    whole: dict[str, Any]


@pytest.fixture
def first_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FirstRun:
    """The tiny comparison run once, to the end, with its trainings counted."""
    out = tmp_path / "results-science.json"
    calls = counting(monkeypatch)
    whole = science.run_shape("tiny", out, QUICK)
    partial = tmp_path / "science-tiny.partial.json"
    assert len(calls) == 6 and len(json.loads(partial.read_text())["done"]) == 6
    calls.clear()
    return FirstRun(out, partial, calls, whole)


def test_an_interrupted_comparison_resumes_at_the_next_training(first_run: FirstRun) -> None:
    out, partial, calls, whole = first_run
    saved = json.loads(partial.read_text())  # as if stopped before these two finished
    del saved["done"]["1/fp32"], saved["done"]["2/bf16"]
    partial.write_text(json.dumps(saved))
    resumed = science.run_shape("tiny", out, QUICK)
    assert calls == ["tiny L1 fp32", "tiny L2 bf16"]
    assert resumed == whole  # same activations, seed and settings: the same numbers

    calls.clear()
    assert science.run_shape("tiny", out, QUICK) == whole and calls == []


def test_a_partial_file_of_other_settings_is_refused(first_run: FirstRun) -> None:
    before = first_run.partial.read_bytes()
    with pytest.raises(SystemExit, match=r"other settings \(settings differ: .*delete it to start"):
        science.run_shape("tiny", first_run.out, QUICK.model_copy(update={"epochs": 3}))
    assert first_run.calls == [] and first_run.partial.read_bytes() == before


def row(layer: int, density: float, loss: float, fvu: float, l0: float) -> dict[str, Any]:
    return {
        "model": "m",
        "layer": layer,
        "rel_depth": layer / 4,
        "density_pct": density,
        "final_loss": loss,
        "fvu": fvu,
        "l0": l0,
    }


def test_differences_worst_case_and_claims_by_hand() -> None:
    fp32 = [row(i, 10.0 + 5 * i, [4, 2, 1, 2, 4][i], 0.5, 100.0) for i in range(5)]
    bf16 = [dict(r) for r in fp32]
    bf16[3].update(density_pct=26.0, fvu=0.51)  # fp32 25.0 and 0.5
    bf16[4].update(final_loss=3.0, l0=99.0)  # fp32 4.0 and 100.0: still above the median
    result = science.compare({"fp32": fp32, "bf16": bf16}, "m", 100, 8)
    assert result["layers"][3]["density_pct_abs"] == pytest.approx(1.0)
    assert result["layers"][3]["density_pct_rel"] == pytest.approx(1 / 25)
    assert result["layers"][4]["final_loss_rel"] == pytest.approx(-0.25)
    assert result["worst"] == pytest.approx(
        {
            "density_pct_abs": 1.0,
            "density_pct_rel": 0.04,
            "final_loss_abs": 1.0,
            "final_loss_rel": 0.25,
            "fvu_abs": 0.01,
            "fvu_rel": 0.02,
            "l0_abs": 1.0,
            "l0_rel": 0.01,
        }
    )
    for precision in ("fp32", "bf16"):  # rising density and a U in both
        claim = result["claims"][precision]
        assert claim["density"]["holds"] and claim["loss"]["holds"]
    assert result["claims"]["fp32"]["density"]["rho"] == pytest.approx(1.0)
