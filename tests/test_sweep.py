"""The sweep (flows/sweep.py, tasks/sweep.py, `laminar-sweep`): every point a laminar subflow
sharing the cached tasks, the verdict matrix equal to each point's own claims.json, a grid
entry refused before anything starts, and a killed sweep resumed with only what is missing."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import ArticleServer, make_model, quick_config, said

from tasks.cli import to_args
from tasks.config import Config
from tasks.sweep import points


@pytest.fixture(scope="module")
def four_layers(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """Four layers: the fewest on which the claims are judged."""
    return make_model(tmp_path_factory.mktemp("m4") / "tiny4", tokenizer_dir, n_layer=4)


def test_a_two_point_sweep_extracts_once_and_its_matrix_is_each_points_claims(
    tmp_path: Path, four_layers: Path, article_server: ArticleServer
) -> None:
    from flows.sweep import Sweep, sweep
    from tasks.sweep import parse_grid

    base = quick_config(four_layers, article_server, tmp_path, epochs=2)
    (tmp_path / "grid.yaml").write_text("epochs: [2, 3]\n")
    summary = sweep(Sweep(base=base, grid=parse_grid([], str(tmp_path / "grid.yaml"))))
    first, second = summary["points"]
    assert [first["point"], second["point"]] == ["epochs=2", "epochs=3"]
    states = [p["tasks"] for p in (first, second)]
    extracts = [s for run in states for n, s in run.items() if n.startswith("extract")]
    assert extracts == ["Completed", "Cached"]  # one extraction, shared
    assert all(s == "Cached" for n, s in states[1].items() if n.startswith(("fetch", "parse")))
    assert [s for n, s in states[1].items() if n.startswith("sae ")] == ["Completed"] * 4

    folder = Path(summary["folder"])
    with (folder / "sweep.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["point"] for r in rows] == ["epochs=2", "epochs=3"]
    for row, point in zip(rows, (first, second), strict=True):
        claims = json.loads((Path(point["report"]) / "claims.json").read_text())["tiny4"]
        assert row["model"] == "tiny4" and row["epochs"] == point["point"].split("=")[1]
        assert cell(row["density_rho"]) == claims["density"]["rho"]
        assert cell(row["density_p"]) == claims["density"]["p"]
        assert cell(row["density_undefined"]) == claims["density"]["undefined"]
        assert cell(row["loss_vertex"]) == claims["loss"]["vertex"] is not None
        assert cell(row["fvu_vertex"]) == claims["fvu"]["vertex"] is not None
        for key in ("density", "loss", "fvu"):
            holds = claims[key]["holds"]
            assert row[key] == (
                "undefined" if holds is None else "holds" if holds else "does not hold"
            )
    table = pq.read_table(folder / "sweep.parquet").to_pylist()
    assert [r["loss_vertex"] for r in table] == [float(r["loss_vertex"]) for r in rows]
    md = (folder / "sweep.md").read_text()
    assert md.count("| epochs=") == 2 and ("🟢" in md or "🔴" in md)
    assert "](sweep.png)" in md and (folder / "sweep.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.cluster
def test_a_dask_sweep_runs_its_points_at_once_on_one_cluster(
    tmp_path: Path,
    four_layers: Path,
    article_server: ArticleServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--task-runner dask: one local cluster for the whole sweep (not one a point), the points'
    subflow runs overlapping in time, and still one extraction for both."""
    import distributed
    from prefect import get_client

    from flows.sweep import Sweep, sweep

    clusters: list[int] = []

    class Counted(distributed.LocalCluster):  # type: ignore[misc]
        def __init__(self, *args: object, **kwargs: object) -> None:
            clusters.append(kwargs["n_workers"])  # type: ignore[arg-type]
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(distributed, "LocalCluster", Counted)
    base = quick_config(four_layers, article_server, tmp_path, epochs=2, task_runner="dask")
    summary = sweep(Sweep(base=base, grid={"epochs": ["2", "3"]}))
    assert clusters == [2]  # one cluster of --dask-workers 2
    states = [p["tasks"] for p in summary["points"]]
    extracts = [s for run in states for n, s in run.items() if n.startswith("extract")]
    assert sorted(extracts) == ["Cached", "Completed"]  # whichever point came first extracted
    assert [len([n for n in run if n.startswith("sae ")]) for run in states] == [4, 4]
    with get_client(sync_client=True) as client:
        runs = [client.read_flow_run(p["flow_run_id"]) for p in summary["points"]]
    assert max(r.start_time for r in runs) < min(r.end_time for r in runs)  # at once
    assert all(json.loads(Path(p["report"], "claims.json").read_text()) for p in summary["points"])


