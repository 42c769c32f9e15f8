"""A dead network, as a user meets it through the CLI: each failure of the article server or of
the Hugging Face hub ends in exit 2 and one sentence naming the URL or model and the fix, with no
traceback; and a machine without network still runs from a warm cache (a page fetched before, a
model in the hub cache) without the user setting HF_HUB_OFFLINE."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    ARTICLE,
    ROOT,
    ArticleServer,
    free_port,
    quick_config,
    raw_response,
    run_cli,
    said,
    wiki_page,
)

from tasks.cli import to_args

pytestmark = pytest.mark.faults


def hub_cache(hf_home: Path, repo_id: str, folder: Path) -> str:
    """Put a saved model folder into a Hugging Face cache in the hub's own layout:
    hub/models--org--name/{blobs/<hash>, refs/main, snapshots/<commit>/<file> -> ../../blobs/…}."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = f.read_bytes()
        # LFS files are stored under their sha256, small git files under their git blob sha1
        blob = (
            hashlib.sha256(data).hexdigest()
            if f.suffix == ".safetensors"
            else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        )
        (repo / "blobs" / blob).write_bytes(data)
        rel = f.relative_to(folder)  # a file in a subfolder links one level further up
        (snapshot / rel).parent.mkdir(parents=True, exist_ok=True)
        up = Path(*[".."] * (len(rel.parts) + 1))
        (snapshot / rel).symlink_to(up / "blobs" / blob)
    return commit


FAKE_DNS = """
import socket
_real = socket.getaddrinfo
def _getaddrinfo(host, *args, **kwargs):
    if isinstance(host, str) and host.endswith(".invalid"):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return _real(host, *args, **kwargs)
socket.getaddrinfo = _getaddrinfo
"""


def dns_env(tmp_path: Path) -> dict[str, str]:
    """No name is looked up for real in tests (nothing leaves this machine): a sitecustomize
    makes the resolver fail for *.invalid names as glibc's does for an unknown host."""
    site = tmp_path / "fake-dns"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FAKE_DNS)
    return {"PYTHONPATH": str(site)}


def fail_one(tmp_path: Path, server: ArticleServer, case: str) -> tuple[str, dict[str, str]]:
    """The URL (and environment) of one way the article server can fail."""
    page = wiki_page(["Prose."]).encode()
    if case == "refused":
        return f"http://127.0.0.1:{free_port()}/wiki/LED", {}
    if case == "dns":
        return "https://en.wikipedia.invalid/wiki/Light-emitting_diode", dns_env(tmp_path)
    if case == "timeout":
        server.routes["/stall"] = (200, page, 3.0)
        return server.url("/stall"), {}
    if case == "tls":
        return server.url("/wiki/Light-emitting_diode").replace("http:", "https:"), {}
    headers = {"Content-Type": "text/html", "Content-Length": str(len(page))}
    server.routes["/cut"] = raw_response(200, headers, page, cut_after=500)
    return server.url("/cut"), {}


CASES = {
    "refused": "was refused (nothing listens there); check the network or the URL",
    "dns": "the host name en.wikipedia.invalid could not be resolved (no network, or no DNS)",
    "timeout": "did not answer within --fetch-timeout",
    "tls": "the TLS handshake with 127.0.0.1",
    "cut": "closed the connection before the whole page arrived",
}


@pytest.mark.parametrize("case", CASES)
def test_article_server_failure_is_one_sentence_exit_2(
    case: str, tmp_path: Path, tiny_model: Path, article_server: ArticleServer
) -> None:
    url, env = fail_one(tmp_path, article_server, case)
    cfg = quick_config(tiny_model, article_server, tmp_path / "art", urls=[url], fetch_timeout=0.5)
    retries = "1" if case == "refused" else "0"  # one case shows the retry, then the sentence
    out = run_cli(*to_args(cfg), "--fetch-retries", retries, cwd=tmp_path, env=env)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    [sentence] = said(out.stderr)
    assert sentence.startswith(f"laminar: --urls '{url}'") and CASES[case] in sentence, sentence
    assert sentence.endswith(".")
    if case == "refused":
        assert "Retry 1/1 will start 2 second(s) from now" in out.stderr
    assert not list((tmp_path / "art").rglob("*.html"))  # nothing fetched, nothing kept


