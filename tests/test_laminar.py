"""The whole flow, end to end, on a small local model and a loopback article: a first run
computes every task, a second executes none, and a failed layer is the only one recomputed."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, ArticleServer, quick_config, run_cli

from flows.laminar import LayerFailedError, laminar
from tasks.config import Config, to_args


def latest_artifacts() -> tuple[list[dict], object]:
    """The newest table and markdown artifacts under laminar's keys, read through the API."""
    import json

    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from tasks.report import REPORT_KEY, TABLE_KEY

    with get_client(sync_client=True) as client:
        found = [
            client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                sort=ArtifactSort.CREATED_DESC,
                limit=1,
            )[0]
            for key in (TABLE_KEY, REPORT_KEY)
        ]
    table = found[0].data if isinstance(found[0].data, list) else json.loads(found[0].data)
    return table, found[1]


def latest_text_artifact() -> object:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from tasks.scrape import TEXT_KEY

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[TEXT_KEY])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )[0]


def read_metrics(report_dir: str) -> list[dict[str, str]]:
    with open(Path(report_dir) / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_first_run_computes_and_rerun_executes_nothing(
    tmp_path: Path, tiny_model: Path, article_server: ArticleServer
) -> None:
    cfg = quick_config(tiny_model, article_server, tmp_path)
    first = laminar(cfg)
    names = [
        "fetch",
        "parse text",
        "tokenize",
        "extract tiny-gpt2",
        "sae tiny-gpt2 L0",
        "sae tiny-gpt2 L1",
        "sae tiny-gpt2 L2",
        "report",
    ]
    assert [n.split(" /")[0].split(" http")[0] for n in first["tasks"]] == names
    assert set(first["tasks"].values()) == {"Completed"}
    rows = read_metrics(first["report"])
    assert [(r["model"], int(r["layer"]), float(r["rel_depth"])) for r in rows] == [
        ("tiny-gpt2", 0, 0.0),
        ("tiny-gpt2", 1, 0.5),
        ("tiny-gpt2", 2, 1.0),
    ]
    for r in rows:
        assert 0 < float(r["density_pct"]) <= 100 * (512 // 3) / 512 + 1e-9
        assert float(r["final_loss"]) > float(r["final_mse"]) > 0
        assert r["n_tokens"] == str(4 * 31) and r["d"] == "256" and r["latent"] == "512"
    files = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.parquet")}
    table, report = latest_artifacts()
    assert [row["layer"] for row in table] == ["0", "1", "2"]
    assert first["report"] in report.description and "# laminar profile" in report.data
    text = latest_text_artifact()  # what was fed to the model, shown on the flow run
    [saved] = (tmp_path / "pages").glob("*.text.txt")
    lines = saved.read_text().splitlines()
    assert f"- article: {cfg.url} (revision 1234567" in text.data
    assert f"{len(saved.read_text())} characters in {len(lines)} lines" in text.data
    assert "\n".join(["```text", *lines[:60], "```"]) in text.data

    second = laminar(cfg)
    assert set(second["tasks"].values()) == {"Cached"}, second["tasks"]
    assert second["tasks"].keys() == first["tasks"].keys()
    assert read_metrics(second["report"]) == rows
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.parquet")} == files
    for f in ["report.md", "laminar.png", "metrics.parquet", "loss_curves.parquet"]:
        assert (Path(second["report"]) / f).stat().st_size > 0

    # Another --epochs retrains the SAEs and reuses the article, tokens and activations.
    third = laminar(cfg.model_copy(update={"epochs": 4}))
    executed = sorted(n for n, s in third["tasks"].items() if s != "Cached")
    assert executed == ["report", "sae tiny-gpt2 L0", "sae tiny-gpt2 L1", "sae tiny-gpt2 L2"]
    assert {
        p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.parquet") if "reports" not in p.parts
    } == {p: t for p, t in files.items() if "reports" not in p.parts}


def test_failed_layer_is_reported_and_alone_recomputed(
    tmp_path: Path, tiny_model: Path, article_server: ArticleServer
) -> None:
    laminar(quick_config(tiny_model, article_server, tmp_path, layers="0"))
    [l0_json] = (tmp_path / "sae").rglob("L00/*.json")
    blocker = l0_json.parent.parent / "L02"
    blocker.write_text("a file where layer 2's output folder belongs")  # a real disk fault

    cfg = quick_config(tiny_model, article_server, tmp_path)
    with pytest.raises(LayerFailedError, match="sae tiny-gpt2 L2") as err:
        laminar(cfg)
    assert "Rerun the same command" in str(err.value)
    [report] = [p for p in (tmp_path / "reports").iterdir() if p.name == cfg.digest()[:12]]
    assert [r["layer"] for r in read_metrics(str(report))] == ["0", "1"]
    assert "sae tiny-gpt2 L2" in (report / "report.md").read_text()

    blocker.unlink()
    rerun = laminar(cfg)
    executed = sorted(n for n, s in rerun["tasks"].items() if s != "Cached")
    assert executed == ["report", "sae tiny-gpt2 L2"], rerun["tasks"]
    assert [r["layer"] for r in read_metrics(rerun["report"])] == ["0", "1", "2"]


def test_cli_runs_and_rejects_bad_input_in_one_sentence(
    tmp_path: Path, tiny_model: Path, article_server: ArticleServer
) -> None:
    common = to_args(
        quick_config(tiny_model, article_server, tmp_path, n_seqs=2, seq_len=16, epochs=2)
    )
    ok = run_cli(*common, "--layers", "1", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "report: " in ok.stdout and "sae tiny-gpt2 L1" in ok.stdout + ok.stderr

    bad = run_cli(*common, "--layers", "7", cwd=tmp_path)
    assert bad.returncode == 2
    said = [line for line in bad.stderr.splitlines() if line.startswith("laminar: ")]
    assert said == [
        "laminar: --layers '7' asks for layer 7 but the model has 3 layers (0-2): pick layers "
        "in that range or use 'all'."
    ]
    assert "Traceback" not in bad.stderr


def test_cli_help_lists_every_option() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "flows" / "laminar.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0
    for name in Config.model_fields:
        assert "--" + name.replace("_", "-") in out.stdout


BAD_INPUT = [
    (["--models", "not a model!!"], "neither a local folder nor a valid hub id"),
    (["--models", "gpt2"], "the Hugging Face hub cannot be reached"),
    (["--models", "{empty}"], "is a local path without config.json, so not a model folder"),
    (["--layers", "3-1"], "--layers range '3-1' runs backwards"),
    (["--layers", "40"], "--layers '40' asks for layer 40 but the model has 3 layers"),
    (["--layers", "x"], "--layers 'x' is malformed"),
    (["--hook", "mlp.nope"], "--hook 'mlp.nope' is not a hook of this model's blocks: use one of"),
    (["--n-seqs", "1000"], "needs 32000: lower --n-seqs or --seq-len"),
    (["--epochs", "0"], "--epochs 0 is invalid: input should be greater than 0."),
    (["--lr", "0"], "--lr 0 is invalid: input should be greater than 0."),
    (["--seq-len", "-5"], "--seq-len -5 is invalid: input should be greater than 1."),
    (["--expansion", "0"], "--expansion 0 is invalid"),
    (["--topk-frac", "2"], "--topk-frac 2 is invalid: input should be less than or equal to 1."),
    (["--device", "cuda"], "--device cuda was asked for but torch sees no CUDA GPU"),
    (["--artifacts-dir", "{file}/sub"], "is not writable (Not a directory)"),
    (["--url", "{url}/missing"], "answered HTTP 404: check the article's address."),
    (
        ["--url", "{url}/no-body"],
        "has no mw-body-content element, so it is not a Wikipedia article",
    ),
]


@pytest.mark.parametrize(("args", "words"), BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_sentence_and_exit_2(
    args: list[str],
    words: str,
    tmp_path: Path,
    tiny_model: Path,
    article_server: ArticleServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import torch

    from flows.laminar import main

    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("")
    article_server.routes["/no-body"] = (200, b"<html><body><p>Not an article</p></body></html>")
    fill = {
        "{empty}": str(tmp_path / "empty"),
        "{file}": str(tmp_path / "file"),
        "{url}": article_server.url(""),
    }
    for k, v in fill.items():
        args = [a.replace(k, v) for a in args]
    base = quick_config(tiny_model, article_server, tmp_path / "art", n_seqs=2, epochs=2)
    assert main([*to_args(base), *args]) == 2  # the later flag wins
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("laminar: ")]
    assert len(said) == 1 and words in said[0], said
    assert said[0].endswith(".")


def test_sae_seeds_are_cached_task_runs_reported_as_mean_and_sd(
    tmp_path: Path, tiny_model: Path, article_server: ArticleServer
) -> None:
    cfg = quick_config(tiny_model, article_server, tmp_path, layers="1", sae_seeds=[0, 1])
    first = laminar(cfg)
    assert {"sae tiny-gpt2 L1 s0", "sae tiny-gpt2 L1 s1"} <= first["tasks"].keys()
    [row] = read_metrics(first["report"])
    assert row["n_seeds"] == "2" and float(row["density_pct_sd"]) >= 0
    assert float(row["final_loss_sd"]) > 0  # two initialisations, two different losses
    with open(Path(first["report"]) / "metrics_by_seed.csv") as f:
        by_seed = list(csv.DictReader(f))
    losses = [float(r["final_loss"]) for r in by_seed]
    assert [r["sae_seed"] for r in by_seed] == ["0", "1"]
    assert float(row["final_loss"]) == pytest.approx(sum(losses) / 2)

    more = laminar(cfg.model_copy(update={"sae_seeds": [0, 1, 2]}))
    executed = sorted(n for n, s in more["tasks"].items() if s != "Cached")
    assert executed == ["report", "sae tiny-gpt2 L1 s2"]  # seeds 0 and 1 reused
