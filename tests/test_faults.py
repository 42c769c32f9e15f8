"""Faults injected for real: SIGKILL mid-run, truncated and deleted files, an article server
that fails or stalls, two runs at once, changed settings. Finished work is never recomputed,
lost or read when corrupt."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import (
    ARTICLE,
    ROOT,
    SECOND_ARTICLE,
    ArticleServer,
    make_model,
    prefect_home,
    quick_config,
    run_cli,
    said,
    wiki_page,
)

from flows.laminar import laminar
from tasks import paths
from tasks.cache import _file_records
from tasks.cli import to_args
from tasks.config import Config
from tasks.runs import Runner
from tasks.scrape import fetch_page
from tasks.store import verify

pytestmark = pytest.mark.faults
LAT = "latents tiny-gpt2"  # the latent cards' task run


def executed(summary: dict) -> list[str]:
    return sorted(n.split(" http")[0] for n, s in summary["tasks"].items() if s != "Cached")


def metrics(report_dir: str | Path) -> list[dict[str, str]]:
    with open(Path(report_dir) / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def cli_args(cfg: Config) -> list[str]:
    return [sys.executable, str(ROOT / "flows" / "laminar.py"), *to_args(cfg)]


def spawn(cfg: Config, home: Path) -> subprocess.Popen[str]:
    """The CLI in a session of its own, so a kill takes its whole process group (its ephemeral
    Prefect server too), as killing the terminal's job would."""
    env = {**os.environ, "PREFECT_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        cli_args(cfg),
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill_when(proc: subprocess.Popen[str], ready: callable, limit_s: float = 240) -> bool:
    """SIGKILL `proc`'s process group as soon as `ready()` holds; False if it ended first.
    The runs here reach their kill point within about a minute even on a loaded 2-core machine
    (the whole kill-and-resume test takes ~95 s there); 240 s only ends a run that never does."""
    deadline = time.monotonic() + limit_s
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if ready():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.002)
        return False
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # nothing of the run outlives the test


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """4 layers, d_model 128: slow enough to be killed in the middle of its work."""
    folder = tmp_path_factory.mktemp("models") / "slow-gpt2"
    return make_model(folder, tokenizer_dir, n_layer=4, n_embd=128, n_positions=256)


# ------------------------------------------------------------------------------ kill -9

# A resume of these small runs takes 20-40 s on this 2-core machine (Prefect's server start
# included; 45 s at worst while the suite runs beside it): 180 s fails a hang without flaking.
RESUME_TIMEOUT_S = 180