def test_a_prefect_home_that_cannot_be_a_folder_is_one_sentence(
    tmp_path: Path, tiny_model: Path, article_server: ArticleServer
) -> None:
    """No server given, and PREFECT_HOME a file or under one: the temporary server could not
    start (uvicorn's traceback, then Prefect's 'Timed out while attempting to connect to
    ephemeral Prefect API server' after its start-up timeout, exit 1). Now preflight says so,
    and laminar-sweep before its flow."""
    (tmp_path / "file").write_text("mine\n")
    args = to_args(quick_config(tiny_model, article_server, tmp_path / "art", layers="0"))
    sweep = [str(Path(sys.executable).parent / "laminar-sweep"), "--grid", "sae_arch=course,topk"]
    for home, why, command in [
        ("file", "File exists", [sys.executable, str(ROOT / "flows" / "laminar.py")]),
        ("file/sub", "Not a directory", [sys.executable, str(ROOT / "flows" / "laminar.py")]),
        ("file", "File exists", sweep),
    ]:
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        out = subprocess.run(
            [*command, *args],
            cwd=tmp_path,
            env={**env, "PREFECT_HOME": str(tmp_path / home)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        prog = "laminar-sweep" if command is sweep else "laminar"
        assert (out.returncode, out.stderr.splitlines()[-1:]) == (
            2,
            [
                f"{prog}: PREFECT_HOME '{tmp_path / home}' cannot hold the temporary Prefect "
                f"server's database ({why}): point PREFECT_HOME at a folder you can write to, "
                "or PREFECT_API_URL at a running Prefect server."
            ],
        ), out.stderr[-3000:]
        assert "Traceback" not in out.stderr and "temporary server" not in out.stderr
    assert (tmp_path / "file").read_text() == "mine\n"


def test_hub_model_neither_cached_nor_reachable(
    tmp_path: Path, article_server: ArticleServer
) -> None:
    args = ["--models", "laminar-test/not-cached", "--urls", article_server.url("/wiki/x")]
    env = {
        "HF_HOME": str(tmp_path / "hf"),
        "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "HF_HUB_OFFLINE": None,  # the user did not say offline: laminar finds out
    }
    out = run_cli(*args, "--artifacts-dir", str(tmp_path / "art"), cwd=tmp_path, env=env)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert said(out.stderr) == [
        "laminar: --models 'laminar-test/not-cached': cannot load its tokenizer; the Hugging "
        "Face hub cannot be reached and the model is not in the local cache: connect once to "
        "download it, or pass a local model folder."
    ]
    assert not (tmp_path / "art" / ".cache").exists()  # failed before Prefect started


class DeadHub:
    """A hub address that takes each connection and drops it at once (a network that resets):
    it counts the connections, so a test sees how often the hub was tried."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def test_offline_with_a_warm_cache_runs(tmp_path: Path, tiny_model: Path) -> None:
    """The hub resets every connection and the article server goes away after the first run:
    a cached hub model and a cached page are enough. The hub is asked once per run (the
    probe), never again: the offline switch holds for everything that loads the model."""
    hf = tmp_path / "hf"
    commit = hub_cache(hf, "laminar-test/tiny-gpt2", tiny_model)
    server = ArticleServer()
    server.routes[ARTICLE] = (200, wiki_page(["Prose of the cached day. " * 40] * 20).encode())
    cfg = quick_config(tiny_model, server, tmp_path / "art", models=["laminar-test/tiny-gpt2"])
    hub = DeadHub()
    env = {"HF_HOME": str(hf), "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": None}
    try:
        # as a user runs it: no Prefect server given, so the run starts its own on loopback,
        # and none of the suite's telemetry switches (tests/conftest.py) in the environment
        alone = {**env, "PREFECT_API_URL": None}
        alone |= {"DO_NOT_TRACK": None, "PREFECT_SERVER_ANALYTICS_ENABLED": None}
        first = run_cli(*to_args(cfg), "--layers", "0", cwd=tmp_path, env=alone, timeout=240)
    finally:
        server.close()  # and now the article server is gone too
    assert first.returncode == 0, first.stderr
    assert hub.connections == 1  # the probe alone
    assert "SAE runs" not in first.stdout + first.stderr  # output piped, not a terminal: no bar
    assert "cannot be reached (ConnectionError): loading models from the local" in first.stderr
    assert "Starting temporary server on http://127.0.0.1:" in first.stderr
    # no telemetry tried: an offline server logged "ERROR ... Failed to send telemetry"
    assert not [x for x in first.stderr.splitlines() if "| ERROR" in x], first.stderr[-3000:]
    [report] = [
        line.split("report: ")[1] for line in first.stdout.splitlines() if "report: " in line
    ]
    prov = (Path(report).parent / "provenance.json").read_text()
    assert f'"hub_revision": "{commit}"' in prov  # the snapshot that was loaded

    second = run_cli(*to_args(cfg), "--layers", "0", "--epochs", "4", cwd=tmp_path, env=env)
    hub.close()
    assert second.returncode == 0, second.stderr
    assert hub.connections == 2  # this run's probe alone
    states = dict(re.findall(r"Task run '([^']+)' - Finished in state (\w+)\(", second.stderr))
    assert states[f"fetch {cfg.urls[0]}"] == "Cached"  # the page, from the cache
    assert states["sae tiny-gpt2 L0"] == "Completed"  # the new epochs were trained
