"""One command for the Prefect UI on this machine (`make ui`): a Prefect server on 127.0.0.1, the
laminar-local process work pool, every deployment in prefect.yaml, and a worker. Prints the UI
address; Ctrl-C, SIGTERM or a closed terminal (SIGHUP) stops the worker, then the server.

The server and worker never outlive the launcher, however it ends: a watchdog process holds the
read end of a pipe whose write end only the launcher has; when the launcher dies (even by
SIGKILL) the pipe closes and the watchdog ends both process groups. Each child is also asked to
receive SIGTERM when its parent dies (Linux's parent-death signal).

    LAMINAR_UI_PORT  port of the server (default 4200)
    LAMINAR_UI_HOST  address the server listens on (default 127.0.0.1, this machine only). Any
                     other address needs PREFECT_SERVER_API_AUTH_STRING ('user:password'): the
                     server then asks every client for it, and the launcher hands it to the
                     worker and its own commands as PREFECT_API_AUTH_STRING."""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's bin: prefect lives beside this python
LOOPBACK = "127.0.0.1"
POOL = "laminar-local"
STOP_GRACE_S = 10  # per signal, before the next, stronger one

# Run by the watchdog: read process-group ids until EOF (the launcher is gone), then end them.
WATCHDOG = r"""
import os, signal, sys, time
groups, done = [], False
for line in sys.stdin:
    if line.strip() == "done":
        done = True
        break
    groups.append(int(line))
if not done:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for g in groups:
            try: os.killpg(g, sig)
            except ProcessLookupError: pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            alive = []
            for g in groups:
                try: os.killpg(g, 0); alive.append(g)
                except ProcessLookupError: pass
            if not alive: break
            time.sleep(0.1)
"""


