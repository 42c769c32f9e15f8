"""Shared test fixtures: a small random-weight GPT-2 folder with the real GPT-2 tokenizer, a
Wikipedia-shaped article served from a loopback HTTP server, and an isolated Prefect home."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from wikipages import current_skin, legacy_skin

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_DIR = ROOT / "tests" / "data" / "gpt2-tokenizer"  # carried by the repository

# Prefect: a private home per test session, telemetry off, a start-up timeout that covers the
# first SQLite migration on a slow machine. Set before anything imports prefect.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["HF_HUB_OFFLINE"] = "1"

SENTENCES = [
    "A light-emitting diode is a semiconductor device that emits light when current flows.",
    "Electrons recombine with electron holes, releasing energy in the form of photons.",
    "The colour of the light is determined by the energy band gap of the semiconductor.",
    "White light is obtained by using multiple semiconductors or a layer of phosphor.",
    "Early LEDs emitted low-intensity infrared light and were used in remote controls.",
    "Modern LEDs are available across the visible, ultraviolet, and infrared wavelengths.",
]


def article_prose(n_paragraphs: int) -> list[str]:
    return [
        " ".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(4)) + f" Paragraph {i}."
        for i in range(n_paragraphs)
    ]


# Prose of the second article, sharing no sentence with the first.
LAMP_PROSE = [
    f"An LED lamp number {i} fits a standard socket. Its driver converts mains power. Heat "
    f"sinks keep the diodes cool for {i + 20} thousand hours. Such lamps replaced filament "
    "bulbs in many homes."
    for i in range(120)
]


def wiki_page(paragraphs: list[str], revision: int = 1234567) -> str:
    """An article in the shape Wikipedia serves today (Vector 2022, tests/wikipages.py): the
    lead and infobox, then one section holding `paragraphs`, then References and the rest."""
    return current_skin([("History", paragraphs)], revision)


Response = tuple[int, bytes] | tuple[int, bytes, float]  # status, body[, seconds to stall]


def raw_response(
    status: int, headers: dict[str, str], body: bytes = b"", cut_after: int | None = None
) -> Any:
    """A route that sends `headers` as they are (Content-Length included only if given) and
    `body`, or only its first `cut_after` bytes before closing the connection."""

    def serve(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body if cut_after is None else body[:cut_after])
        handler.wfile.flush()
        handler.close_connection = True

    return serve


class _Handler(BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, Response | list[Response]]] = {}
    hits: ClassVar[dict[str, int]] = {}

    def do_GET(self) -> None:
        n = self.hits[self.path] = self.hits.get(self.path, 0) + 1
        route = self.routes.get(self.path, (404, b"not found"))
        if callable(route):  # a test that writes its own response (headers, a cut-off body)
            with contextlib.suppress(OSError):
                route(self)
            return
        status, body, *stall = route[min(n, len(route)) - 1] if isinstance(route, list) else route
        if stall:
            time.sleep(stall[0])
        try:
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the client gave up (a timeout test)

    def log_message(self, *args: object) -> None:
        pass


class ArticleServer:
    """A loopback HTTP server. `routes` maps a path to a response, or to a list of responses
    served in turn (the last one repeats), or to a function of the request handler that writes
    its own; `hits` counts requests per path."""

    def __init__(self) -> None:
        self.routes: dict[str, Response | list[Response]] = {}
        self.hits: dict[str, int] = {}
        handler = type("Handler", (_Handler,), {"routes": self.routes, "hits": self.hits})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


ARTICLE = "/wiki/Light-emitting_diode"
SECOND_ARTICLE = "/wiki/LED_lamp"


def quick_config(model: Path, server: ArticleServer, root: Path, **kw: Any) -> Any:
    """A laminar Config small enough for a test: 4 x 32 tokens, 3 epochs, on the CPU."""
    from tasks.config import Config

    base = {
        "models": [str(model)],
        "urls": [server.url(ARTICLE)],
        "n_seqs": 4,
        "seq_len": 32,
        "epochs": 3,
        "device": "cpu",
        "artifacts_dir": str(root),
        "eval_seqs": 0,  # the downstream measures have their own tests (test_splice.py)
    }
    return Config(**{**base, **kw})


@pytest.fixture(scope="session")
def article_server() -> Iterator[ArticleServer]:
    server = ArticleServer()
    server.routes[ARTICLE] = (200, wiki_page(article_prose(100)).encode())
    # A second article, in the legacy skin, for runs over several articles (--urls).
    lead = "An LED lamp is an electric light that produces light using LEDs."
    lamp = legacy_skin([("Applications", LAMP_PROSE)], revision=7654321, lead=lead)
    server.routes[SECOND_ARTICLE] = (200, lamp.encode())
    yield server
    server.close()


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    """The repository's copy of GPT-2's tokenizer files: missing, they fail every test that needs
    them (a skip there would be a test that never runs in a clone)."""
    missing = [n for n in ("vocab.json", "merges.txt") if not (TOKENIZER_DIR / n).is_file()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing from {TOKENIZER_DIR}: restore them from git")
    return TOKENIZER_DIR


def gpt2_tokenizer(folder: Path):  # type: ignore[no-untyped-def]
    import tokenizers
    import transformers

    tok = tokenizers.Tokenizer(
        tokenizers.models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt"))
    )
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    eot = "<|endoftext|>"
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=eot, eos_token=eot, unk_token=eot
    )


def make_model(folder: Path, tokenizer_dir: Path, seed: int = 0, **config: int) -> Path:
    """A random-weight GPT-2-architecture model with the real GPT-2 tokenizer, saved locally."""
    import torch
    import transformers

    torch.manual_seed(seed)
    shape = {"n_layer": 3, "n_embd": 64, "n_head": 4, "n_positions": 128, **config}
    transformers.GPT2LMHeadModel(transformers.GPT2Config(**shape)).save_pretrained(folder)
    gpt2_tokenizer(tokenizer_dir).save_pretrained(folder)
    return folder


def make_family_model(folder: Path, tokenizer_dir: Path, family: str, seed: int = 0) -> Path:
    """A random-weight model of another family, paired with the real GPT-2 tokenizer: 'neox'
    (GPT-NeoX, as Pythia), 'llama' (gated MLP, grouped-query attention) or 'biogpt' (an
    architecture TransformerLens's bridge does not support)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    common = {"vocab_size": 50257, "hidden_size": 64, "num_hidden_layers": 3}
    common |= {"num_attention_heads": 4, "max_position_embeddings": 128}
    config = {
        "neox": lambda: transformers.GPTNeoXConfig(**common, intermediate_size=256),
        "llama": lambda: transformers.LlamaConfig(
            **common, intermediate_size=192, num_key_value_heads=2
        ),
        "biogpt": lambda: transformers.BioGptConfig(**common, intermediate_size=256),
    }[family]()
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    gpt2_tokenizer(tokenizer_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def family_models(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> dict[str, Path]:
    """Tiny GPT-NeoX and Llama models (3 layers, d_model 64; MLP width 256 and 192)."""
    root = tmp_path_factory.mktemp("families")
    return {f: make_family_model(root / f"tiny-{f}", tokenizer_dir, f) for f in ("neox", "llama")}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """3 layers, d_model 64, d_mlp 256."""
    return make_model(tmp_path_factory.mktemp("models") / "tiny-gpt2", tokenizer_dir)


def run_artifacts(flow_run_id: str) -> list[Any]:
    """The artifacts a flow run published, as the Prefect API (and so the UI) serves them."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`python flows/laminar.py ARGS` as a user runs it: a subprocess, its exit code and its
    stdout and stderr. `env` adds to (or, with a value of None, removes from) the environment."""
    full = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for key, value in (env or {}).items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    return subprocess.run(
        [sys.executable, str(ROOT / "flows" / "laminar.py"), *args],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def said(stderr: str) -> list[str]:
    """The lines laminar itself wrote to stderr (its one-sentence errors)."""
    return [line for line in stderr.splitlines() if line.startswith("laminar: ")]


# A private Prefect home for the whole test session (its SQLite DB and ephemeral server),
# removed when the process ends: registered before Prefect loads, so it runs after Prefect's own
# exit handlers (last in, first out). Each left behind would hold tens of MB of SQLite.
PREFECT_HOME = Path(tempfile.mkdtemp(prefix="laminar-prefect-"))
os.environ["PREFECT_HOME"] = str(PREFECT_HOME)
atexit.register(shutil.rmtree, PREFECT_HOME, ignore_errors=True)


# The database of the test process's own server as its start left it, migrated and holding no
# run: a private Prefect home seeded with it starts its server without SQLite's migrations (7 s
# of CPU, 8 s of a 15 s start on 2 cores). `ui` (laminar-ui.sh, as a user first starts it)
# migrates its own.
MIGRATED = PREFECT_HOME.parent / f"{PREFECT_HOME.name}-migrated.db"
atexit.register(MIGRATED.unlink, missing_ok=True)


def prefect_home(folder: Path) -> Path:
    """A private Prefect home (its own database, runs and locks) for a process that starts a
    Prefect server of its own, its database migrated already."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(MIGRATED, folder / "prefect.db")
    return folder


@pytest.fixture(scope="session", autouse=True)
def prefect_api() -> Iterator[str]:
    """The temporary Prefect server of this test process (the one its in-process flows talk to,
    as a user's script does), started once and handed to every process it starts through
    PREFECT_API_URL: each `laminar` subprocess then skips starting one of its own and migrating
    a fresh database (8-20 s each on a 2-core machine). The tests of what a user meets without a
    server (bad input, offline, the README's command) remove PREFECT_API_URL again."""
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # Prefect's singleton: in-process flows find the same one
    server.start()
    db, copy = sqlite3.connect(PREFECT_HOME / "prefect.db"), sqlite3.connect(MIGRATED)
    with contextlib.closing(db), contextlib.closing(copy):
        db.backup(copy)  # migrated, before any run: what prefect_home() hands out
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        yield server.api_url
    finally:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        # What the last in-process flows left queued, sent while the server runs: drained at
        # exit instead, to a stopped server, it held the process for a minute of retries.
        EventsWorker.drain_all(timeout=10)
        APILogWorker.drain_all(timeout=10)
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


# The test files that take longest, longest first (each file's summed test time in one run of
# the whole suite, `make test ARGS=--junitxml=...` in a fresh clone, on a 2-core Xeon whose flags
# show avx512f but no AMX; the rest keep pytest's order after them). Under `-n 2 --dist
# loadfile` each worker takes whole files as it frees up; xdist's own order (most tests first)
# started the few-but-slow files last, leaving one worker alone for minutes at the end.
LONGEST_FIRST = (
    "test_faults.py",  # 435 s
    "test_cluster.py",  # 272 s
    "test_browser.py",  # 236 s
    "test_deployments.py",  # 232 s
    "test_interop.py",  # 156 s
    "test_laminar.py",  # 145 s
    "test_offline.py",  # 138 s
    "test_published.py",  # 108 s
    "test_sweep.py",  # 105 s
    "test_progress.py",  # 96 s
    "test_laminar_ui.py",  # 71 s
    "test_splice.py",  # 65 s
    "test_recipes.py",  # 47 s
    "test_bench.py",  # 45 s
)


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist: keep the order below
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole


def pytest_unconfigure(config: pytest.Config) -> None:
    # Prefect stops its ephemeral server at interpreter exit and logs that to a console stream
    # pytest has already closed; don't print a "Logging error" traceback for it.
    import logging

    logging.raiseExceptions = False


# ------------------------------------------------- a real Prefect server, for the ui tests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class UI:
    """scripts/laminar-ui.sh running on a free port with a private Prefect home (the command
    the docs give users), stopped by pid whatever happens."""

    def __init__(self, home: Path, auth: str = ""):
        self.port, self.home, self.auth = free_port(), home, auth
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PREFECT_HOME": str(home), "LAMINAR_UI_PORT": str(self.port)}
        # deployment runs may use artifacts dirs under the tests' own temporary folder
        env["LAMINAR_DEPLOYMENT_ARTIFACTS_ROOTS"] = str(home.parent)
        env.pop("PREFECT_API_URL", None)
        if auth:  # a password-protected server (docs/security.md)
            env["PREFECT_SERVER_API_AUTH_STRING"] = auth
        self.proc = subprocess.Popen(
            [str(ROOT / "scripts" / "laminar-ui.sh")],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 240
        for line in self.proc.stdout:  # type: ignore[union-attr]
            if "Prefect UI at" in line or time.monotonic() > deadline:
                break
        assert self.proc.poll() is None, "laminar-ui.sh exited early"

    def client(self) -> Any:
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(f"{self.url}/api", auth_string=self.auth or None)

    def stop(self) -> None:
        """SIGINT as Ctrl-C would; then, whatever happened, every pid it started is gone."""
        pids = (
            (self.home / "laminar-ui.pids").read_text().split()
            if (self.home / "laminar-ui.pids").exists()
            else []
        )
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        finally:
            for pid in [*pids, str(self.proc.pid)]:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(int(pid), signal.SIGKILL)


@contextlib.contextmanager
def running_ui(home: Path) -> Iterator[UI]:
    server = UI(home)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")  # stopped after its file: an idle server and worker cost CPU
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UI]:
    """laminar-ui.sh on a fresh Prefect home, as a user's first `make ui` starts it."""
    with running_ui(tmp_path_factory.mktemp("prefect-home")) as server:
        yield server
