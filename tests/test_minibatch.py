"""Minibatch training (--batch-tokens): with B = N one epoch is the full-batch step; the shuffle
is seeded, and every token is seen once per epoch; the streamed statistics and metrics equal the
full-batch ones; a run with B set caches and resumes like any other."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import reference
import torch
from conftest import ArticleServer, quick_config

from tasks import minibatch
from tasks.sae import course, fit, measures
from tasks.store import ActivationFile, activation_schema, activation_table, file_record

SETTINGS = {"expansion": 2, "topk_frac": 1 / 3, "lr": 1e-3, "l1": 1.0}


def write_layer(path: Path, x: np.ndarray, group_rows: int) -> ActivationFile:
    """x (N, d) as an activation file of row groups of `group_rows` tokens, as extract writes."""
    with pq.ParquetWriter(path, activation_schema(x.shape[1], {})) as writer:
        for start in range(0, len(x), group_rows):
            part = x[start : start + group_rows]
            rows = np.arange(start, start + len(part))
            writer.write_table(activation_table(rows, rows, rows, part))
    return ActivationFile(file_record(path))


@pytest.fixture
def layer(tmp_path: Path) -> tuple[np.ndarray, ActivationFile]:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((300, 16)) + rng.standard_normal(16)).astype(np.float32)
    return x, write_layer(tmp_path / "L00.parquet", x, group_rows=70)  # 5 groups, the last 20


def test_whole_layer_as_one_minibatch_is_the_full_batch_step(layer: tuple) -> None:
    x, src = layer
    full = fit.train(torch.from_numpy(x), epochs=3, seed=4, **SETTINGS)
    mini = minibatch.train(src, batch_tokens=300, epochs=3, seed=4, device="cpu", **SETTINGS)
    w, w_mini = full.sae.weight.detach(), mini.sae.weight.detach()
    assert torch.linalg.norm(w_mini - w) / torch.linalg.norm(w) < 1e-6
    assert mini.losses == pytest.approx(full.losses, rel=1e-6)


def test_minibatch_training_is_an_adam_step_per_minibatch(layer: tuple) -> None:
    """B < N against a reference written the straightforward way: the same seeded minibatches
    (minibatches() with the shuffle's own generator), an autograd step on the course's loss and
    an Adam step for each, every epoch; the epoch's loss the token-weighted mean."""
    x, src = layer
    mini = minibatch.train(src, batch_tokens=64, epochs=3, seed=4, device="cpu", **SETTINGS)
    ref, opt = course.fresh(16, 2, 1 / 3, SETTINGS["lr"], 4, "cpu")
    rng, losses = np.random.default_rng(4), []
    for _ in range(3):
        total = 0.0
        for xb in minibatch.minibatches(src, 64, rng):
            batch = torch.from_numpy(xb)
            loss = reference.autograd_loss(ref, batch, SETTINGS["l1"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(xb)
        losses.append(total / len(x))
    w, w_mini = ref.weight.detach(), mini.sae.weight.detach()
    assert torch.linalg.norm(w_mini - w) / torch.linalg.norm(w) < 1e-5
    assert mini.losses == pytest.approx(losses, rel=1e-5)


def test_shuffle_is_seeded_and_each_token_is_seen_once_an_epoch(layer: tuple) -> None:
    x, src = layer

    def epoch(seed: int) -> list[np.ndarray]:
        return list(minibatch.minibatches(src, 64, np.random.default_rng(seed)))

    assert src.group(0).flags.writeable  # torch wraps it without a read-only warning
    first = epoch(7)
    assert [len(b) for b in first] == [64, 64, 64, 64, 44]
    assert all(np.array_equal(a, b) for a, b in zip(first, epoch(7), strict=True))
    assert not np.array_equal(first[0], epoch(8)[0])
    seen = np.concatenate(first)
    order = np.lexsort(seen.T[::-1])
    assert np.array_equal(seen[order], x[np.lexsort(x.T[::-1])])  # the same rows, once each
    # Shuffled: the first minibatch mixes tokens from more than one row group.
    groups = {int(np.flatnonzero((x == row).all(axis=1))[0]) // 70 for row in first[0]}
    assert len(groups) > 1


def test_statistics_and_metrics_by_row_group_equal_those_of_the_whole_layer(
    layer: tuple,
) -> None:
    """tasks.sae.measures accumulates over chunks: the file's row groups give the numbers of
    the layer held whole as one chunk."""
    x, src = layer
    model = fit.train(torch.from_numpy(x), epochs=5, seed=0, **SETTINGS).sae
    stats = measures.input_stats(minibatch.chunks(src, "cpu"))
    want = measures.input_stats([torch.from_numpy(x)])
    assert stats == pytest.approx(want, rel=1e-6)
    assert stats["finite"] and not stats["constant"]
    got = measures.metrics(model, minibatch.chunks(src, "cpu"), stats["x_var"])
    ref = measures.metrics(model, [torch.from_numpy(x)], want["x_var"])
    np.testing.assert_allclose(got.pop("latent_freq"), ref.pop("latent_freq"), rtol=1e-6)
    assert got == pytest.approx(ref, rel=1e-6)


def stats_of(src: ActivationFile) -> dict:
    return measures.input_stats(minibatch.chunks(src, "cpu"))


def test_constant_and_broken_layers_are_found_by_streaming(tmp_path: Path) -> None:
    same = np.tile(np.linspace(-1, 1, 16, dtype=np.float32) * 0.1, (100, 1))
    stats = stats_of(write_layer(tmp_path / "c.parquet", same, 30))
    assert stats["constant"] and not stats["all_zero"]
    zero = stats_of(write_layer(tmp_path / "z.parquet", same * 0, 30))
    assert zero["constant"] and zero["all_zero"]
    bad = same.copy()
    bad[77, 3] = np.nan
    assert not stats_of(write_layer(tmp_path / "n.parquet", bad, 30))["finite"]


def test_a_minibatch_run_caches_and_resumes_like_any_other(
    tmp_path: Path, tiny_model: Path, article_server: ArticleServer
) -> None:
    from flows.laminar import laminar

    cfg = quick_config(tiny_model, article_server, tmp_path, batch_tokens=50, layers="0,2")
    first = laminar(cfg)
    assert set(first["tasks"].values()) == {"Completed"}
    for path in (tmp_path / "sae").rglob("L0[02]/*.json"):
        assert '"batch_tokens": 50' in path.read_text()
    [saved] = [p for p in (tmp_path / "sae").rglob("L02/*.json")]
    saved.unlink()  # a layer lost: only it trains again
    again = laminar(cfg)
    executed = sorted(n for n, s in again["tasks"].items() if s != "Cached")
    assert executed == ["latents tiny-gpt2", "report", "sae tiny-gpt2 L2"]