def test_points_that_differ_in_dask_workers_run_each_on_its_own_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A grid over --dask-workers compares cluster sizes: its points run one after the other,
    each as given (its own local cluster, its terminal bar), never on one shared cluster sized
    by the first point. Points that agree on it share one and run at once."""
    import flows.sweep as flow

    ran: list[tuple[int, bool, str]] = []
    shared: list[int] = []

    def point(cfg: Config) -> dict:
        ran.append((cfg.dask_workers, cfg.quiet, threading.current_thread().name))
        return {}

    @contextlib.contextmanager
    def cluster(cfg: Config):  # type: ignore[no-untyped-def]
        shared.append(cfg.dask_workers)
        yield "tcp://127.0.0.1:1"

    monkeypatch.setattr(flow, "run_point", point)
    monkeypatch.setattr(flow, "shared_cluster", cluster)
    base = Config(task_runner="dask", models=["gpt2"])
    plan = points(base, {"dask_workers": ["1", "2"]})
    assert flow.run_all(plan) == [{}, {}]
    assert shared == [] and ran == [(1, False, "MainThread"), (2, False, "MainThread")]
    ran.clear()
    flow.run_all(points(base, {"epochs": ["2", "3"]}))
    assert shared == [2] and sorted(r[:2] for r in ran) == [(2, True), (2, True)]
    assert all(r[2].startswith("sweep-point") for r in ran)


def cell(text: str) -> float | str | None:
    """A sweep.csv cell as claims.json holds it: empty is None, a number a float."""
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


def run_sweep(
    *args: str, cwd: Path, wait: bool = True
) -> subprocess.CompletedProcess[str] | subprocess.Popen[str]:
    command = [str(Path(sys.executable).parent / "laminar-sweep"), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if not wait:
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("grid", "sentence"),
    [
        (
            ["--grid", "nope=1,2"],
            "laminar-sweep: --grid 'nope=1,2': 'nope' is not a laminar "
            "setting: give one of `laminar --help`'s options (e.g. sae_arch, epochs, hook).",
        ),
        (
            ["--grid", "epochs=2,0"],
            "laminar-sweep: --grid point epochs=0: --epochs 0 is invalid: "
            "input should be greater than 0.",
        ),
        (
            ["--grid", "epochs"],
            "laminar-sweep: --grid 'epochs' is not FIELD=VALUE[,VALUE...]: e.g. epochs=75,600.",
        ),
        ([], "laminar-sweep: no --grid given: e.g. --grid sae_arch=course,topk."),
        (  # the same point twice would run (and show in the matrix) twice
            ["--grid", "epochs=2,3,2"],
            "laminar-sweep: --grid 'epochs=2,3,2' gives 'epochs' the value '2' twice: give it "
            "once.",
        ),
        (
            ["--grid", "epochs=2", "--grid-file", "{grid.yaml}"],
            "laminar-sweep: --grid-file '{grid.yaml}' names 'epochs' twice: give its values once.",
        ),
        (
            ["--grid-file", "{list.yaml}"],
            "laminar-sweep: --grid-file '{list.yaml}' is not a YAML mapping of settings to "
            "values: e.g. 'sae_arch: [course, topk]'.",
        ),
        (
            ["--grid-file", "{empty.yaml}"],
            "laminar-sweep: --grid-file '{empty.yaml}' gives 'epochs' no values: give at least "
            "one.",
        ),
        (  # read within its bound: one byte over is refused before YAML parses it
            ["--grid-file", "{big.yaml}"],
            "laminar-sweep: --grid-file '{big.yaml}' is over 1,048,576 bytes: not a grid.",
        ),
        (
            ["--grid-file", "{folder}"],
            "laminar-sweep: --grid-file '{folder}' cannot be read (Is a directory).",
        ),
        (  # YAML keeps a key's last values: epochs 4 alone was swept
            ["--grid-file", "{twice.yaml}"],
            "laminar-sweep: --grid-file '{twice.yaml}' names 'epochs' twice (lines 1 and 3): "
            "give its values once.",
        ),
        (  # was "not a YAML mapping", nothing on where
            ["--grid-file", "{broken.yaml}"],
            "laminar-sweep: --grid-file '{broken.yaml}' is not valid YAML (line 2: expected ',' "
            "or ']', but got '<stream end>'): write a mapping of settings to values, e.g. "
            "'sae_arch: [course, topk]'.",
        ),
        (  # two points, one run: the matrix showed the same numbers under two labels
            ["--grid", "progress_every=5,10"],
            "laminar-sweep: --grid 'progress_every=5,10': progress_every sets how a run is made, "
            "not what it computes, so every point would give the same numbers: sweep a setting "
            "of the profile or its SAEs (e.g. sae_arch, epochs) and give --progress-every as a "
            "flag.",
        ),
        (  # every point took the grid's epochs and dropped the flag's
            ["--grid", "epochs=2,3", "--epochs", "5"],
            "laminar-sweep: --epochs is given (5) and swept by the grid (epochs=2,3): give "
            "epochs in one place, as a flag for every point or in the grid.",
        ),
    ],
)
def test_a_bad_grid_entry_is_one_sentence_and_exit_2(
    grid: list[str], sentence: str, tmp_path: Path
) -> None:
    (tmp_path / "grid.yaml").write_text("epochs: [2, 3]\nsae_arch: topk\n")
    (tmp_path / "list.yaml").write_text("- epochs\n")
    (tmp_path / "big.yaml").write_text("epochs: [2]\n" + "#" * (1 << 20))  # a valid mapping
    (tmp_path / "folder").mkdir()
    (tmp_path / "empty.yaml").write_text("epochs: []\n")
    (tmp_path / "twice.yaml").write_text("epochs: [2, 3]\nsae_arch: topk\nepochs: [4]\n")
    (tmp_path / "broken.yaml").write_text("epochs: [2, 3\n")
    files = ("grid.yaml", "list.yaml", "big.yaml", "folder", "empty.yaml", "twice.yaml")
    names = {f"{{{n}}}": str(tmp_path / n) for n in (*files, "broken.yaml")}
    for key, path in names.items():
        grid = [a.replace(key, path) for a in grid]
        sentence = sentence.replace(key, path)
    out = run_sweep(*grid, "--artifacts-dir", str(tmp_path / "art"), cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert [line for line in out.stderr.splitlines() if line.startswith("laminar-sweep")] == [
        sentence
    ]
    assert not (tmp_path / "art").exists()  # nothing started


@pytest.mark.slow  # two sweeps through the command, the first killed
def test_a_killed_sweep_resumes_computing_only_what_is_missing(
    tmp_path: Path, four_layers: Path, article_server: ArticleServer
) -> None:
    base = quick_config(four_layers, article_server, tmp_path / "art", epochs=2, k=8)
    args = [*to_args(base), "--grid", "sae_arch=course,standard"]  # neither reads --k
    proc = run_sweep(*args, cwd=tmp_path, wait=False)
    reports = tmp_path / "art" / "reports"
    deadline = time.monotonic() + 240
    while not list(reports.glob("*/report.md")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-2000:]  # type: ignore[union-attr]
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(list(reports.glob("*/report.md"))) == 1  # killed in the second point
    out = run_sweep(*args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert said(out.stderr) == []
    # Its cost, said first: one extraction shared; 4 layers x 2 architectures trained, each
    # 10 N d m FLOPs an epoch (N = 4 x 31 tokens, d = 256 at mlp.hook_pre, m = 512), 2 epochs.
    assert 8 * 10 * (4 * 31) * 256 * 512 * 2 == 2_600_468_480
    [cost] = [x for x in out.stderr.splitlines() if x.startswith("laminar-sweep: ")]
    # the base's --k, which neither SAE reads: said by the sweep's flow run (so in the UI's log
    # too), once per SAE, before any point's task runs
    lines = out.stderr.splitlines()
    said_by_flow = [i for i, x in enumerate(lines) if "does not read" in x]
    assert [re.sub(r".*Flow run '[^']+' - ", "", lines[i]) for i in said_by_flow] == [
        f"laminar-sweep: --sae-arch {arch} does not read --k 8, so the run records it at its "
        "default (100)."
        for arch in ("course", "standard")
    ]
    assert max(said_by_flow) < min(i for i, x in enumerate(lines) if "Task run '" in x)
    assert re.fullmatch(
        r"laminar-sweep: 2 points \(2 sae_arch\), each a laminar run sharing its cached tasks "
        r"with the others: 1 extraction and 8 SAEs to train, 2\.6 GFLOP; about \d+ s here "
        r"\(measured \d+(\.\d+)? GFLOP/s in fp32\)\.",  # two digits below 10 (costs.figure_text)
        cost,
    ), cost
    states = [line for line in out.stderr.splitlines() if "Finished in state" in line]
    course_sae = [s for s in states if "Task run 'sae tiny4 L" in s]
    # course: 4 SAEs replayed; standard: 4 trained
    assert sum("Cached" in s for s in course_sae) == 4
    assert sum("Completed" in s for s in course_sae) == 4
    assert out.stdout.startswith("sweep: ") and Path(out.stdout.split()[1]).is_file()
    assert len(list(reports.glob("*/report.md"))) == 2


def test_a_failed_point_is_named_in_the_matrix_and_fails_the_sweep(
    tmp_path: Path, four_layers: Path, article_server: ArticleServer
) -> None:
    """A point whose article is gone (HTTP 404): the other point's row, the failure and why in
    sweep.md and the laminar-sweep artifact, the sweep's run Failed with one sentence, exit 1."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    base = quick_config(four_layers, article_server, tmp_path / "art", epochs=2)
    gone = article_server.url(f"/wiki/Gone_{tmp_path.name}")
    grid = f"urls={base.urls[0]},{gone}"
    flags = to_args(base.model_copy(update={"urls": Config.model_fields["urls"].default}))
    out = run_sweep(*flags, "--grid", grid, cwd=tmp_path)  # the URLs in the grid alone
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    [folder] = (tmp_path / "art" / "sweeps").iterdir()
    assert out.stderr.splitlines()[-1] == (
        f"laminar-sweep: 1 of 2 points failed (urls={gone}); {folder / 'sweep.md'} says why "
        "and holds the others. Run the same sweep again to retry only what is missing."
    )
    md = (folder / "sweep.md").read_text()
    assert md.count("| tiny4 |") == 1 and f"| urls={base.urls[0]} | tiny4 |" in md
    # laminar's own sentence, as the CLI says it (no exception type in front)
    assert f"- **urls={gone}**: --urls '{gone}' answered HTTP 404: check the article's" in md
    with open(folder / "sweep.csv") as f:
        assert [r["point"] for r in csv.DictReader(f)] == [f"urls={base.urls[0]}"]
    with get_client(sync_client=True) as client:
        [artifact] = [
            a
            for a in client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["laminar-sweep"])),
                sort=ArtifactSort.CREATED_DESC,
            )
            if gone in a.data
        ]
        run = client.read_flow_run(artifact.flow_run_id)
    assert md.split("![")[0] in artifact.data
    assert run.state.is_failed() and "1 of 2 points failed" in run.state.message