def resume(cfg: Config, home: Path) -> dict[str, str]:
    """The same command again, as the user reruns it: a subprocess with a time limit. Returns
    each task run's final state, read from Prefect's log lines."""
    out = run_cli(
        *to_args(cfg), cwd=home.parent, env={"PREFECT_HOME": str(home)}, timeout=RESUME_TIMEOUT_S
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return dict(re.findall(r"Task run '([^']+)' - Finished in state (\w+)\(", out.stderr))


def lock_pids(root: Path) -> set[int]:
    """The pids that laminar's lock files name."""
    pids = set()
    for lock in (root / ".cache" / "locks").glob("*.lock"):
        with contextlib.suppress(ValueError, OSError):
            pids.add(json.loads(lock.read_text()).get("pid"))
    return pids


def check_files_against_records(cfg: Config) -> int:
    """Every file that a cached result names is there with its recorded size and sha256, and
    every Parquet file of tokens or activations has its full row count. Returns files checked."""
    records = []
    for result in (cfg.root / ".cache" / "results").iterdir():
        records += _file_records(json.loads(json.loads(result.read_text())["result"]))
    rows = {"tokens": cfg.n_seqs * cfg.seq_len, "activations": cfg.n_seqs * (cfg.seq_len - 1)}
    for r in records:
        assert verify(r, hash_check=True), r["path"]
        part = Path(r["path"]).relative_to(cfg.root).parts[0]
        if part in rows and not r["path"].endswith("-streams.parquet"):  # the whole articles
            assert pq.read_metadata(r["path"]).num_rows == rows[part], r["path"]
    return len(records)


def test_sigkill_during_training_resumes_without_recomputing(
    tmp_path: Path, slow_model: Path, article_server: ArticleServer
) -> None:
    cfg = quick_config(slow_model, article_server, tmp_path / "a", epochs=80, seq_len=64)
    proc = spawn(cfg, tmp_path / "home")
    sae_dir = tmp_path / "a" / "sae"
    l1_done = lambda: any(sae_dir.rglob("L01/*.json"))  # noqa: E731
    mid: list[Path] = []

    def training() -> list[Path]:
        """A later layer mid-training: its epochs file exists while it trains (gone once done)."""
        found = []
        for p in sae_dir.rglob("L0[23]/*.progress"):
            with contextlib.suppress(OSError, ValueError):
                done = json.loads(p.read_text())
                if 0 < done["epoch"] < done["epochs"]:
                    found.append(p)
        return found

    def ready() -> bool:
        if l1_done() and proc.pid in lock_pids(tmp_path / "a") and (now := training()):
            mid.extend(now)
            return True
        return False

    killed = kill_when(proc, ready)
    assert killed, "the run ended before it could be killed"
    assert proc.pid in lock_pids(tmp_path / "a"), "a lock of the dead run is left to release"
    [running] = mid  # killed while this layer was training, epochs done and not finished
    assert not list(running.parent.glob("*.json")), "the layer killed mid-training had finished"
    [l0] = (tmp_path / "a" / "sae").rglob("L00/*.json")
    l0_mtime = l0.stat().st_mtime_ns

    states = resume(cfg, tmp_path / "home")
    assert states["sae slow-gpt2 L0"] == "Cached"  # L1 may have died before its record
    assert states["sae slow-gpt2 L3"] == "Completed"
    assert l0.stat().st_mtime_ns == l0_mtime
    assert proc.pid not in lock_pids(tmp_path / "a")
    assert check_files_against_records(cfg) >= 4 + 4 + 2  # activations, layer JSONs, page, text
    reference = laminar(cfg.model_copy(update={"artifacts_dir": str(tmp_path / "b")}))
    [report] = (tmp_path / "a" / "reports").iterdir()
    assert metrics(report) == metrics(reference["report"])


def test_sigkill_while_writing_activations_leaves_no_torn_file(
    tmp_path: Path, slow_model: Path, article_server: ArticleServer
) -> None:
    cfg = quick_config(
        slow_model, article_server, tmp_path / "a", n_seqs=24, seq_len=128, extract_batch=1
    )
    acts = tmp_path / "a" / "activations"
    proc = spawn(cfg, tmp_path / "home")
    assert kill_when(proc, lambda: any(acts.rglob(".L0*.tmp"))), "never caught mid-write"
    # The state this test is about: temporaries half-written, and no activation file in place
    # (a file is renamed into place only once all its rows are written).
    assert any(acts.rglob(".L0*.tmp")) and not list(acts.rglob("L*.parquet"))

    states = resume(cfg, tmp_path / "home")
    assert states["extract slow-gpt2"] == "Completed"
    assert not list(acts.rglob("*.tmp")), "the killed run's temporaries were swept"
    assert len(list(acts.rglob("L*.parquet"))) == 4
    check_files_against_records(cfg)
    reference = laminar(cfg.model_copy(update={"artifacts_dir": str(tmp_path / "b")}))
    [report] = (tmp_path / "a" / "reports").iterdir()
    assert metrics(report) == metrics(reference["report"])


# (signal, sent to the run's process group as a terminal sends it, or to its pid as `kill` and
# `timeout` do; the run's epochs; seconds it may take to end once signalled)
SIGNALS = [
    ("SIGINT", True, 1_000_000, 20),  # Ctrl-C: at once, the layer in training abandoned
    ("SIGTERM", False, 500, 90),  # Prefect lets the layer finish, then hands the signal on
]


@pytest.mark.parametrize(
    ("name", "group", "epochs", "limit_s"), SIGNALS, ids=[s[0] for s in SIGNALS]
)
def test_a_signal_ends_the_run_in_one_sentence_and_keeps_what_finished(
    name: str,
    group: bool,
    epochs: int,
    limit_s: float,
    tmp_path: Path,
    tiny_model: Path,
    article_server: ArticleServer,
) -> None:
    """A run signalled mid-training, with its own temporary Prefect server (as a user's): it
    ends with one sentence and status 128 + the signal, and nothing it started is left running.
    Before, Ctrl-C waited for the layer to finish (a million epochs here), then hung on calls to
    the server Ctrl-C had stopped; SIGTERM left that server running, orphaned. What finished is
    kept: Ctrl-C's extraction is replayed by a run that shares it (past the dead run's locks),
    and SIGTERM's finished layer by the same command."""
    cfg = quick_config(tiny_model, article_server, tmp_path / "a", epochs=epochs, layers="0")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    sig = getattr(signal, name)
    with open(tmp_path / "stderr", "w+") as err:
        proc = subprocess.Popen(
            cli_args(cfg),
            env={**env, "PREFECT_HOME": str(prefect_home(tmp_path / "home"))},
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,  # its own process group, as a terminal's foreground job
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        training = lambda: any((tmp_path / "a" / "sae").rglob("L00/*.progress"))  # noqa: E731
        deadline = time.monotonic() + 240
        while not training() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert training(), "the run never started training"
        os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
        asked = time.monotonic()
        try:
            rc = proc.wait(timeout=limit_s)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 0)
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail("a process the run started outlived it")  # its server, orphaned
        err.seek(0)
        stderr = err.read()
    assert rc == 128 + sig, (rc, time.monotonic() - asked, stderr[-3000:])
    assert "Traceback" not in stderr
    assert said(stderr) == [
        f"laminar: interrupted ({name}): what finished is kept in {cfg.root}; run the same "
        "command again to compute only what is missing."
    ]
    if name == "SIGINT":
        run = laminar(cfg.model_copy(update={"epochs": 3}))
        assert "extract tiny-gpt2" not in executed(run) and "sae tiny-gpt2 L0" in executed(run)
    else:
        assert executed(laminar(cfg)) == [LAT, "report"]


# The first step each command takes once its flags are parsed, made to receive Ctrl-C: the
# sweep's points (tasks.sweep.points) and laminar's preflight. Run in a process of its own.
FIRST_STEP_INTERRUPTED = """
import os, signal, sys, time
import {module} as where

def interrupted(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(30)  # the handler ends the process long before

where.{name} = interrupted
from flows import cli
sys.exit(getattr(cli, sys.argv[1])(sys.argv[2:]))
"""


@pytest.mark.parametrize(
    ("command", "step", "grid"),
    [
        ("laminar_sweep", "tasks.sweep.points", ["--grid", "epochs=2,3"]),
        ("laminar", "tasks.preflight.preflight", []),
    ],
    ids=["laminar-sweep", "laminar"],
)
def test_ctrl_c_in_the_first_step_is_the_interrupted_sentence(
    command: str, step: str, grid: list[str], tmp_path: Path, tiny_model: Path
) -> None:
    """Ctrl-C while laminar-sweep works out its points (before, Python's KeyboardInterrupt and
    its traceback: the handler came after them), or during laminar's preflight."""
    module, name = step.rsplit(".", 1)
    script = tmp_path / "first_step.py"
    script.write_text(FIRST_STEP_INTERRUPTED.format(module=module, name=name))
    root = tmp_path / "art"
    args = [*grid, "--models", str(tiny_model), "--artifacts-dir", str(root)]
    out = subprocess.run(
        [sys.executable, str(script), command, *args],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    prog = command.replace("_", "-")
    assert out.returncode == 130, out.stderr[-3000:]
    assert out.stderr.splitlines() == [
        f"{prog}: interrupted (SIGINT): what finished is kept in {root}; run the same command "
        "again to compute only what is missing."
    ]


# ------------------------------------------------------------- layers that cannot be measured


def poisoned_model(folder: Path, tokenizer_dir: Path) -> Path:
    """4 layers whose MLP pre-activations (mlp.hook_pre = c_fc's output) are: L0 ordinary, L1
    the same vector for every token (zero weight, bias 0.5), L2 all zero, L3 NaN."""
    import torch
    import transformers

    make_model(folder, tokenizer_dir, n_layer=4)
    model = transformers.GPT2LMHeadModel.from_pretrained(folder)
    with torch.no_grad():
        for layer, bias in [(1, 0.5), (2, 0.0), (3, float("nan"))]:
            fc = model.transformer.h[layer].mlp.c_fc
            fc.weight.zero_()
            fc.bias.fill_(bias)
    model.save_pretrained(folder)
    return folder


def test_unmeasurable_layers_fail_by_name_and_the_run_exits_1(
    tmp_path: Path, tokenizer_dir: Path, article_server: ArticleServer
) -> None:
    model = poisoned_model(tmp_path / "poisoned-gpt2", tokenizer_dir)
    cfg = quick_config(model, article_server, tmp_path / "art")
    out = run_cli(*to_args(cfg), cwd=tmp_path, env={"PREFECT_HOME": str(tmp_path / "home")})
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    [sentence] = said(out.stderr)
    assert sentence.startswith("laminar: 3 layers failed and are missing from the report in ")
    assert "poisoned-gpt2 L1: its activations do not vary (the same vector for every token" in (
        sentence
    )
    assert "poisoned-gpt2 L2: its activations do not vary (all zero" in sentence
    assert "poisoned-gpt2 L3: activations contain NaN or inf" in sentence
    [report] = (tmp_path / "art" / "reports").iterdir()
    assert [r["layer"] for r in metrics(report)] == ["0"]  # the measurable layer is reported
    for table in report.glob("*.csv"):  # every number a number: no nan, no inf
        cells = [c for row in csv.reader(table.open()) for c in row]
        assert all(math.isfinite(float(c)) for c in cells if is_number(c)), table
        assert not {c.lower() for c in cells} & {"nan", "inf", "-inf"}, table
    for record in [*report.glob("*.json"), *(tmp_path / "art" / "sae").rglob("*.json")]:
        json.loads(record.read_text(), parse_constant=refuse)  # NaN/Infinity are not JSON


def is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def refuse(constant: str) -> None:
    raise AssertionError(f"{constant} in a JSON file")


# ----------------------------------------------------------------- corrupt or missing files


def test_truncated_deleted_and_garbled_files_are_rebuilt(
    tmp_path: Path, tiny_model: Path, article_server: ArticleServer
) -> None:
    """One fault at a time, each followed by a rerun: each is found on its own, and only the
    task that wrote the damaged file runs again (it writes the same bytes, so nothing after it
    does)."""
    cfg = quick_config(tiny_model, article_server, tmp_path)
    first = laminar(cfg)
    l1, l2 = sorted((tmp_path / "activations").rglob("L0[12].parquet"))
    [tokens] = (tmp_path / "tokens").glob("*-4x32.parquet")  # the batch, not the streams
    [parsed] = (tmp_path / ".cache" / "results").glob("parse-*")
    good = l1.read_bytes()

    def truncate() -> None:
        l1.write_bytes(good[: len(good) // 2])

    faults = [
        (truncate, ["extract tiny-gpt2"]),
        (l2.unlink, ["extract tiny-gpt2"]),
        (tokens.unlink, ["tokenize " + str(tiny_model)]),
        (lambda: parsed.write_text("{ not json"), ["parse"]),  # a garbled cache record
    ]
    for fault, reruns in faults:
        fault()
        again = laminar(cfg)
        assert executed(again) == reruns, fault
        assert metrics(again["report"]) == metrics(first["report"])
    assert l1.read_bytes() == good and l2.exists() and tokens.exists()


class _Planted:
    """Unpickling this opens (so creates) the file `marker`: code run by reading a record."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


def test_a_planted_pickle_record_is_dropped_never_unpickled(
    tmp_path: Path, tiny_model: Path, article_server: ArticleServer
) -> None:
    """Prefect decodes a cache record with the serializer the record names. A record planted in
    the artifacts dir that names pickle (the pickle base64-encoded in a JSON string, so it reads
    as JSON) is dropped by the rerun, through the CLI, with a warning: its code never runs, and
    the task it stood for is computed again."""
    import base64
    import pickle

    cfg = quick_config(tiny_model, article_server, tmp_path / "art")
    laminar(cfg)
    [record] = (cfg.root / ".cache" / "results").glob("parse-*")
    marker = tmp_path / "code-ran"
    planted = json.loads(record.read_text())
    planted["metadata"]["serializer"] = {"type": "pickle", "picklelib": "pickle"}
    blob = base64.encodebytes(pickle.dumps(_Planted(marker))).decode().replace("\n", "")
    planted["result"] = json.dumps(blob)  # '"gASV..."': a JSON string; base64 to Prefect
    record.write_text(json.dumps(planted))
    out = run_cli(*to_args(cfg), cwd=tmp_path, env={"PREFECT_HOME": str(tmp_path / "home")})
    assert out.returncode == 0, out.stderr[-3000:]
    assert not marker.exists()
    assert f"cache record {record} was not written by laminar (its serializer is 'pickle'" in (
        out.stderr
    )
    states = dict(re.findall(r"Task run '([^']+)' - Finished in state (\w+)\(", out.stderr))
    assert [n for n, s in states.items() if s != "Cached"] == [f"parse {cfg.urls[0]}"]
    assert json.loads(record.read_text())["metadata"]["serializer"]["type"] == "json"


def test_same_size_corruption_is_never_trained_on(
    tmp_path: Path, tiny_model: Path, article_server: ArticleServer
) -> None:
    cfg = quick_config(tiny_model, article_server, tmp_path, layers="0")
    laminar(cfg)
    [l0] = (tmp_path / "activations").rglob("L00.parquet")
    data = bytearray(l0.read_bytes())
    data[len(data) // 2] ^= 0xFF
    l0.write_bytes(bytes(data))
    with pytest.raises(Exception, match="changed since it was written"):
        laminar(cfg.model_copy(update={"epochs": 4}))  # needs the file: training reads it
    assert not l0.exists()  # removed, so the next run rebuilds it
    rebuilt = laminar(cfg.model_copy(update={"epochs": 4}))
    assert executed(rebuilt) == [
        "extract tiny-gpt2",
        "latents tiny-gpt2",
        "report",
        "sae tiny-gpt2 L0",
    ]


# ------------------------------------------------------------------------ network faults


def fetch(cfg: Config) -> dict:
    """The fetch task as the flow runs it, with retries but no waiting between them."""
    from prefect import flow

    @flow
    def fetch_only(cfg: Config) -> dict:
        return Runner(cfg)(fetch_page.with_options(retry_delay_seconds=0), cfg, cfg.urls[0])

    return fetch_only(cfg)


@pytest.mark.parametrize(
    ("route", "hits", "words"),
    [
        ((503, b"busy"), 4, "answered HTTP 503: the server is busy or down"),
        ((404, b"gone"), 1, "answered HTTP 404: check the article's address"),
        ((200, b"x", 3.0), 4, "could not be fetched: 127.0.0.1:{port} did not answer within"),
    ],
)
def test_fetch_failures_retry_only_when_it_can_help(
    tmp_path: Path, article_server: ArticleServer, route: tuple, hits: int, words: str
) -> None:
    path = f"/fault/{route[0]}-{len(route)}"
    article_server.routes[path] = route
    words = words.format(port=article_server.httpd.server_port)
    # Only the stalled answer (3 s) needs a short --fetch-timeout; the 404 and 503 keep the
    # default (30 s), so a busy machine's slow answer is never mistaken for a timeout.
    stall = {"fetch_timeout": 0.3} if len(route) == 3 else {}
    cfg = Config(urls=[article_server.url(path)], artifacts_dir=str(tmp_path), **stall)
    with pytest.raises(Exception, match=words.replace("(", r"\(").replace(")", r"\)")):
        fetch(cfg)
    assert article_server.hits[path] == hits
    assert list(tmp_path.rglob("*.html")) == []  # nothing saved from a failed fetch


def test_server_down_is_retried_then_explained(tmp_path: Path) -> None:
    cfg = Config(urls=["http://127.0.0.1:9/wiki/x"], artifacts_dir=str(tmp_path))
    with pytest.raises(Exception, match=r"the connection to 127\.0\.0\.1:9 was refused"):
        fetch(cfg)


def test_transient_error_then_success(tmp_path: Path, article_server: ArticleServer) -> None:
    page = wiki_page(["Some prose."]).encode()
    article_server.routes["/flaky"] = [(500, b"oops"), (502, b"oops"), (200, page)]
    meta = fetch(Config(urls=[article_server.url("/flaky")], artifacts_dir=str(tmp_path)))
    assert Path(meta["html"]["path"]).read_bytes() == page
    assert article_server.hits["/flaky"] == 3


def test_cached_page_survives_a_later_outage(tmp_path: Path, article_server: ArticleServer) -> None:
    page = wiki_page(["Prose of the day."]).encode()
    article_server.routes["/outage"] = (200, page)
    cfg = Config(urls=[article_server.url("/outage")], artifacts_dir=str(tmp_path))
    first = fetch(cfg)
    article_server.routes["/outage"] = (500, b"<html>error page</html>")
    assert fetch(cfg) == first  # replayed from the cache: no request made
    with pytest.raises(Exception, match="HTTP 500"):
        fetch(cfg.model_copy(update={"refresh": True}))
    assert Path(first["html"]["path"]).read_bytes() == page  # never overwritten by the error
    assert [p.read_bytes() for p in (tmp_path / "pages").glob("*.html")] == [page]


# ------------------------------------------------------------------------ two runs at once


def test_two_runs_at_once_share_work_and_agree(
    tmp_path: Path, tiny_model: Path, article_server: ArticleServer
) -> None:
    cfg = quick_config(tiny_model, article_server, tmp_path / "art", epochs=200)
    procs = [spawn(cfg, tmp_path / f"home{i}") for i in range(2)]
    # Two whole runs side by side on 2 cores: ~60 s; 300 s ends a pair that deadlocks.
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    done = [
        line
        for out in outs
        for line in out.splitlines()
        if "Task run 'sae tiny-gpt2" in line and "Finished in state Completed()" in line
    ]
    assert len(done) == 3, "each layer trained once across both runs"
    reports = [
        line.split("report: ")[1]
        for out in outs
        for line in out.splitlines()
        if line.startswith("report: ")
    ]
    assert len(reports) == 2 and metrics(Path(reports[0]).parent) == metrics(
        Path(reports[1]).parent
    )
    assert not list((tmp_path / "art").rglob("*.tmp"))


# ------------------------------------------------------------------- changing a setting


SAES = ["sae tiny-gpt2 L0", "sae tiny-gpt2 L1", "sae tiny-gpt2 L2"]
TOK = "tokenize {model}"
# Each setting of docs/resuming.md "Changing a setting", changed alone from the base run, and the
# task runs that then execute (the rest are Cached).
SETTINGS = [
    ({"epochs": 4}, [LAT, "report", *SAES]),
    ({"lr": 2e-4}, [LAT, "report", *SAES]),
    ({"l1": 0.5}, [LAT, "report", *SAES]),
    ({"expansion": 3}, [LAT, "report", *SAES]),
    ({"topk_frac": 0.25}, [LAT, "report", *SAES]),
    ({"precision": "tf32"}, [LAT, "report", *SAES]),
    ({"precision": "bf16"}, [LAT, "report", *SAES]),  # never reuses fp32 results
    ({"batch_tokens": 64}, [LAT, "report", *SAES]),  # minibatches: the SAEs alone train again
    ({"save_saes": False}, ["report", *SAES]),  # the SAEs trained again, their files not kept
    # Held-out windows: the training windows do not move with their count, so nothing is
    # re-extracted or retrained; the held-out windows are cut and every SAE spliced in.
    ({"eval_seqs": 1}, ["holdout {model}", LAT, "report", *(f"splice {s[4:]}" for s in SAES)]),
    ({"seed": 1}, ["extract tiny-gpt2", LAT, "report", *SAES, TOK]),
    ({"n_seqs": 5}, ["extract tiny-gpt2", LAT, "report", *SAES, TOK]),
    ({"seq_len": 33}, ["extract tiny-gpt2", LAT, "report", *SAES, TOK]),
    ({"sampling": "first"}, ["extract tiny-gpt2", LAT, "report", *SAES, TOK]),
    # Layers 0 and 1 again: the same bytes as before, so their SAEs are reused.
    ({"layers": "0,1"}, ["extract tiny-gpt2", LAT, "report"]),
    ({"hook": "hook_resid_pre"}, ["extract tiny-gpt2", LAT, "report", *SAES]),
    ({"keep_first_token": True}, ["extract tiny-gpt2", LAT, "report", *SAES]),
    (
        {"models": "{other}"},
        [
            "extract other-gpt2",
            "latents other-gpt2",
            "report",
            "sae other-gpt2 L0",
            "sae other-gpt2 L1",
        ],
    ),
    # A second article: it alone is fetched and parsed; the batch now draws from both.
    ({"urls": "{two}"}, ["extract tiny-gpt2", "fetch", LAT, "parse", "report", *SAES, TOK]),
    ({"refresh": True}, ["extract tiny-gpt2", "fetch", LAT, "parse", "report", *SAES, TOK]),
]


@pytest.fixture(scope="module")
def base_run(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model: Path,
    tokenizer_dir: Path,
    article_server: ArticleServer,
) -> tuple[Config, Path]:
    root = tmp_path_factory.mktemp("settings")
    cfg = quick_config(tiny_model, article_server, root / "art")
    assert set(laminar(cfg)["tasks"].values()) == {"Completed"}
    return cfg, make_model(root / "other-gpt2", tokenizer_dir, seed=1, n_layer=2)


@pytest.mark.parametrize(("change", "expected"), SETTINGS, ids=[next(iter(c)) for c, _ in SETTINGS])
def test_each_setting_recomputes_what_depends_on_it(
    change: dict, expected: list[str], base_run: tuple[Config, Path], tiny_model: Path
) -> None:
    cfg, other = base_run
    if change.get("models") == "{other}":
        change = {"models": [str(other)]}
    if change.get("urls") == "{two}":
        change = {"urls": [*cfg.urls, cfg.urls[0].replace(ARTICLE, SECOND_ARTICLE)]}
    expected = sorted(e.format(model=tiny_model) for e in expected)
    before = {p: p.stat().st_mtime_ns for p in cfg.root.rglob("tiny-gpt2-*/**/*.parquet")}
    run = laminar(cfg.model_copy(update=change))
    assert executed(run) == expected
    if change.get("save_saes") is False:  # a report of its own: the saving run's stays whole
        assert Path(run["report"]) != paths.report_dir(cfg)
        assert (paths.report_dir(cfg) / "tiny-gpt2-latents.html").exists()
    if "models" in change:  # the first model's files are left alone
        assert {p: p.stat().st_mtime_ns for p in before} == before


def test_layer_json_is_json_and_names_its_inputs(
    tmp_path: Path, tiny_model: Path, article_server: ArticleServer
) -> None:
    laminar(quick_config(tiny_model, article_server, tmp_path, layers="2"))
    [saved] = (tmp_path / "sae").rglob("L02/*.json")
    row = json.loads(saved.read_text())
    assert row["layer"] == 2 and row["activations"]["path"].endswith("L02.parquet")


FULL_DISK = """
set -u
run() {  # run N: the CLI, its output and exit code kept outside the tmpfs
  "$PY" "$CLI" "$@" >"$KEEP/$N.out" 2>"$KEEP/$N.err"; echo $? >"$KEEP/$N.rc"; N=$((N + 1))
}
N=1
mount -t tmpfs -o size=2m none "$ART" || exit 97
run "$@"                                   # 1: room for the inputs and one SAE
mount -o remount,size=64m "$ART"
run "$@"                                   # 2: space freed, the run resumes
ls -A "$ART/.cache/results" >"$KEEP/records"
rm -rf "$ART"/reports
avail=$(df --output=avail -B1 "$ART" | tail -1)
head -c $((avail - 96 * 1024)) /dev/zero >"$ART/filler"
run "$@"                                   # 3: full again, at the report
rm "$ART/filler"
run "$@"                                   # 4: the report alone
"""


def test_a_full_disk_is_one_sentence_and_the_rerun_computes_only_what_is_missing(
    tmp_path: Path, tiny_model: Path, article_server: ArticleServer
) -> None:
    """On a 2 MB tmpfs the second SAE finds no room: one sentence naming the folder and the
    space, exit 1, the first SAE kept; with room the rerun trains only the missing layers.
    A disk that fills at the report is one sentence too (exit 2), and the rerun writes the
    report alone. Failed tasks' records are swept by the next run."""
    art, keep = tmp_path / "art", tmp_path / "keep"
    art.mkdir()
    keep.mkdir()
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True)
    assert probe.returncode == 0, f"no mount namespaces here: {probe.stderr}"
    cfg = quick_config(tiny_model, article_server, art)
    env = {**os.environ, "PY": sys.executable, "CLI": str(ROOT / "flows" / "laminar.py")}
    env |= {"ART": str(art), "KEEP": str(keep), "PYTHONUNBUFFERED": "1"}
    cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", FULL_DISK, "sh"]
    subprocess.run([*cmd, *to_args(cfg)], env=env, cwd=tmp_path, timeout=600, check=True)
    out = {n: (keep / f"{n}.out").read_text() for n in (1, 4)}
    err = {n: (keep / f"{n}.err").read_text() for n in range(1, 5)}
    rc = {n: int((keep / f"{n}.rc").read_text()) for n in range(1, 5)}

    assert rc[1] == 1, err[1][-2000:]
    assert "Traceback" not in err[1] and "Errno 28" not in err[1]
    [sentence] = said(err[1])
    assert "2 layers failed and are missing from the report in " in sentence
    assert f"the disk holding '{art}/sae/" in sentence and "is full (" in sentence
    # W_enc and W_dec, 256 x 512 fp32 each, and the biases: 1,051,944 bytes with the header
    assert "writing 'sae_weights.safetensors' needs about 1,051,944 bytes; free space" in sentence
    assert "sae tiny-gpt2 L1: the disk holding" in sentence and ".." not in sentence
    assert tally(err[1]) == {"Completed": 7, "Failed": 2}  # inputs, L0's SAE, its report

    assert rc[2] == 0, err[2][-2000:]
    # fetch, parse, tokenize, extract and L0's SAE cached; L1's and L2's SAEs, cards, report
    assert tally(err[2]) == {"Cached": 5, "Completed": 4}
    records = (keep / "records").read_text().split()
    assert records and all("-" in name for name in records)  # no failure record left

    assert rc[3] == 2, err[3][-2000:]
    assert "Traceback" not in err[3]
    [sentence] = said(err[3])
    assert (
        sentence.startswith(f"laminar: the disk holding '{art}/reports/") and "is full" in sentence
    )
    assert rc[4] == 0, err[4][-2000:]
    assert "report: " in out[4] and tally(err[4]) == {"Cached": 7, "Completed": 2}


def tally(log: str) -> dict[str, int]:
    """The task states' tally from the run's closing log line ('tasks {'Cached': 5, ...}')."""
    [line] = [x for x in log.splitlines() if "laminar: report in " in x]
    return {k: int(v) for k, v in re.findall(r"'(\w+)': (\d+)", line.split("tasks ")[-1])}
