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


def legacy_family(
    root: Path, layers: range, d: int = 64, at: str = "hook_resid_pre", **cfg: object
) -> Path:
    """Standard SAEs in the older cfg.json layout (top-level hook_name and hook_layer)."""
    for layer in layers:
        hook = {"hook_name": f"blocks.{layer}.{at}", "hook_layer": layer}
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
    assert (
        "position 0 dropped (laminar's default), so these numbers differ from SAELens's" in report
    )
    assert "--keep-first-token matches them" in report
    assert "hook `hook_resid_pre`" in report


def bad_families(root: Path) -> dict[str, tuple[list[str], str]]:
    """name: (extra CLI flags, the sentence's telling part)."""
    (root / "empty").mkdir(parents=True)
    legacy_family(root / "gated", range(3), architecture="gated")
    legacy_family(root / "wide", range(3), d=80)
    legacy_family(root / "short", range(2))
    legacy_family(root / "per-head", range(3), at="attn.hook_z")  # (batch, pos, head, d_head)
    legacy_family(root / "mlp-in", range(3), at="hook_mlp_in")  # the bridge leaves it off
    return {
        "no SAE in it": (["--saes", str(root / "empty")], "holds no SAE (no cfg.json"),
        "unknown architecture": (["--saes", str(root / "gated")], "is a 'gated' SAE"),
        "d_in not the hook's": (["--saes", str(root / "wide")], "reads d_in 80 but"),
        "a layer missing": (["--saes", str(root / "short")], "has no SAE for layer(s) 2 of"),
        "a hook per attention head": (
            ["--saes", str(root / "per-head")],
            "reads attn.hook_z, which is not one vector per token (it is per attention head",
        ),
        "a hook the bridge leaves off": (
            ["--saes", str(root / "mlp-in")],
            "reads hook_mlp_in, which is a hook TransformerLens's bridge leaves off, and laminar "
            "does not switch it on: set hook_name in each cfg.json to "
            "blocks.<layer>.ln2.hook_in, the same values.",
        ),
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


def test_a_family_renamed_as_the_mlp_in_sentence_says_passes_preflight(
    tmp_path: Path, tiny_model: Path, article_server: ArticleServer
) -> None:
    """The fix the hook_mlp_in sentence gives works: the family at ln2.hook_in is read at it."""
    from tasks.preflight import preflight

    family = legacy_family(tmp_path / "family", range(3), at="ln2.hook_in")
    cfg = quick_config(tiny_model, article_server, tmp_path / "art", saes=str(family))
    checked = preflight(cfg)
    assert checked.cfg.hook == "ln2.hook_in" and sorted(checked.family) == [0, 1, 2]


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


def broken(root: Path, name: str, how: str) -> Path:
    """A three-layer standard family whose layer-1 SAE is broken `how`."""
    import os

    from safetensors.torch import load_file, save_file

    family = legacy_family(root / name, range(3))
    sae, cfg = family / "L1", json.loads((family / "L1" / "cfg.json").read_text())
    weights = sae / "sae_weights.safetensors"
    state = {k: v.clone() for k, v in load_file(weights).items()}  # not the mmap it overwrites

    def cfg_is(value: object) -> None:
        (sae / "cfg.json").write_text(json.dumps(value))

    def weights_are(**tensors: torch.Tensor | None) -> None:
        new = {**state, **tensors}
        save_file({k: v for k, v in new.items() if v is not None}, weights)

    if how == "list":
        cfg_is([1, 2, 3])
    elif how.startswith("cfg:"):  # cfg:key=json value ("-" drops the key)
        key, _, value = how[4:].partition("=")
        cfg_is(
            {k: v for k, v in cfg.items() if k != key}
            | ({} if value == "-" else {key: json.loads(value)})
        )
    elif how == "W_enc shape":
        weights_are(W_enc=torch.zeros(64, 100))
    elif how == "no b_enc":
        weights_are(b_enc=None)
    elif how.startswith("topk k="):
        cfg_is({**cfg, "architecture": "topk", "k": int(how.split("=")[1])})
    elif how == "jumprelu, no threshold":
        cfg_is({**cfg, "architecture": "jumprelu"})
    elif how == "threshold (1,)":
        cfg_is({**cfg, "architecture": "jumprelu"})
        weights_are(threshold=torch.zeros(1))
    elif how == "pickle":
        torch.save(state, weights)  # a pickle under the safetensors name
    elif how == "int8":
        weights_are(W_enc=state["W_enc"].to(torch.int8))
    elif how in ("nan", "inf"):
        bad = state["W_dec"].clone()
        bad[3, 5] = float(how)
        weights_are(W_dec=bad)
    elif how == "1 GB cfg":
        with open(sae / "cfg.json", "r+b") as f:
            f.truncate(1 << 30)  # sparse: no disk used
    elif how == "fifo cfg":
        (sae / "cfg.json").unlink()
        os.mkfifo(sae / "cfg.json")
    elif how.startswith("link "):  # link cfg.json|weights -> target
        which, target = how[5:].split(" -> ")
        path = sae / ("cfg.json" if which == "cfg" else "sae_weights.safetensors")
        path.unlink()
        path.symlink_to(target)
    else:
        raise AssertionError(how)
    return family


HOSTILE = [  # (how layer 1's SAE is broken, the telling part of the one sentence)
    ("list", "holds a JSON list, not an object"),
    ("cfg:d_in=-", "has d_in null: d_in must be a whole number from 1 to"),
    ('cfg:d_in="sixty-four"', 'has d_in "sixty-four": d_in must be a whole number'),
    ("cfg:d_sae=1000000000000", "has d_sae 1000000000000: d_sae must be a whole number"),
    ("cfg:hook_name=5", "has hook_name 5: hook_name must be a hook name (a string)"),
    ('cfg:metadata="x"', 'has metadata "x": metadata must be an object (or absent)'),
    ('cfg:dtype="garbage"', 'has dtype "garbage": dtype must be float32, float16'),
    ("W_enc shape", "has W_enc of shape [64, 100], but cfg.json's d_in 64 and d_sae 128"),
    ("no b_enc", "has no tensor 'b_enc': a b_enc of shape [128]"),
    ("topk k=-1", "has k -1: k must be a whole number from 1 to d_sae (128)"),
    ("topk k=0", "has k 0: k must be a whole number from 1 to d_sae (128)"),
    ("jumprelu, no threshold", "has no threshold: a jumprelu SAE needs threshold (d_sae,)"),
    ("threshold (1,)", "has threshold of shape [1], but cfg.json's d_in 64 and d_sae 128"),
    ("pickle", "is not a safetensors file: give SAELens's weights"),
    ("int8", "stores W_enc as I8: weights must be floats"),
    ("nan", "has 1 values of W_dec that are NaN or infinite"),
    ("inf", "has 1 values of W_dec that are NaN or infinite"),
    ("1 GB cfg", "is 1,073,741,824 bytes, over the 1,048,576 a cfg.json may be"),
    ("fifo cfg", "is not a regular file: replace it with the SAE's file"),
    ("link cfg -> /etc/passwd", "leads outside the folder --saes names"),
    ("link weights -> /dev/zero", "leads outside the folder --saes names"),
]


@pytest.mark.slow  # 23 fresh CLI processes, three at a time
def test_hostile_sae_folders_are_refused_up_front_in_one_sentence(
    tmp_path: Path, tiny_model: Path, article_server: ArticleServer
) -> None:
    """Every hostile --saes is one sentence and exit 2 from preflight: nothing fetched,
    nothing extracted, nothing read past a bound, no link followed out of the family."""
    from concurrent.futures import ThreadPoolExecutor

    cases = [
        (how, ["--saes", str(broken(tmp_path / "f", f"c{i}", how))], words)
        for i, (how, words) in enumerate(HOSTILE)
    ]
    cases += [
        ("repo:..", ["--saes", "owner/repo:../../../../tmp/x"], "leads outside the repo"),
        ("repo:/", ["--saes", "owner/repo:/tmp/x"], "leads outside the repo"),
    ]

    def one(case: tuple[str, list[str], str]) -> tuple[str, object, Path, str]:
        how, flags, words = case
        art = tmp_path / "art" / str(abs(hash(how)))
        args = ["--models", str(tiny_model), "--urls", article_server.url("/wiki/x")]
        args += ["--n-seqs", "4", "--seq-len", "32", "--artifacts-dir", str(art)]
        return how, run_cli(*args, *flags, cwd=tmp_path), art, words

    with ThreadPoolExecutor(max_workers=3) as pool:
        for how, result, art, words in pool.map(one, cases):
            assert result.returncode == 2, (how, result.stderr[-2000:])
            assert "Traceback" not in result.stderr, how
            lines = said(result.stderr)
            assert len(lines) == 1 and words in lines[0], (how, lines)
            assert not (art / "activations").exists() and not (art / "pages").exists(), how


def test_each_architecture_encodes_as_saelens_defines_it_by_hand() -> None:
    """standard, topk and jumprelu on a hand-made case where the threshold and k decide which
    latents fire (SAELens's own code agrees: test_interop.py)."""
    from tasks.sae.files import PUBLISHED

    eye = torch.eye(4)
    state = {"W_enc": eye, "b_enc": torch.zeros(4), "W_dec": eye, "b_dec": torch.zeros(4)}
    x = torch.tensor([[3.0, -1.0, 0.5, 2.0], [0.25, 0.5, 0.125, 0.375]])
    standard = PUBLISHED["standard"]({"architecture": "standard"}, state).encode(x)
    assert standard.tolist() == [[3.0, 0.0, 0.5, 2.0], [0.25, 0.5, 0.125, 0.375]]
    topk = PUBLISHED["topk"]({"architecture": "topk", "k": 2}, state).encode(x)
    assert topk.tolist() == [[3.0, 0.0, 0.0, 2.0], [0.0, 0.5, 0.0, 0.375]]  # the 2 largest
    threshold = torch.tensor([2.5, 0.0, 0.6, 0.4])  # fires where pre > threshold
    jump = PUBLISHED["jumprelu"]({"architecture": "jumprelu"}, {**state, "threshold": threshold})
    assert jump.encode(x).tolist() == [[3.0, 0.0, 0.0, 2.0], [0.0, 0.5, 0.0, 0.0]]
    logged_state = {**state, "log_threshold": threshold.log()}
    logged = PUBLISHED["jumprelu"]({"architecture": "jumprelu"}, logged_state)
    assert torch.equal(logged.encode(x), jump.encode(x))


def test_new_weights_under_the_same_folder_and_cfg_are_measured_again(
    tmp_path: Path, tiny_model: Path, article_server: ArticleServer
) -> None:
    """The published task's key names the SAE files' fingerprint: weights replaced in place
    (same folder, same cfg.json, same size) are measured again, never replayed."""
    import os

    family = legacy_family(tmp_path / "family", range(3))
    cfg = quick_config(tiny_model, article_server, tmp_path / "art", saes=str(family), layers="0")
    before = metrics_row(laminar(cfg))
    old = (family / "L0" / "sae_weights.safetensors").stat()
    (family / "L0").rename(tmp_path / "old-L0")
    write_sae(
        family / "L0", json.loads((tmp_path / "old-L0" / "cfg.json").read_text()), 64, 128, seed=9
    )
    new = family / "L0" / "sae_weights.safetensors"
    assert new.stat().st_size == old.st_size
    os.utime(new, ns=(old.st_atime_ns, old.st_mtime_ns + 10**9))
    second = laminar(cfg)
    assert second["tasks"]["sae tiny-gpt2 L0"] == "Completed"
    assert metrics_row(second)["fvu"] != before["fvu"]  # the same report folder, new numbers


def metrics_row(summary: dict) -> dict[str, str]:
    with open(Path(summary["report"]) / "metrics.csv") as f:
        [row] = list(csv.DictReader(f))
    return row