def test_the_failure_sentence_says_what_the_matrix_holds() -> None:
    """With some points done, sweep.md holds them; with none, it only says why."""
    from flows.sweep import failure_sentence

    md = Path("/a/sweep.md")
    assert failure_sentence(["k=8"], 2, md) == (
        "1 of 2 points failed (k=8); /a/sweep.md says why and holds the others. Run the same "
        "sweep again to retry only what is missing."
    )
    assert failure_sentence(["k=8", "k=9"], 2, md).startswith(
        "2 of 2 points failed (k=8, k=9); /a/sweep.md says why. Run"
    )
    assert failure_sentence(["base"], 1, md).startswith("1 of 1 point failed (base); ")


def test_a_grid_given_in_the_deployments_form_is_checked_as_the_commands() -> None:
    """The Sweep model (the sweep/recipes form) refuses what `laminar-sweep --grid` refuses,
    with the same sentence, and keeps flag spellings as field names."""
    from pydantic import ValidationError

    from flows.sweep import Sweep

    with pytest.raises(ValidationError) as bad:
        Sweep(grid={"nope": ["1"]})
    assert "the grid: 'nope' is not a laminar setting" in str(bad.value)
    with pytest.raises(ValidationError) as empty:
        Sweep(grid={"epochs": []})
    assert "the grid gives 'epochs' no values: give at least one." in str(empty.value)
    assert Sweep(grid={"sae-arch": ["course", "topk"]}).grid == {"sae_arch": ["course", "topk"]}


