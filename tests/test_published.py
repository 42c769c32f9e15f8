"""--saes: a family of SAELens-format SAEs profiled instead of fresh ones trained (SAELens's own
numbers for such families: test_interop.py), and every bad --saes refused through the CLI in
one sentence before any work."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import ArticleServer, quick_config, run_cli, said

from flows.laminar import laminar
from tasks import store


def write_sae(folder: Path, cfg: dict, d: int, m: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """One SAE on disk as SAELens writes it: cfg.json and sae_weights.safetensors."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    state = {
        "W_enc": torch.randn(d, m, generator=g) * 0.3,
        "b_enc": torch.randn(m, generator=g) * 0.1,
        "W_dec": torch.randn(m, d, generator=g) * 0.3,
        "b_dec": torch.randn(d, generator=g) * 0.1,
    }
    folder.mkdir(parents=True)
    save_file(state, folder / "sae_weights.safetensors")
    (folder / "cfg.json").write_text(json.dumps({"d_in": d, "d_sae": m, **cfg}))
    return state


def legacy_family(root: Path, layers: range, d: int = 64, **cfg: object) -> Path:
    """Standard SAEs in the older cfg.json layout (top-level hook_name and hook_layer)."""
    for layer in layers:
        hook = {"hook_name": f"blocks.{layer}.hook_resid_pre", "hook_layer": layer}
        write_sae(root / f"L{layer}", {"apply_b_dec_to_input": True, **hook, **cfg}, d, 2 * d)
    return root


def test_a_family_is_measured_at_its_own_hook(
    tmp_path: Path, tiny_model: Path, article_server: ArticleServer
) -> None:
    """The hook comes from the files (hook_resid_pre, not the default mlp.hook_pre); L0 and
    explained variance equal the standard SAE's formulas applied by hand to the activations."""
    family = legacy_family(tmp_path / "family", range(3))
    cfg = quick_config(tiny_model, article_server, tmp_path / "art", saes=str(family))
    summary = laminar(cfg)
    assert not any(n.startswith("sae tiny-gpt2") and "train" in n for n in summary["tasks"])
    with open(Path(summary["report"]) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["layer"]) for r in rows] == [0, 1, 2]
    for r in rows:
        layer = int(r["layer"])
        [acts] = (tmp_path / "art" / "activations").rglob(f"hook_resid_pre/*/L0{layer}.parquet")
        x = torch.from_numpy(store.read_activations(store.file_record(acts)).copy())
        from safetensors.torch import load_file

        w = load_file(family / f"L{layer}" / "sae_weights.safetensors")
        z = torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
        x_hat = z @ w["W_dec"] + w["b_dec"]
        fvu = (x_hat - x).pow(2).mean() / (x - x.mean(0)).pow(2).mean()
        assert float(r["l0"]) == pytest.approx((z != 0).sum(1).float().mean().item(), rel=1e-6)
        assert float(r["explained_variance"]) == pytest.approx(1 - fvu.item(), rel=1e-5)
        assert r["d"] == "64" and r["latent"] == "128"
    report = (Path(summary["report"]) / "report.md").read_text()
    assert f"SAEs: published, one per layer, from `{family}`" in report
    assert "hook `hook_resid_pre`" in report


def bad_families(root: Path) -> dict[str, tuple[list[str], str]]:
    """name: (extra CLI flags, the sentence's telling part)."""
    (root / "empty").mkdir(parents=True)
    legacy_family(root / "gated", range(3), architecture="gated")
    legacy_family(root / "wide", range(3), d=80)
    legacy_family(root / "short", range(2))
    return {
        "no SAE in it": (["--saes", str(root / "empty")], "holds no SAE (no cfg.json"),
        "unknown architecture": (["--saes", str(root / "gated")], "is a 'gated' SAE"),
        "d_in not the hook's": (["--saes", str(root / "wide")], "reads d_in 80 but"),
        "a layer missing": (["--saes", str(root / "short")], "has no SAE for layer(s) 2 of"),
        "hub repo not reachable": (
            ["--saes", "someone/saes-never-downloaded:blocks.0"],
            "the hub cannot be reached and its SAEs are not in the local cache",
        ),
        "two models": (
            ["--saes", str(root / "short"), "--models", "gpt2", "gpt2-large"],
            "is one model's SAE family, but --models names 2 models",
        ),
    }


def test_bad_saes_are_one_sentence_and_nothing_is_computed(
    tmp_path: Path, tiny_model: Path, article_server: ArticleServer
) -> None:
    for name, (flags, sentence) in bad_families(tmp_path / "families").items():
        art = tmp_path / name.replace(" ", "-")
        args = ["--models", str(tiny_model), "--urls", article_server.url("/wiki/x")]
        args += ["--n-seqs", "4", "--seq-len", "32"]
        result = run_cli(*args, "--artifacts-dir", str(art), *flags, cwd=tmp_path)
        assert result.returncode == 2, (name, result.stderr[-2000:])
        assert "Traceback" not in result.stderr, name
        lines = said(result.stderr)
        assert len(lines) == 1 and sentence in lines[0], (name, lines)
        assert not (art / "activations").exists() and not (art / "pages").exists(), name


def test_a_hub_family_runs_from_a_warm_cache_with_the_hub_down(
    tmp_path: Path, tiny_model: Path, article_server: ArticleServer
) -> None:
    """--saes org/name:subfolder, the repo in the Hugging Face cache in the hub's layout, the
    hub resetting every connection: the family loads from the cache, the hub asked once."""
    from test_offline import DeadHub, hub_cache

    repo = tmp_path / "repo"
    legacy_family(repo / "res", range(3))
    hf = tmp_path / "hf"
    hub_cache(hf, "laminar-test/tiny-saes", repo)
    hub = DeadHub()
    env = {"HF_HOME": str(hf), "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": None}
    cfg = quick_config(tiny_model, article_server, tmp_path / "art", eval_seqs=1)
    from tasks.cli import to_args

    args = [*to_args(cfg), "--saes", "laminar-test/tiny-saes:res"]
    try:
        out = run_cli(*args, cwd=tmp_path, env=env, timeout=240)
    finally:
        hub.close()
    assert out.returncode == 0, out.stderr[-3000:]
    assert hub.connections == 1  # the probe alone
    [report] = [line.split("report: ")[1] for line in out.stdout.splitlines() if "report: " in line]
    with open(Path(report).parent / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["layer"] for r in rows] == ["0", "1", "2"] and all(r["ce_sae"] for r in rows)