def say(message: str, err: bool = False) -> None:
    if err:
        print(f"laminar-ui: {message}", file=sys.stderr, flush=True)
    else:
        from tasks.cli import print_out

        print_out(f"laminar-ui: {message}")


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def port_free(host: str, port: int) -> bool:
    """Whether a server can listen on host:port (with SO_REUSEADDR, as uvicorn binds)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _child_setup() -> None:
    """In each child, before exec: its own process group, SIGTERM when the launcher dies, and
    SIGINT handled as usual (a parent that ignores it must not pass that on)."""
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Launcher:
    def __init__(self, host: str, port: int, home: Path):
        self.host, self.port, self.home = host, port, home
        # Clients on this machine reach a server on every interface through loopback.
        self.url = f"http://{LOOPBACK if host in ('0.0.0.0', '::') else host}:{port}"
        self.api = f"{self.url}/api"
        self.env = {**os.environ, "PREFECT_API_URL": self.api}
        # A run started from the UI is picked up within 2 s, not Prefect's 10 (one local worker
        # asking its own server: cheap); a value in the environment wins.
        self.env.setdefault("PREFECT_WORKER_QUERY_SECONDS", "2")
        if auth := os.environ.get("PREFECT_SERVER_API_AUTH_STRING"):
            self.env["PREFECT_API_AUTH_STRING"] = auth  # the worker and the CLI log in with it
        self.children: list[subprocess.Popen[bytes]] = []
        self.watchdog = subprocess.Popen(
            [sys.executable, "-c", WATCHDOG], stdin=subprocess.PIPE, start_new_session=True
        )

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.home / f"{name}.log", "wb")  # noqa: SIM115 (the child owns it)
        proc = subprocess.Popen(
            [str(BIN / "prefect"), *args],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_child_setup,
        )
        self.children.append(proc)
        assert self.watchdog.stdin is not None
        self.watchdog.stdin.write(f"{proc.pid}\n".encode())  # its group id: it called setsid
        self.watchdog.stdin.flush()
        return proc

    def prefect(self, name: str, *args: str) -> bool:
        """A short prefect CLI command against the server; its output goes to NAME.log."""
        with open(self.home / f"{name}.log", "wb") as log:
            done = subprocess.run(
                [str(BIN / "prefect"), *args], cwd=REPO, env=self.env, stdout=log, stderr=log
            )
        return done.returncode == 0

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api}/health", timeout=2):
                return True
        except OSError:
            return False

    def wait_healthy(self, server: subprocess.Popen[bytes], limit_s: float = 120) -> None:
        deadline = time.monotonic() + limit_s
        while not self.healthy():
            if server.poll() is not None:
                raise SystemExit(self.fail(f"the server died; see {self.home / 'server.log'}"))
            if time.monotonic() > deadline:
                raise SystemExit(self.fail(f"the server did not answer in {limit_s:.0f} s"))
            time.sleep(0.5)

    def fail(self, message: str) -> int:
        say(message, err=True)
        self.stop()
        return 1

    def stop(self) -> None:
        """The worker first (it reports its runs to the server), then the server."""
        for proc in reversed(self.children):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                try:
                    proc.wait(STOP_GRACE_S)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self.watchdog.stdin is not None:
            with contextlib.suppress(OSError):
                self.watchdog.stdin.write(b"done\n")
                self.watchdog.stdin.close()
        self.watchdog.wait()


def prefect_home() -> Path:
    from prefect.settings import get_current_settings

    home = Path(get_current_settings().home)
    home.mkdir(parents=True, exist_ok=True)
    return home


USAGE = "usage: laminar-ui   (no arguments: the environment sets it)\n" + (__doc__ or "")


def port_of(text: str) -> int | None:
    """LAMINAR_UI_PORT as a port the server can listen on (1-65535), or None."""
    text = text.strip()
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
        return None
    return int(text)


def refusal(host: str, port_text: str) -> str:
    """Why the launcher will not start, as one sentence; '' when it may."""
    port = port_of(port_text)
    if port is None:
        return (
            f"LAMINAR_UI_PORT='{port_text}' is not a port: give a number from 1 to 65535, e.g. "
            "LAMINAR_UI_PORT=4201 make ui."
        )
    try:
        socket.getaddrinfo(host, port)
    except (socket.gaierror, UnicodeError):
        return (
            f"LAMINAR_UI_HOST={host} does not resolve (no such name): give one of this machine's "
            "addresses (0.0.0.0 for all of them), or leave it unset for 127.0.0.1."
        )
    if not is_loopback(host) and not os.environ.get("PREFECT_SERVER_API_AUTH_STRING"):
        return (
            f"LAMINAR_UI_HOST={host} would open the Prefect server (runs, logs, deployments) to "
            "the network without a password: set PREFECT_SERVER_API_AUTH_STRING='user:password' "
            "as well, or keep the default 127.0.0.1 and reach it through an SSH tunnel."
        )
    if not port_free(host, port):
        return (
            f"port {port} on {host} is already in use (another Prefect server?): stop that "
            f"process, or choose another port, e.g. LAMINAR_UI_PORT={port + 1} make ui."
        )
    return ""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        from tasks.cli import print_out

        print_out(USAGE)
        return 0
    if argv:
        say(
            f"takes no arguments, but was given '{' '.join(argv)}': set LAMINAR_UI_PORT and "
            "LAMINAR_UI_HOST in its environment instead (laminar-ui --help).",
            err=True,
        )
        return 2
    host = os.environ.get("LAMINAR_UI_HOST") or LOOPBACK  # set but empty: the default
    port_text = os.environ.get("LAMINAR_UI_PORT") or "4200"
    if problem := refusal(host, port_text):
        say(problem, err=True)
        return 2
    port = int(port_text)
    home = prefect_home()
    launcher = Launcher(host, port, home)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        server = launcher.start("server", "server", "start", "--host", host, "--port", str(port))
        launcher.wait_healthy(server)
        if not launcher.prefect("pool", "work-pool", "inspect", POOL) and not launcher.prefect(
            "pool", "work-pool", "create", POOL, "--type", "process"
        ):
            return launcher.fail(f"creating the work pool failed; see {home / 'pool.log'}")
        if not launcher.prefect("deploy", "--no-prompt", "deploy", "--all"):
            return launcher.fail(f"deploying failed; see {home / 'deploy.log'}")
        worker = launcher.start("worker", "worker", "start", "--pool", POOL)
        (home / "laminar-ui.pids").write_text(f"{server.pid} {worker.pid}\n")
        login = (
            " (log in with PREFECT_SERVER_API_AUTH_STRING)"
            if "PREFECT_API_AUTH_STRING" in (launcher.env)
            else ""
        )
        say(
            f"Prefect UI at {launcher.url}{login} (deployments laminar/full, laminar/gpt2-small, "
            f"laminar/quick, sweep/recipes; logs in {home}). Ctrl-C stops it."
        )
        worker.wait()
        return launcher.fail(f"the worker stopped; see {home / 'worker.log'}")
    except KeyboardInterrupt:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop short
        started = time.monotonic()
        launcher.stop()
        say(f"stopped in {time.monotonic() - started:.1f} s")
        return 0


if __name__ == "__main__":
    sys.exit(main())