def test_a_point_leaves_out_the_settings_its_sae_does_not_read() -> None:
    """Neither the course's SAE nor the standard one reads --k: their combinations that differ
    only in k are one run, so one point, labelled without k and with k at its default, and the
    command says so; topk's points keep their k. The standard SAE reads --l1, topk does not."""
    from tasks.sweep import count, unread_in_base

    grid = {"sae_arch": ["course", "standard", "topk"], "k": ["8", "16"]}
    plan = points(Config(models=["gpt2"]), grid)
    labels = [label for label, *_ in plan]
    assert labels == [
        "sae_arch=course",
        "sae_arch=standard",
        "sae_arch=topk k=8",
        "sae_arch=topk k=16",
    ]
    assert plan[0][1] == {"sae_arch": "course"} and plan[1][1] == {"sae_arch": "standard"}
    assert [c.k for *_, c in plan] == [100, 100, 8, 16]
    assert count(grid, plan) == (
        "4 points (3 sae_arch × 2 k; 2 of the 6 combinations repeat another in settings "
        "its SAE does not read)"
    )
    alone = {"k": ["8", "16", "32"]}  # over the course's base: one run
    assert [label for label, *_ in points(Config(models=["gpt2"]), alone)] == ["base"]
    assert count(alone, points(Config(models=["gpt2"]), alone)).startswith("1 point (3 k; 2 of")
    assert count({"epochs": ["2", "3"]}, [("a", {}, Config())] * 2) == "2 points (2 epochs)"
    base = Config(models=["gpt2"], k=8, l1=2.0)  # k is the grid's below: its labels show it
    assert unread_in_base(base, grid, plan) == [
        "--sae-arch topk does not read --l1 2, so the run records it at its default (1)."
    ]
    l1 = points(Config(models=["gpt2"]), {"sae_arch": ["standard", "topk"], "l1": ["1", "2"]})
    assert [label for label, *_ in l1] == [
        "sae_arch=standard l1=1",
        "sae_arch=standard l1=2",
        "sae_arch=topk",
    ]


