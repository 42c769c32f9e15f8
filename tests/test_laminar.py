"""The whole flow, end to end, on a small local model and a loopback article: a first run
computes every task, a second executes none, and a failed layer is the only one recomputed."""

from __future__ import annotations

import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    ARTICLE,
    ROOT,
    SECOND_ARTICLE,
    ArticleServer,
    make_family_model,
    quick_config,
    run_cli,
    said,
)

from flows.laminar import laminar
from tasks.cli import to_args
from tasks.config import Config
from tasks.settings import LaminarError


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
        "parse",
        "tokenize",
        "extract tiny-gpt2",
        "sae tiny-gpt2 L0",
        "sae tiny-gpt2 L1",
        "sae tiny-gpt2 L2",
        "latents tiny-gpt2",
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
    saes = sorted((tmp_path / "sae").rglob("cfg.json"))  # every SAE kept, in SAELens's format
    assert [json.loads(p.read_text())["laminar"]["layer"] for p in saes] == [0, 1, 2]
    out = Path(first["report"])  # the latent cards, beside the report and linked from it
    cards = json.loads((out / "tiny-gpt2-latents.json").read_text())
    assert list(cards) == ["0", "1", "2"] and all(len(c) == 24 for c in cards.values())
    assert "[tiny-gpt2-latents.html](tiny-gpt2-latents.html)" in (out / "report.md").read_text()
    files = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.parquet")}
    table, report = latest_artifacts()
    assert [row["layer"] for row in table] == ["0", "1", "2"]
    assert first["report"] in report.description and "# laminar profile" in report.data
    text = latest_text_artifact()  # what was fed to the model, shown on the flow run
    [saved] = (tmp_path / "pages").glob("*.text.txt")
    lines = saved.read_text().splitlines()
    assert f"- article: {cfg.urls[0]} (revision 1234567" in text.data
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
    assert executed == [
        "latents tiny-gpt2",
        "report",
        "sae tiny-gpt2 L0",
        "sae tiny-gpt2 L1",
        "sae tiny-gpt2 L2",
    ]
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
    out = run_cli(*to_args(cfg), cwd=tmp_path)  # as a user meets it: exit 1, one sentence
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    [sentence] = said(out.stderr)
    assert sentence.startswith("laminar: 1 layer failed and is missing from the report in ")
    assert sentence.endswith(  # what stands where, and what to do: not Python's words
        f": sae tiny-gpt2 L2: file exists at '{blocker}' (FileExistsError): something that is not "
        "laminar's stands there: move it away. Rerun the same command to retry only those."
    ), sentence
    [report] = [p for p in (tmp_path / "reports").iterdir() if p.name == cfg.digest()[:12]]
    assert [r["layer"] for r in read_metrics(str(report))] == ["0", "1"]
    assert "sae tiny-gpt2 L2" in (report / "report.md").read_text()

    blocker.unlink()
    rerun = laminar(cfg)
    executed = sorted(n for n, s in rerun["tasks"].items() if s != "Cached")
    assert executed == ["latents tiny-gpt2", "report", "sae tiny-gpt2 L2"], rerun["tasks"]
    assert [r["layer"] for r in read_metrics(rerun["report"])] == ["0", "1", "2"]


def test_the_failure_sentence_counts_its_layers() -> None:
    """The run's closing sentence agrees with its counts: trainings and splices apart."""
    from flows.laminar import failure_sentence

    rerun = ". Rerun the same command to retry only those."
    assert failure_sentence(["sae m L2: disk full"], "r") == (
        "1 layer failed and is missing from the report in r: sae m L2: disk full" + rerun
    )
    assert failure_sentence(["splice m L1: x", "splice m L2: y"], "r") == (
        "2 layers could not be spliced into the model and have no downstream measures in r: "
        "splice m L1: x; splice m L2: y" + rerun
    )
    assert failure_sentence(["sae m L0: a", "sae m L1: b", "splice m L2: c"], "r") == (
        "2 layers failed and are missing from the report in r, and 1 layer could not be "
        "spliced into the model and has no downstream measures in r: sae m L0: a; sae m L1: b; "
        "splice m L2: c" + rerun
    )


