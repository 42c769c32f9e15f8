"""Training task: non-finite input or loss fails the layer with its name; metrics and curve
are written beside the activations' layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import reference
import torch
from prefect.logging import disable_run_logger

from tasks.config import Config
from tasks.sae import files
from tasks.settings import LaminarError
from tasks.store import activation_table, file_record
from tasks.train import InMemory, train_layer, train_sae


def test_nan_activations_fail_by_name() -> None:
    x = np.ones((10, 4), dtype=np.float32)
    x[3, 2] = np.nan
    with pytest.raises(LaminarError, match="gpt2 L7: activations contain NaN"):
        train_layer(InMemory(x, "cpu"), Config(device="cpu", epochs=2), "gpt2 L7")


def test_overflowing_loss_fails_by_name() -> None:
    x = np.full((10, 4), 1e25, dtype=np.float32)
    x[::2] *= -1  # varies (a constant layer fails earlier, for another reason)
    with pytest.raises(LaminarError, match=r"gpt2 L1: the SAE loss became (inf|nan) at epoch 0"):
        train_layer(InMemory(x, "cpu"), Config(device="cpu", epochs=2), "gpt2 L1")


@pytest.mark.parametrize(
    ("value", "kind"), [(0.0, "all zero"), (0.5, "the same vector for every token")]
)
def test_activations_that_do_not_vary_fail_by_name(value: float, kind: str) -> None:
    x = np.full((10, 4), value, dtype=np.float32)
    with pytest.raises(LaminarError, match=f"gpt2 L2: its activations do not vary \\({kind}, 10"):
        train_layer(InMemory(x, "cpu"), Config(device="cpu", epochs=2), "gpt2 L2")


def layer_file(tmp_path: Path) -> tuple[np.ndarray, Path]:
    """40 tokens of width 8 as layer 3's activation file, where extraction would write it."""
    acts = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    path = tmp_path / "activations" / "m-1234" / "mlp.hook_pre" / "abc" / "L03.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(activation_table(np.zeros(40), np.arange(40), np.zeros(40), acts), path)
    return acts, path


def test_train_task_writes_metrics_json(tmp_path: Path) -> None:
    acts, path = layer_file(tmp_path)
    cfg = Config(artifacts_dir=str(tmp_path), epochs=4, device="cpu")
    with disable_run_logger():
        out = train_sae.fn(cfg, "m", 3, {"layer": 3, **file_record(path)}, 7, "m L3 s7")
    assert out["n_tokens"] == 40 and out["latent"] == 16 and out["k"] == 5
    assert len(out["loss_curve"]) == 4 and out["final_loss"] == out["loss_curve"][-1]
    saved = json.loads(Path(out["json"]["path"]).read_text())
    assert Path(out["json"]["path"]).parent == tmp_path / "sae/m-1234/mlp.hook_pre/abc/L03"
    assert saved["density_pct"] == out["density_pct"] and saved["settings"]["epochs"] == 4
    assert saved["settings"]["sae_seed"] == 7 and sum(out["freq_hist"]) == 16 * (
        1 - out["dead_pct"] / 100
    )
    assert out["x_neg_frac"] == pytest.approx(float((acts < 0).mean()))
    # The SAE is kept beside its metrics: loading it reproduces the layer's numbers.
    folder = Path(out["json"]["path"]).with_suffix("")
    assert [Path(r["path"]) for r in out["sae_files"]] == [
        folder / "sae_weights.safetensors",
        folder / "cfg.json",
    ]
    again = reference.metrics(files.load(folder), torch.from_numpy(acts))
    assert again["density_pct"] == saved["density_pct"]
    assert again["final_mse"] == pytest.approx(saved["final_mse"], rel=1e-6)
    cfg_json = json.loads((folder / "cfg.json").read_text())
    assert cfg_json["metadata"]["hook_name"] == "blocks.3.mlp.hook_pre"
    assert cfg_json["laminar"]["settings"] == saved["settings"]
    assert cfg_json["laminar"]["activations"]["sha256"] == file_record(path)["sha256"]


def test_a_killed_runs_sae_temporaries_are_swept(tmp_path: Path) -> None:
    """A run killed while writing an SAE leaves a temporary of its size in the SAE's folder; the
    next training of that layer sweeps it (a live process's, or another machine's, stays)."""
    import os

    from tasks.store import HOST_TAG

    _, path = layer_file(tmp_path)
    cfg = Config(artifacts_dir=str(tmp_path), epochs=2, device="cpu")
    with disable_run_logger():
        out = train_sae.fn(cfg, "m", 3, {"layer": 3, **file_record(path)}, 0, "m L3")
    folder = Path(out["json"]["path"]).with_suffix("")
    dead = 2**22 + 7  # above the default pid_max: no process has this pid
    left = folder / f".sae_weights.safetensors.{dead}-{HOST_TAG}-0123abcd.tmp"
    live = folder / f".sae_weights.safetensors.{os.getpid()}-{HOST_TAG}-4567cdef.tmp"
    elsewhere = folder / f".cfg.json.{dead}-ffffffff-89abcdef.tmp"
    for tmp in (left, live, elsewhere):
        tmp.write_bytes(b"half an SAE")
    with disable_run_logger():
        train_sae.fn(cfg, "m", 3, {"layer": 3, **file_record(path)}, 0, "m L3")
    assert not left.exists() and live.exists() and elsewhere.exists()


def test_no_save_saes_keeps_only_the_metrics(tmp_path: Path) -> None:
    acts = np.random.default_rng(1).normal(size=(20, 4)).astype(np.float32)
    path = tmp_path / "activations" / "m-1" / "mlp.hook_pre" / "abc" / "L00.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(activation_table(np.zeros(20), np.arange(20), np.zeros(20), acts), path)
    cfg = Config(artifacts_dir=str(tmp_path), epochs=2, device="cpu", save_saes=False)
    with disable_run_logger():
        out = train_sae.fn(cfg, "m", 0, {"layer": 0, **file_record(path)}, 0, "m L0")
    assert out["sae_files"] == [] and not list((tmp_path / "sae").rglob("*.safetensors"))
    assert out["x_var"] == pytest.approx(float(((acts - acts.mean(0)) ** 2).mean()), rel=1e-5)


RECORDED = Path(__file__).parent / "data" / "course_layer.json"


def course_layer() -> np.ndarray:
    """A fixed 1023 x 128 layer: seeded, with per-feature scales and a non-zero mean."""
    rng = np.random.default_rng(2026)
    x = rng.standard_normal((1023, 128))
    x = x * rng.uniform(0.2, 2.0, 128) + rng.standard_normal(128)
    return x.astype(np.float32)


def test_default_metrics_are_those_recorded_before_the_robustness_options() -> None:
    """The course's defaults give the numbers an earlier laminar recorded (tests/data): adding
    articles, minibatches and model families changed nothing of the default run."""
    want = json.loads(RECORDED.read_text())
    out, _ = train_layer(InMemory(course_layer(), "cpu"), Config(device="cpu"), "expect L0", seed=0)
    assert (out["k"], out["latent"], out["freq_hist"]) == (
        want["k"],
        want["latent"],
        want["freq_hist"],
    )
    for key in ("final_loss", "final_mse", "fvu", "l0", "density_activation", "x_var"):
        assert out[key] == pytest.approx(want[key], rel=1e-5), key
    assert out["density_pct"] == pytest.approx(want["density_pct"], abs=0.01)
    assert out["loss_curve"] == pytest.approx(want["loss_curve"], rel=1e-5)
