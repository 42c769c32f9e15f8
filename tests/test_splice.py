"""Splice: SAELens's CE and KL scores on hand-made cases (an SAE that reconstructs perfectly, one
that reconstructs nothing), the clean CE against Hugging Face's own loss, and the pass that
starts at the hooked block against a full forward pass with the same replacement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tasks import paths, splice
from tasks.models import load_model


class Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


class Zero(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros_like(x), x


class Scaled(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return 0.5 * x, x


@pytest.fixture(scope="module")
def bridge(tiny_model: Path):  # type: ignore[no-untyped-def]
    return load_model(str(tiny_model), "cpu")


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, 50257, (3, 20), generator=torch.Generator().manual_seed(0))


def measured(bridge, model, tokens, hook, first=1, key="k"):  # type: ignore[no-untyped-def]
    with torch.inference_mode():
        return splice.measure(bridge, model, tokens, hook, first=first, chunk=2, key=key)


@pytest.mark.parametrize("hook", ["mlp.hook_pre", "hook_resid_pre"])
def test_perfect_and_empty_reconstructions(bridge, tokens, hook: str) -> None:  # type: ignore[no-untyped-def]
    perfect = measured(bridge, Identity(), tokens, f"blocks.1.{hook}", key=f"id-{hook}")
    assert perfect["ce_loss_score"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["kl_sae"] == pytest.approx(0.0, abs=1e-6)
    assert perfect["kl_div_score"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["ce_delta"] == pytest.approx(0.0, abs=1e-6)
    empty = measured(bridge, Zero(), tokens, f"blocks.1.{hook}", key=f"zero-{hook}")
    assert empty["ce_loss_score"] == pytest.approx(0.0, abs=1e-6)
    assert empty["kl_div_score"] == pytest.approx(0.0, abs=1e-6)
    assert empty["kl_ablation"] > 0
    assert empty["ce_ablation"] == empty["ce_sae"]


def test_clean_ce_is_hugging_faces_loss(tiny_model: Path, bridge, tokens) -> None:  # type: ignore[no-untyped-def]
    import transformers

    hf = transformers.GPT2LMHeadModel.from_pretrained(tiny_model).eval()
    with torch.no_grad():
        want = hf(tokens, labels=tokens).loss.item()
    got = measured(bridge, Identity(), tokens, "blocks.0.mlp.hook_pre", key="hf")
    assert got["ce_clean"] == pytest.approx(want, abs=1e-4)


def test_the_splice_is_hugging_faces_model_with_that_activation_replaced(
    tiny_model: Path,
    bridge,
    tokens,  # type: ignore[no-untyped-def]
) -> None:
    """CE and KL equal the Hugging Face model's with its c_fc output (= mlp.hook_pre) replaced
    by a torch forward hook, position 0 kept (first=1) and replaced (first=0); the KL also by
    hand from the probabilities."""
    import transformers

    hf = transformers.GPT2LMHeadModel.from_pretrained(tiny_model).eval()
    for first in (0, 1):
        got = measured(bridge, Scaled(), tokens, "blocks.2.mlp.hook_pre", first, f"hf-{first}")

        def half(module, args, out, first=first):  # type: ignore[no-untyped-def]
            out = out.clone()
            out[:, first:] *= 0.5
            return out

        with torch.no_grad():
            clean = hf(tokens).logits.log_softmax(-1)
            handle = hf.transformer.h[2].mlp.c_fc.register_forward_hook(half)
            try:
                spliced = hf(tokens, labels=tokens)
            finally:
                handle.remove()
        lq = spliced.logits.log_softmax(-1)
        assert got["ce_sae"] == pytest.approx(spliced.loss.item(), abs=1e-5)
        p, q = clean.exp(), lq.exp()
        by_hand = (p * (p.log() - q.log())).sum(-1)[:, first:].mean().item()
        assert got["kl_sae"] == pytest.approx(by_hand, abs=1e-5)


def test_position_zero_is_kept_when_dropped_from_training(bridge, tokens) -> None:  # type: ignore[no-untyped-def]
    """With first=1 the zero ablation leaves position 0's activation, so the logits at
    position 0 are the clean ones: its KL is 0 and it is left out of the mean."""
    hook = "blocks.1.mlp.hook_pre"
    replace = splice.replacer(None, 1)
    with torch.inference_mode():
        clean = bridge(tokens).float().log_softmax(-1)
        out = bridge.run_with_hooks(tokens, fwd_hooks=[(hook, lambda a, hook: replace(a))])
        kl = splice.kl_per_token(clean, out.float().log_softmax(-1))
    assert kl[:, 0].abs().max().item() < 1e-6
    assert kl[:, 1:].mean().item() > 0


def test_scores_are_undefined_where_the_ablation_changes_nothing() -> None:
    got = splice.scores(2.0, (2.5, 0.1), (2.0, 0.0))
    assert got["ce_loss_score"] is None and got["kl_div_score"] is None
    assert got["ce_delta"] == pytest.approx(0.5)
    assert splice.scores(2.0, (2.5, 0.1), (4.0, 0.4))["ce_loss_score"] == pytest.approx(0.75)


def test_a_run_reports_them_on_held_out_windows_and_resumes_by_layer(
    tmp_path: Path, tiny_model: Path, article_server
) -> None:  # type: ignore[no-untyped-def]
    import csv

    from conftest import quick_config

    from flows.laminar import laminar

    cfg = quick_config(tiny_model, article_server, tmp_path, eval_seqs=2)
    first = laminar(cfg)
    splices = [n for n in first["tasks"] if n.startswith("splice")]
    assert splices == [f"splice tiny-gpt2 L{i}" for i in range(3)]
    with open(Path(first["report"]) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        assert r["eval_tokens"] == str(2 * 32) and r["eval_in_sample"] == "false"
        assert float(r["ce_ablation"]) != float(r["ce_clean"])
        assert float(r["ce_delta"]) == pytest.approx(float(r["ce_sae"]) - float(r["ce_clean"]))
        assert float(r["kl_sae"]) >= 0 and float(r["explained_variance"]) == pytest.approx(
            1 - float(r["fvu"])
        )
    assert len({r["ce_clean"] for r in rows}) == 1  # one clean pass for the model
    report = (Path(first["report"]) / "report.md").read_text()
    assert "2 windows, held out (disjoint from the training windows)" in report

    # A run killed after two layers' splices resumes with the third alone.
    records = paths.results_dir(cfg.root)
    keys = {p.name for p in records.iterdir() if p.name.startswith("splice-")}
    assert len(keys) == 3
    (records / record_of_layer(records, keys, 2)).unlink()
    again = laminar(cfg)
    ran = sorted(n for n, s in again["tasks"].items() if s != "Cached")
    assert [n for n in ran if not n.startswith(("latents", "report"))] == ["splice tiny-gpt2 L2"]


def record_of_layer(records: Path, keys: set[str], layer: int) -> str:
    """The splice cache record (its file name) whose result is layer `layer`'s."""
    for key in keys:
        payload = json.loads((records / key).read_text())
        if json.loads(payload["result"])["layer"] == layer:
            return key
    raise AssertionError(f"no splice record of layer {layer}")


def test_the_estimate_counts_every_forward_pass() -> None:
    from tasks.progress import splice_passes

    # the clean pass, then per layer the ablated pass and one spliced pass per seed
    assert splice_passes(3, seeds=1) == 7
    assert splice_passes(12, seeds=3) == 49
