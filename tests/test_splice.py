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
    """One SAE's measures from a fresh Splicer (its own clean pass and ablation)."""
    with torch.inference_mode():
        splicer = splice.Splicer((key,), bridge)
        return splicer.measure(model, tokens, "sha", splice.Where(hook, first, chunk=2))


@pytest.fixture(scope="module")
def repeated() -> torch.Tensor:
    """Windows of one repeated token: the random model's tied unembedding favours the token in
    the residual stream, so zeroing that stream clearly raises CE (a defined CE score)."""
    first = torch.randint(0, 50257, (3, 1), generator=torch.Generator().manual_seed(0))
    return first.repeat(1, 20)


def test_perfect_and_empty_reconstructions(bridge, repeated) -> None:  # type: ignore[no-untyped-def]
    hook = "blocks.1.hook_resid_pre"
    perfect = measured(bridge, Identity(), repeated, hook, key="id")
    assert perfect["ce_ablation"] > perfect["ce_clean"] + 0.1  # the effect is not noise
    assert perfect["ce_loss_score"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["kl_sae"] == pytest.approx(0.0, abs=1e-6)
    assert perfect["kl_div_score"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["ce_delta"] == pytest.approx(0.0, abs=1e-6)
    empty = measured(bridge, Zero(), repeated, hook, key="zero")
    assert empty["ce_loss_score"] == pytest.approx(0.0, abs=1e-6)
    assert empty["kl_div_score"] == pytest.approx(0.0, abs=1e-6)
    assert empty["kl_ablation"] > 0
    assert empty["ce_ablation"] == empty["ce_sae"]


def test_a_score_is_undefined_where_zeroing_the_hook_lowers_ce(bridge, repeated) -> None:  # type: ignore[no-untyped-def]
    """Zeroing the random model's layer-1 MLP removes noise from the residual stream and lowers
    CE: the old ratio gave a perfect SAE a score of 1 and any other a meaningless number."""
    got = measured(bridge, Scaled(), repeated, "blocks.1.mlp.hook_pre", key="mlp")
    assert got["ce_ablation"] < got["ce_clean"]
    assert got["ce_loss_score"] is None
    assert got["ce_loss_score_undefined"].startswith("the zero ablation did not raise CE (-0.04")
    assert got["kl_div_score"] is not None and got["kl_div_score_undefined"] is None


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
            clean = hf(tokens).logits
            handle = hf.transformer.h[2].mlp.c_fc.register_forward_hook(half)
            try:
                spliced = hf(tokens, labels=tokens)
            finally:
                handle.remove()
        assert got["ce_sae"] == pytest.approx(spliced.loss.item(), abs=1e-5)
        # by hand in float64. KL here is ~3e-4, a sum of differences of log-probabilities of
        # size ~10: float32 (laminar's, as SAELens's evals) holds it to ~1e-3 relative, and the
        # 4th digit moves with the CPU's kernels (2.7e-4 on an AMD EPYC)
        lp, lq = clean.double().log_softmax(-1), spliced.logits.double().log_softmax(-1)
        by_hand = (lp.exp() * (lp - lq)).sum(-1)[:, first:].mean().item()
        assert got["kl_sae"] == pytest.approx(by_hand, rel=1e-3)


def test_kl_is_clean_to_spliced_not_the_reverse(
    tmp_path: Path, tokenizer_dir: Path, tokens: torch.Tensor
) -> None:
    """KL(clean ‖ spliced), as SAELens: on a model with large weights the clean next-token
    distribution is peaked and a zeroed residual stream gives a flat one, so the two directions
    differ by far more than the tolerance and the reverse cannot pass."""
    from conftest import make_model

    peaked = load_model(
        str(make_model(tmp_path / "peaked", tokenizer_dir, initializer_range=0.5)), "cpu"
    )
    hook = "blocks.1.hook_resid_pre"
    got = measured(peaked, Zero(), tokens, hook, 1, "kl-direction")
    with torch.inference_mode():
        clean = peaked(tokens).float().log_softmax(-1)
        replace = splice.replacer(Zero(), 1)
        out = peaked.run_with_hooks(tokens, fwd_hooks=[(hook, lambda a, hook: replace(a))])
        lq = out.float().log_softmax(-1)
    forward = (clean.exp() * (clean - lq)).sum(-1)[:, 1:].mean().item()
    reverse = (lq.exp() * (lq - clean)).sum(-1)[:, 1:].mean().item()
    assert abs(forward - reverse) > 100 * 1e-4 * forward  # 100 times the tolerance below
    assert got["kl_sae"] == pytest.approx(forward, rel=1e-4)


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


def passes(ce: list[float], kl: list[float]) -> splice.Passes:
    return splice.Passes(torch.tensor([ce]), torch.tensor([kl]))


def clean_of(ce: list[float]) -> splice.Clean:
    ce_tokens = torch.tensor([ce])
    return splice.Clean(torch.empty(0), ce_tokens, ce_tokens.mean().item())


def test_scores_by_hand_and_undefined_where_the_ablation_is_noise_or_the_wrong_way() -> None:
    clean = clean_of([2.0, 2.0, 2.0, 2.0])
    # The ablation raises CE by 2 on every token (sd 0): a clear effect. KL 0.4 on each token.
    got = splice.scores(clean, passes([2.5] * 4, [0.1] * 4), passes([4.0] * 4, [0.4] * 4))
    assert got["ce_loss_score"] == pytest.approx((4.0 - 2.5) / (4.0 - 2.0))  # 0.75
    assert got["kl_div_score"] == pytest.approx((0.4 - 0.1) / 0.4)  # 0.75
    assert got["ce_loss_score_undefined"] is None and got["kl_div_score_undefined"] is None
    assert got["ce_delta"] == pytest.approx(0.5)
    # Nothing moved: undefined, with the reason.
    same = splice.scores(clean, passes([2.5] * 4, [0.1] * 4), passes([2.0] * 4, [0.0] * 4))
    assert same["ce_loss_score"] is None and same["kl_div_score"] is None
    assert same["ce_loss_score_undefined"] == (
        "the zero ablation did not raise CE (+0): nothing to score against"
    )
    # The ablation lowered CE: the wrong way.
    lower = splice.scores(clean, passes([2.5] * 4, [0.1] * 4), passes([1.9] * 4, [0.4] * 4))
    assert lower["ce_loss_score"] is None and lower["kl_div_score"] is not None
    assert lower["ce_loss_score_undefined"].startswith("the zero ablation did not raise CE (-0.1")
    # A mean effect of 0.01 nats over per-token effects of ±1: sd 1.15, SE 0.577 (n = 4): noise.
    noisy = splice.scores(
        clean, passes([2.5] * 4, [0.1] * 4), passes([3.01, 1.01, 3.01, 1.01], [0.4] * 4)
    )
    assert noisy["ce_loss_score"] is None
    sd = torch.tensor([1.0, -1.0, 1.0, -1.0]).std().item()
    assert noisy["ce_loss_score_undefined"] == (
        f"the zero ablation moved CE by 0.01, within its noise (2 standard errors = "
        f"{2 * sd / 2:.3g})"
    )
    assert splice.within_noise("CE", torch.tensor([1.0, 1.1, 0.9, 1.0])) is None  # 1 ± 0.04


def test_the_peak_memory_of_the_splices_is_known_beforehand() -> None:
    from tasks.costs import clean_bytes

    # GPT-2's vocabulary, 1024-token windows: 2 windows kept (0.41 GB) + one chunk's 7 buffers
    assert clean_bytes(2, 1024, 50257, 1) == 4 * 1024 * 50257 * (2 + 7)
    assert clean_bytes(2, 1024, 50257, 8) == 4 * 1024 * 50257 * (2 + 14)  # chunk ≤ E


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
        assert r["eval_tokens"] == str(2 * 32)
        assert (r["eval_held_out"], r["eval_in_sample"]) == ("2", "0")
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


def test_more_eval_windows_than_fit_are_counted_everywhere_a_reader_looks(
    tmp_path: Path, tiny_model: Path, article_server
) -> None:  # type: ignore[no-untyped-def]
    """--eval-seqs past the room the article leaves: as many held-out windows as fit, the rest
    in-sample, and the estimate line, the report and provenance.json say how many and where."""
    from conftest import quick_config

    from flows.laminar import laminar

    cfg = quick_config(tiny_model, article_server, tmp_path, eval_seqs=1, layers="0")
    laminar(cfg)
    prov = json.loads(next(cfg.root.glob("reports/*/provenance.json")).read_text())
    room = prov["tokens"][0]["article_tokens"] // 32  # windows of 32 that fit in the article
    assert room > cfg.n_seqs
    more = cfg.model_copy(update={"eval_seqs": room - cfg.n_seqs + 3})
    summary = laminar(more)
    printed = estimate_artifact(summary["flow_run_id"])
    held, inside = room - cfg.n_seqs, 3
    assert (
        f"tiny-gpt2: downstream measures (SAEs spliced in) on {held + inside} × 32 tokens "
        f"({held} held out, {inside} in-sample): 3 forward passes of the model, "
    ) in printed
    report = Path(summary["report"])
    assert (
        f"{held + inside} windows, {held} held out and **{inside} in-sample**"
        in (report / "report.md").read_text()
    )
    [windows] = json.loads((report / "provenance.json").read_text())["eval_windows"]
    assert (windows["held_out"], windows["in_sample"]) == (held, inside)
    assert [w[2] for w in windows["windows"]] == [1] * held + [0] * inside


def expected_splices(cfg, first: int) -> dict[tuple[int, int], dict]:  # type: ignore[no-untyped-def]
    """(layer, seed) -> the measures of each SAE the run saved, computed here from its files and
    the run's held-out windows with a fresh Splicer spliced from `first`."""
    import numpy as np

    from tasks import store
    from tasks.sae import files

    [held] = cfg.root.glob("tokens/*-eval*.parquet")
    tokens = torch.from_numpy(store.read_batch(store.file_record(held)).astype(np.int64))
    bridge = load_model(cfg.models[0], "cpu")
    out = {}
    for metrics in cfg.root.glob("sae/**/*.json"):
        if metrics.name == "cfg.json" or not (sae_dir := metrics.with_suffix("")).is_dir():
            continue
        row = json.loads(metrics.read_text())
        where = splice.Where(f"blocks.{row['layer']}.{cfg.hook}", first, cfg.extract_batch)
        with torch.inference_mode():
            got = splice.Splicer(("fresh",), bridge).measure(
                files.load(sae_dir), tokens, "fresh", where
            )
        out[(row["layer"], row["sae_seed"])] = got
    return out


def test_two_runs_in_one_process_each_splice_their_own_way(
    tmp_path: Path, tiny_model: Path, article_server
) -> None:  # type: ignore[no-untyped-def]
    """The default run (position 0 kept out) and then a --keep-first-token run, in one process:
    each run's numbers equal a fresh computation from its own SAE files spliced from its own
    first position. Two seeds: each seed's SAE is spliced (its splice key names its files)."""
    import csv

    from conftest import quick_config

    from flows.laminar import laminar

    for first in (1, 0):
        root = tmp_path / f"first{first}"
        cfg = quick_config(
            tiny_model,
            article_server,
            root,
            eval_seqs=2,
            sae_seeds=[0, 1],
            keep_first_token=first == 0,
        )
        summary = laminar(cfg)
        spliced = {n: s for n, s in summary["tasks"].items() if n.startswith("splice")}
        assert spliced == {
            f"splice tiny-gpt2 L{i} s{s}": "Completed" for i in range(3) for s in (0, 1)
        }
        with open(Path(summary["report"]) / "metrics_by_seed.csv") as f:
            rows = {(int(r["layer"]), int(r["sae_seed"])): r for r in csv.DictReader(f)}
        want = expected_splices(cfg, first)
        assert sorted(want) == sorted(rows)
        for key, w in want.items():
            for col in ("ce_clean", "ce_sae", "ce_ablation", "kl_sae", "kl_ablation"):
                assert float(rows[key][col]) == pytest.approx(w[col], rel=1e-6, abs=1e-9), (
                    key,
                    col,
                )
        for layer in range(3):  # two seeds, two SAEs: two different splices
            assert rows[(layer, 0)]["ce_sae"] != rows[(layer, 1)]["ce_sae"]


def estimate_artifact(flow_run_id: str) -> str:
    """The run's 'laminar-estimate' markdown artifact (the lines printed before the work)."""
    from conftest import run_artifacts

    [estimate] = [a for a in run_artifacts(flow_run_id) if a.key == "laminar-estimate"]
    return str(estimate.data)


def record_of_layer(records: Path, keys: set[str], layer: int) -> str:
    """The splice cache record (its file name) whose result is layer `layer`'s."""
    for key in keys:
        payload = json.loads((records / key).read_text())
        if json.loads(payload["result"])["layer"] == layer:
            return key
    raise AssertionError(f"no splice record of layer {layer}")


def test_the_estimate_counts_every_forward_pass() -> None:
    from tasks.costs import splice_passes

    # the clean pass, then per layer the ablated pass and one spliced pass per seed
    assert splice_passes(3, seeds=1) == 7
    assert splice_passes(12, seeds=3) == 49