def test_several_articles_each_a_task_one_failing_by_name(
    tmp_path: Path, tiny_model: Path, article_server: ArticleServer
) -> None:
    led, lamp = article_server.url(ARTICLE), article_server.url(SECOND_ARTICLE)
    missing = article_server.url("/wiki/No_such_article")
    with pytest.raises(LaminarError, match=f"^--urls '{missing}' answered HTTP 404"):
        laminar(quick_config(tiny_model, article_server, tmp_path, urls=[led, missing, lamp]))
    gone = article_server.url("/wiki/Gone")
    with pytest.raises(LaminarError) as two:  # each failing page named, in one sentence
        laminar(quick_config(tiny_model, article_server, tmp_path, urls=[missing, led, gone]))
    assert str(two.value) == (
        f"2 of 3 fetch runs failed: --urls '{missing}' answered HTTP 404: check the article's "
        f"address; --urls '{gone}' answered HTTP 404: check the article's address; the other "
        "is cached: fix these and rerun."
    )
    # The failing page stopped no other fetch: the page after it was fetched, and is cached.
    cfg = quick_config(tiny_model, article_server, tmp_path, urls=[led, lamp], n_seqs=12)
    run = laminar(cfg)
    assert {n: s for n, s in run["tasks"].items() if n.startswith(("fetch", "parse"))} == {
        f"fetch {led}": "Cached",
        f"fetch {lamp}": "Cached",
        f"parse {led}": "Completed",
        f"parse {lamp}": "Completed",
    }
    md = (Path(run["report"]) / "report.md").read_text()
    prov = json.loads((Path(run["report"]) / "provenance.json").read_text())
    [per_article] = [t["per_article"] for t in prov["tokens"]]
    assert [a["revision_id"] for a in prov["articles"]] == [1234567, 7654321]
    assert sum(a["windows"] for a in per_article) == 12 and min(a["windows"] for a in per_article)
    for art, n in zip(prov["articles"], per_article, strict=True):
        assert (
            f"- Article: {art['url']} (revision {art['revision_id']}, fetched "
            f"{art['fetched_at']}): {n['tokens']} tokens, {n['windows']} windows;" in md
        )
    # Every window is a run of one article's tokens (both pages carry the same infobox, so a
    # window there is found in both), and each article gave windows of its own.
    from transformers import AutoTokenizer

    from tasks.store import file_record, read_batch

    tok = AutoTokenizer.from_pretrained(tiny_model)
    streams = [tok(Path(a["text_path"]).read_text())["input_ids"] for a in prov["articles"]]
    assert [len(s) for s in streams] == [a["tokens"] for a in per_article]
    [tokens] = (tmp_path / "tokens").glob("*-12x32.parquet")  # the batch, not the streams
    found = [
        [a for a, ids in enumerate(streams) if _contains(ids, row.tolist())]
        for row in read_batch(file_record(tokens))
    ]
    assert all(found) and [0] in found and [1] in found, found


def _contains(ids: list[int], window: list[int]) -> bool:
    return any(ids[i : i + len(window)] == window for i in range(len(ids) - len(window) + 1))


