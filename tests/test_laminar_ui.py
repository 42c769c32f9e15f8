"""The UI launcher (`make ui` = scripts/laminar-ui.sh -> scripts/laminar_ui.py): its server and
worker end with it however it ends (Ctrl-C, a closed terminal, kill -9), and a port already in
use is one sentence before anything starts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ROOT, UI, free_port, prefect_home

pytestmark = pytest.mark.ui


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) is gone for our purpose
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ")[1][0] != "Z"


def gone_within(pids: list[int], limit_s: float) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGHUP], ids=["kill -9", "hangup"])
def test_server_and_worker_end_with_the_launcher(how: signal.Signals, tmp_path: Path) -> None:
    ui = UI(prefect_home(tmp_path / "home"))
    try:
        children = [int(p) for p in (tmp_path / "home" / "laminar-ui.pids").read_text().split()]
        assert all(alive(p) for p in children) and not port_free(ui.port)  # the premise
        # the worker asks for new runs every 2 s (Prefect's default: 10 s)
        worker_env = Path(f"/proc/{children[1]}/environ").read_bytes().split(b"\0")
        assert b"PREFECT_WORKER_QUERY_SECONDS=2" in worker_env
        os.kill(ui.proc.pid, how)
        ui.proc.wait(30)
        # kill -9: the watchdog ends them (SIGTERM, then SIGKILL 5 s later); hang-up: a clean
        # stop (worker, then server, each given 10 s before SIGKILL).
        assert gone_within(children, 30), "the server or worker outlived the launcher"
        assert port_free(ui.port)
        if how == signal.SIGHUP:
            assert ui.proc.returncode == 0
            assert "laminar-ui: stopped in" in ui.proc.stdout.read()  # type: ignore[union-attr]
    finally:
        ui.stop()


def refused(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The launcher as `make ui` starts it, with a private Prefect home and `env` added."""
    full = {**os.environ, "PREFECT_HOME": str(tmp_path / "home"), **env}
    full.pop("PREFECT_SERVER_API_AUTH_STRING", None)
    out = subprocess.run(
        [str(ROOT / "scripts" / "laminar-ui.sh"), *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert not (tmp_path / "home").exists()  # nothing was started
    return out


def test_port_in_use_is_one_sentence_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = refused(tmp_path, LAMINAR_UI_PORT=str(port))
    assert out.stderr.strip() == (
        f"laminar-ui: port {port} on 127.0.0.1 is already in use (another Prefect server?): "
        f"stop that process, or choose another port, e.g. LAMINAR_UI_PORT={port + 1} make ui."
    )


def test_off_loopback_without_a_password_is_refused(tmp_path: Path) -> None:
    out = refused(tmp_path, LAMINAR_UI_HOST="0.0.0.0", LAMINAR_UI_PORT=str(free_port()))
    assert out.stderr.strip() == (
        "laminar-ui: LAMINAR_UI_HOST=0.0.0.0 would open the Prefect server (runs, logs, "
        "deployments) to the network without a password: set "
        "PREFECT_SERVER_API_AUTH_STRING='user:password' as well, or keep the default 127.0.0.1 "
        "and reach it through an SSH tunnel."
    )


@pytest.mark.parametrize(
    ("args", "env", "sentence"),
    [
        (
            [],
            {"LAMINAR_UI_PORT": "42OO"},
            "LAMINAR_UI_PORT='42OO' is not a port: give a number from 1 to 65535, e.g. "
            "LAMINAR_UI_PORT=4201 make ui.",
        ),
        (  # 0 is no port to open a browser on: the server took a random one and never answered
            [],
            {"LAMINAR_UI_PORT": "0"},
            "LAMINAR_UI_PORT='0' is not a port: give a number from 1 to 65535, e.g. "
            "LAMINAR_UI_PORT=4201 make ui.",
        ),
        (
            [],
            {"LAMINAR_UI_PORT": "65536"},
            "LAMINAR_UI_PORT='65536' is not a port: give a number from 1 to 65535, e.g. "
            "LAMINAR_UI_PORT=4201 make ui.",
        ),
        (
            [],
            {"LAMINAR_UI_HOST": "ui.invalid"},  # before the password check: a name, not a place
            "LAMINAR_UI_HOST=ui.invalid does not resolve (no such name): give one of this "
            "machine's addresses (0.0.0.0 for all of them), or leave it unset for 127.0.0.1.",
        ),
        (  # the launcher reads no flags: one was silently ignored and the UI came up on 4200
            ["--port", "5000"],
            {},
            "takes no arguments, but was given '--port 5000': set LAMINAR_UI_PORT and "
            "LAMINAR_UI_HOST in its environment instead (laminar-ui --help).",
        ),
    ],
    ids=["letters", "zero", "too-high", "unresolvable", "a-flag"],
)
def test_a_bad_port_host_or_argument_is_one_sentence(
    tmp_path: Path, args: list[str], env: dict[str, str], sentence: str
) -> None:
    out = refused(tmp_path, *args, **env)
    assert out.stderr.strip() == f"laminar-ui: {sentence}"


def test_help_names_the_settings(tmp_path: Path) -> None:
    out = subprocess.run(
        [str(ROOT / "scripts" / "laminar-ui.sh"), "--help"],
        env={**os.environ, "PREFECT_HOME": str(tmp_path / "home")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout.startswith("usage: laminar-ui")
    assert "LAMINAR_UI_PORT" in out.stdout and "LAMINAR_UI_HOST" in out.stdout
    assert not (tmp_path / "home").exists()  # nothing was started