def test_a_grid_of_published_saes_says_it_trains_nothing() -> None:
    """--saes points measure published SAEs: the cost line counts no training for them (and
    reads no model to count one)."""
    from tasks import sweep
    from tasks.config import Config

    points = [Config(models=["gpt2"], saes=f"org/family-{i}") for i in range(2)]
    assert sweep.cost(points) == (
        "no SAE to train: each point measures the published SAEs of its --saes"
    )


def test_a_slow_rate_is_said_to_two_digits(
    four_layers: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rate under 10 GFLOP/s (bf16 that a CPU emulates ran at 0.26) is not rounded to 0."""
    from tasks import costs, sweep
    from tasks.progress import human_time

    monkeypatch.setattr(costs, "calibrated_rate", lambda root, *shape: 0.26)
    cfg = Config(
        models=[str(four_layers)],
        precision="bf16",
        device="cpu",
        n_seqs=4,
        seq_len=32,
        artifacts_dir=str(tmp_path),
    )
    flops = 4 * 75 * 10 * (4 * 31) * 256 * 512  # 4 layers x 75 epochs, five N d m matmuls
    assert sweep.cost([cfg]) == (
        f"1 extraction and 4 SAEs to train, {costs.human_flops(flops)}; about "
        f"{human_time(flops / 0.26e9)} here (measured 0.26 GFLOP/s in bf16)"
    )


def test_points_in_other_artifacts_dirs_share_no_cached_task(
    four_layers: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each artifacts dir holds its own cache: a grid over it extracts and trains in each."""
    from tasks import costs, sweep

    monkeypatch.setattr(costs, "calibrated_rate", lambda root, *shape: 100.0)
    base = Config(models=[str(four_layers)], device="cpu", n_seqs=4, seq_len=32)
    plan = points(base, {"artifacts_dir": [str(tmp_path / "a"), str(tmp_path / "b")]})
    assert sweep.cost([cfg for *_, cfg in plan]).startswith("2 extractions and 8 SAEs to train")
    assert sweep.cost([plan[0][2]] * 2).startswith("1 extraction and 4 SAEs to train")