def test_gpt_neox_and_llama_run_the_whole_flow_on_one_depth_axis(
    tmp_path: Path,
    tiny_model: Path,
    family_models: dict[str, Path],
    article_server: ArticleServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tasks import figures

    drawn: dict[str, list] = {}
    save = figures.save_png

    def keep_lines(fig: object, path: Path) -> None:  # what each figure plots, by file name
        drawn[path.name] = [
            [(line.get_label(), list(line.get_xdata())) for line in ax.get_lines()]
            for ax in fig.axes  # type: ignore[attr-defined]
        ]
        save(fig, path)

    monkeypatch.setattr(figures, "save_png", keep_lines)
    models = [str(tiny_model), str(family_models["neox"]), str(family_models["llama"])]
    run = laminar(quick_config(tiny_model, article_server, tmp_path, models=models, epochs=2))
    assert [n for n in run["tasks"] if n.startswith(("tokenize", "extract"))] == [
        f"tokenize {tiny_model}",  # one batch: all three read GPT-2's tokenizer
        "extract tiny-gpt2",
        "extract tiny-neox",
        "extract tiny-llama",
    ]
    rows = read_metrics(run["report"])
    assert [(r["model"], r["layer"], r["d"]) for r in rows] == [
        (name, str(layer), d)
        for name, d in (("tiny-gpt2", "256"), ("tiny-llama", "192"), ("tiny-neox", "256"))
        for layer in range(3)
    ]
    for panel in drawn["laminar.png"]:  # each panel: a line per model, relative depth 0, 0.5, 1
        assert sorted(panel) == [
            (name, [0.0, 0.5, 1.0]) for name in ("tiny-gpt2", "tiny-llama", "tiny-neox")
        ]


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


def test_the_script_refuses_a_bad_flag_before_torch_and_prefect_load() -> None:
    """`python flows/laminar.py --epochs 0`, the README's command with a typo, answers in a
    fraction of a second: the script hands over to the command before its own imports."""
    script = ROOT / "flows" / "laminar.py"
    probe = (
        "import runpy, sys\n"
        f"sys.argv = [{str(script)!r}, '--epochs', '0']\n"
        "try:\n"
        f"    runpy.run_path({str(script)!r}, run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    heavy = {'torch', 'prefect', 'transformer_lens'} & set(sys.modules)\n"
        "    print(exit.code, sorted(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["2", "[]"], out.stderr[-2000:]
    assert said(out.stderr) == ["laminar: --epochs 0 is invalid: input should be greater than 0."]


def test_preflight_refuses_before_prefect_and_the_flow_load(tmp_path: Path) -> None:
    """Input that only preflight can judge (here a --saes folder holding no SAE) is refused
    before the flow's module, Prefect and transformers load: a second or two, not ten."""
    script = ROOT / "flows" / "laminar.py"
    flags = ["--models", "gpt2", "--saes", str(tmp_path), "--artifacts-dir", str(tmp_path / "art")]
    probe = (
        "import runpy, sys\n"
        f"sys.argv = [{str(script)!r}, *{flags!r}]\n"
        "try:\n"
        f"    runpy.run_path({str(script)!r}, run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    heavy = {'prefect', 'transformers', 'transformer_lens', 'flows.laminar'}\n"
        "    print(exit.code, sorted(heavy & set(sys.modules)))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT__")}
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.stdout.split() == ["2", "[]"], out.stderr[-2000:]
    assert said(out.stderr) == [
        f"laminar: --saes '{tmp_path}' holds no SAE (no cfg.json in it or in its subfolders): "
        "point it at a folder or repo of SAELens-format SAEs, one per layer."
    ]
    assert not (tmp_path / "art" / "pages").exists()


def test_the_installed_commands(tmp_path: Path) -> None:
    """`pip install` makes `laminar` (the flow's CLI, refusing a bad flag before the flow loads),
    `laminar-compare` and `laminar-ui`; they run from any folder, and no module of the project
    puts itself on sys.path to be found."""
    bin_dir = Path(sys.executable).parent
    out = subprocess.run(
        [bin_dir / "laminar", "--help"], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0 and out.stdout.startswith("usage: laminar ")
    assert all("--" + name.replace("_", "-") in out.stdout for name in Config.model_fields)
    bad = subprocess.run([bin_dir / "laminar", "--epochs", "0"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert said(bad.stderr) == ["laminar: --epochs 0 is invalid: input should be greater than 0."]
    for command in ("laminar-compare", "laminar-ui"):
        assert (bin_dir / command).is_file(), command
    compare = subprocess.run([bin_dir / "laminar-compare", "--help"], capture_output=True)
    assert compare.returncode == 0 and compare.stdout.startswith(b"usage: laminar-compare ")
    sources = [*ROOT.glob("tasks/*.py"), *ROOT.glob("flows/*.py"), *ROOT.glob("benchmarks/*.py")]
    assert not [p.name for p in sources if "sys.path.insert(0, str(ROOT))" in p.read_text()]
    assert not [p.name for p in sources if ".parent.parent))" in p.read_text()]


# (arguments, words of the one sentence, checked before Prefect starts)
BAD_INPUT = [
    (["--models", "not a model!!"], "neither a local folder nor a valid hub id", True),
    (["--models", "gpt2"], "the Hugging Face hub cannot be reached", True),
    (["--models", "{empty}"], "is a local path without config.json, so not a model folder", True),
    (["--layers", "3-1"], "--layers range '3-1' runs backwards", True),
    (["--layers", "40"], "--layers '40' asks for layer 40 but the model has 3 layers", True),
    (["--layers", "x"], "--layers 'x' is malformed", True),
    (["--hook", "mlp.nope"], "--hook 'mlp.nope' is not a hook of this model's blocks: use", False),
    # an empty hook, or a block's full hook name, reached extraction and its list of 50 hooks
    (["--hook", ""], "--hook is empty: give the hook inside each block to read, e.g.", True),
    (
        ["--hook", "blocks.1.mlp.hook_post"],
        "--hook blocks.1.mlp.hook_post names a block: give the hook inside each block, such as "
        "mlp.hook_post, and pick the blocks with --layers.",
        True,
    ),
    (["--n-seqs", "1000"], "needs 32000: lower --n-seqs or --seq-len", False),
    (["--epochs", "0"], "--epochs 0 is invalid: input should be greater than 0.", True),
    (["--lr", "0"], "--lr 0 is invalid: input should be greater than 0.", True),
    (["--seq-len", "-5"], "--seq-len -5 is invalid: input should be greater than 1.", True),
    (["--expansion", "0"], "--expansion 0 is invalid", True),
    (
        ["--topk-frac", "2"],
        "--topk-frac 2 is invalid: input should be less than or equal to 1.",
        True,
    ),
    (["--device", "cuda"], "--device cuda was asked for but torch sees no CUDA GPU", True),
    (  # the device is checked before any model is read: said first, and at once
        ["--device", "cuda", "--models", "{empty}"],
        "--device cuda was asked for but torch sees no CUDA GPU",
        True,
    ),
    (["--artifacts-dir", "{file}/sub"], "is not writable (Not a directory)", True),
    (  # a TLS scheduler's missing certificate was found once Prefect's server had started
        [
            "--task-runner",
            "dask",
            "--dask-address",
            "tls://127.0.0.1:9",
            "--dask-tls-ca",
            "{empty}/ca.pem",
        ],
        "ca.pem' is not a readable file: give the PEM file's path.",
        True,
    ),
    # empty (an unset shell variable, a cleared form field): it ran in the working directory
    (["--artifacts-dir", ""], "--artifacts-dir is empty: give the folder every output", True),
    (["--urls", "{url}/missing"], "answered HTTP 404: check the article's address.", False),
    (["--urls", "nope"], "--urls 'nope' is not a web address: give http(s)://", True),
    (["--batch-tokens", "-1"], "--batch-tokens -1 is invalid: input should be greater than", True),
    (
        ["--urls", "{url}/no-body"],
        "has no mw-body-content element, so it is not a Wikipedia",
        False,
    ),
    # bounded before anything is made of them (a huge range was expanded, inf overflowed)
    (["--layers", "0-99999999999"], "asks for layer 99999999999: no model has more", True),
    (["--fetch-timeout", "inf"], "--fetch-timeout inf is invalid: input should be a finite", True),
    (["--max-page-mb", "inf"], "--max-page-mb inf is invalid: input should be a finite", True),
    (["--lr", "inf"], "--lr inf is invalid: input should be a finite number.", True),
    (["--l1", "nan"], "--l1 nan is invalid: input should be a finite number.", True),
    (["--epochs", "10000000"], "--epochs 10000000 is invalid: input should be less than", True),
    (["--expansion", "100"], "--expansion 100 is invalid: input should be less than", True),
    (["--dask-workers", "1000"], "--dask-workers 1000 is invalid: input should be less", True),
    (["--models", "{empty}", "{empty}"], "' twice: name each model once.", True),
    (["--sae-seeds", "0", "0"], "--sae-seeds lists '0' twice: name each seed once.", True),
    (["--hook", "attn.hook_z"], "--hook attn.hook_z is not one vector per token (it is", True),
    (["--hook", "hook_mlp_in"], "--hook hook_mlp_in is a hook TransformerLens's bridge", True),
    # NumPy's shuffle takes no negative seed, the report's seed column no more than 2**63 - 1
    (["--sae-seeds", "0", "-1"], "--sae-seeds -1 is invalid: input should be greater", True),
    (
        ["--sae-seeds", "9223372036854775808"],
        "--sae-seeds 9223372036854775808 is invalid: input should be less than or equal to "
        "9223372036854775807.",
        True,
    ),
    (
        ["--sae-arch", "topk", "--k", "5000"],
        "--k 5000 is more than the 512 latents of tiny-gpt2's SAEs (its width 256 at --hook",
        True,
    ),
    (
        ["--sae-arch", "standard", "--precision", "bf16"],
        "--precision bf16 is the course SAE's hand-written step; --sae-arch standard trains",
        True,
    ),
    (["--seq-len", "5000"], "--seq-len 5000 is longer than tiny-gpt2's context of", True),
    (["--models", "{biogpt}"], "is a BioGptForCausalLM model, an architecture Transformer", True),
    (  # several failing articles: one sentence naming each
        ["--urls", "{url}/missing", "{url}/gone"],
        "answered HTTP 404: check the article's address; --urls '",
        False,
    ),
    (["--models", "{empty}", "{twin}"], "share the name 'empty' that laminar's reports", True),
    # transformers 5 builds an empty tokenizer from config.json alone: every article was 0 tokens
    (["--models", "{notok}"], "holds no tokenizer (tokenizer.json, vocab.json, vocab.txt,", True),
    (  # a config field of the wrong type was huggingface_hub's traceback, exit 1
        ["--models", "{badtype}"],
        "its config.json has a value of the wrong type (TypeError: Field 'n_layer' expected int, "
        "got str (value: '3')): fix it",
        True,
    ),
    (  # 10,000 x 128 x 50,257 fp32 clean log-probs: 257 GB, more than any test machine has
        ["--eval-seqs", "10000", "--seq-len", "128"],
        "would hold 257 GB of tiny-gpt2's next-token log-probs (vocabulary 50,257) on cpu, which",
        True,
    ),
]
CASE_IDS = [" ".join(a) for a, _, _ in BAD_INPUT]


@pytest.fixture(scope="module")
def bad_input_runs(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model: Path,
    article_server: ArticleServer,
    tokenizer_dir: Path,
) -> dict[str, tuple[subprocess.CompletedProcess[str], Path]]:
    """Every bad-input case through the real CLI, three at a time (each is a fresh Python
    process, most of whose time is imports). Its own artifacts dir, Prefect home and an empty
    Hugging Face cache whose hub never answers, so no case depends on what this machine has
    downloaded."""
    from concurrent.futures import ThreadPoolExecutor

    article_server.routes["/no-body"] = (200, b"<html><body><p>Not an article</p></body></html>")
    biogpt = make_family_model(
        tmp_path_factory.mktemp("bio") / "tiny-biogpt", tokenizer_dir, "biogpt"
    )
    notok, badtype = tmp_path_factory.mktemp("notok"), tmp_path_factory.mktemp("badtype")
    shutil.copytree(tiny_model, badtype, dirs_exist_ok=True)
    config = json.loads((tiny_model / "config.json").read_text())
    (badtype / "config.json").write_text(json.dumps({**config, "n_layer": "3"}))
    for name in ("config.json", "model.safetensors"):  # the model without its tokenizer
        shutil.copy(tiny_model / name, notok / name)

    def one(i: int, args: list[str], early: bool) -> tuple[subprocess.CompletedProcess[str], Path]:
        tmp = tmp_path_factory.mktemp(f"bad{i}")
        (tmp / "empty").mkdir()
        (tmp / "file").write_text("")
        (tmp / "twin" / "empty").mkdir(parents=True)  # another folder of the same name
        fill = {
            "{empty}": tmp / "empty",
            "{twin}": tmp / "twin" / "empty",
            "{biogpt}": biogpt,
            "{notok}": notok,
            "{badtype}": badtype,
            "{file}": tmp / "file",
            "{url}": article_server.url(""),
        }
        for k, v in fill.items():
            args = [a.replace(k, str(v)) for a in args]
        base = quick_config(tiny_model, article_server, tmp / "art", n_seqs=2, epochs=2)
        env = {
            "PREFECT_HOME": str(tmp / "home"),
            "HF_HOME": str(tmp / "hf"),
            "HF_ENDPOINT": "http://127.0.0.1:9",  # nothing listens there
            "HF_HUB_OFFLINE": None,
        }
        if early:  # no server given: one that started would say so on stderr
            env["PREFECT_API_URL"] = None
        return run_cli(*to_args(base), *args, cwd=tmp, env=env), tmp / "art"  # last flag wins

    with ThreadPoolExecutor(max_workers=3) as pool:
        args, early = [a for a, _, _ in BAD_INPUT], [e for _, _, e in BAD_INPUT]
        runs = pool.map(one, range(len(BAD_INPUT)), args, early)
        return dict(zip(CASE_IDS, runs, strict=True))


@pytest.mark.slow  # 47 fresh CLI processes, three at a time
@pytest.mark.parametrize(("args", "words", "early"), BAD_INPUT, ids=CASE_IDS)
def test_bad_input_is_one_sentence_and_exit_2(
    args: list[str],
    words: str,
    early: bool,
    bad_input_runs: dict[str, tuple[subprocess.CompletedProcess[str], Path]],
) -> None:
    import torch

    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    out, art = bad_input_runs[" ".join(args)]
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    [sentence] = said(out.stderr)
    assert words in sentence and sentence.endswith("."), sentence
    if early:  # refused before Prefect started: nothing fetched, no cache or results made
        assert not (art / "pages").exists() and not (art / ".cache").exists()
        assert "Starting temporary server" not in out.stderr


def test_several_bad_values_are_each_one_sentence(tmp_path: Path) -> None:
    """A command line with four bad values names all four, a line each, and exits 2 before
    anything starts."""
    out = run_cli("--epochs", "0", "--lr", "inf", "--urls", "nope", "--seq-len", "", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert said(out.stderr) == [
        "laminar: --urls 'nope' is not a web address: give http(s)://… addresses of Wikipedia "
        "articles.",
        "laminar: --seq-len '' is invalid: input should be a valid integer, unable to parse "
        "string as an integer.",  # an empty value shown as the shell writes it, not as nothing
        "laminar: --epochs 0 is invalid: input should be greater than 0.",
        "laminar: --lr inf is invalid: input should be a finite number.",
    ]


def test_the_largest_sae_seed_trains_in_minibatches_and_is_reported(
    tmp_path: Path, tiny_model: Path, article_server: ArticleServer
) -> None:
    """2**63 - 1 seeds torch's generator and NumPy's shuffle, and fits the seed column."""
    from tasks.config_input import SAE_SEED_MAX

    cfg = quick_config(
        tiny_model, article_server, tmp_path, layers="1", sae_seeds=[SAE_SEED_MAX], batch_tokens=48
    )
    summary = laminar(cfg)
    assert summary["tasks"]["sae tiny-gpt2 L1"] == "Completed"
    with open(Path(summary["report"]) / "metrics_by_seed.csv") as f:
        [row] = list(csv.DictReader(f))
    assert row["sae_seed"] == str(2**63 - 1) and float(row["final_loss"]) > 0


def test_sae_seeds_are_cached_task_runs_reported_as_mean_and_sd(
    tmp_path: Path, tiny_model: Path, article_server: ArticleServer
) -> None:
    cfg = quick_config(tiny_model, article_server, tmp_path, layers="1", sae_seeds=[0, 1])
    first = laminar(cfg)
    assert {"sae tiny-gpt2 L1 s0", "sae tiny-gpt2 L1 s1"} <= first["tasks"].keys()
    [row] = read_metrics(first["report"])
    assert row["n_seeds"] == "2"
    assert float(row["final_loss_sd"]) > 0  # two initialisations, two different losses
    with open(Path(first["report"]) / "metrics_by_seed.csv") as f:
        by_seed = list(csv.DictReader(f))
    assert [r["sae_seed"] for r in by_seed] == ["0", "1"]
    for col in ("final_loss", "density_pct"):  # mean and sample sd over the two seeds
        vals = [float(r[col]) for r in by_seed]
        assert float(row[col]) == pytest.approx(statistics.fmean(vals))
        assert float(row[f"{col}_sd"]) == pytest.approx(statistics.stdev(vals))
    # Cross-seed stability: the values a fresh computation from the two saved SAEs gives
    assert first["tasks"]["stability tiny-gpt2 L1"] == "Completed"
    want = stability_from_files(tmp_path, layer=1, seeds=(0, 1))
    assert float(row["stability_shared"]) == pytest.approx(want["shared"], abs=1e-12)
    assert float(row["stability_mmcs"]) == pytest.approx(want["mmcs"], rel=1e-9)
    assert (
        "## Do fresh SAEs find the same latents?"
        in (Path(first["report"]) / "report.md").read_text()
    )

    more = laminar(cfg.model_copy(update={"sae_seeds": [0, 1, 2]}))
    executed = sorted(n for n, s in more["tasks"].items() if s != "Cached")
    assert executed == ["report", "sae tiny-gpt2 L1 s2"]  # seeds 0 and 1 reused


def stability_from_files(root: Path, layer: int, seeds: tuple[int, int]) -> dict:
    """tasks.sae.stability of the saved SAEs of `seeds` on the layer, its live latents counted
    by encoding the layer's activation file whole."""
    import pyarrow.parquet as pq
    import torch

    from tasks.sae import files as sae_files
    from tasks.sae.stability import decoder_match

    folders = {}
    for cfg_json in root.glob(f"sae/**/L{layer:02d}/*/cfg.json"):
        folders[json.loads(cfg_json.read_text())["laminar"]["sae_seed"]] = cfg_json.parent
    a, b = (sae_files.load(folders[s]) for s in seeds)
    [acts] = root.glob(f"activations/**/L{layer:02d}.parquet")
    table = pq.read_table(acts)
    x = torch.tensor([list(v) for v in table.column("activation").to_pylist()])
    _, z = a(x)
    return decoder_match(a.weight, b.weight, (z != 0).any(dim=0))
