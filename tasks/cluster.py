"""Where the per-layer work runs: this process's thread pool, or a Dask cluster through
prefect-dask's DaskTaskRunner (a local cluster of worker processes, or a running one reached by
its scheduler's address: `dask scheduler` + `dask worker`, or dask-cuda with one worker per GPU).

Tasks only ever exchange file records (paths + sha256), so a worker must see the artifacts dir
at the same path as the flow: a shared filesystem. That, the Prefect API, the device and the
`tasks` package are checked on every worker before any work is sent, so a misconfigured cluster
fails in seconds with one sentence instead of layer by layer.

Prefect and Dask are imported where used, so importing this module starts neither."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks import paths, security
from tasks.config import Config
from tasks.prefect_api import temporary_server_url, thread_slots
from tasks.settings import LaminarError, resolve_device

CONNECT_TIMEOUT = 15  # s to reach a scheduler at --dask-address
WORKER_TIMEOUT = 60  # s to wait for a cluster with no workers yet to get one
BLAS_THREADS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# The scheduler of a local cluster that several flow runs of this process share (a sweep's
# points, run at once: flows/sweep.py), for the duration of shared_cluster's `with`; '' outside.
SHARED_SCHEDULER: contextvars.ContextVar[str] = contextvars.ContextVar(
    "laminar_shared_scheduler", default=""
)


@dataclass
class Pool:
    """A started Prefect task runner, and how the flow uses it."""

    runner: Any
    slots: int  # tasks it runs at once (the time-left estimate divides by it)
    remote: bool  # work runs in other processes: extraction goes there too

    def describe(self) -> str:
        return f"{'Dask' if self.remote else 'thread'} pool, {self.slots} at a time"


@contextlib.contextmanager
def fanout(cfg: Config) -> Iterator[Pool]:
    """The pool the (model, layer) tasks go to, for the duration of the fan-out."""
    from prefect.context import FlowRunContext

    if cfg.task_runner == "thread":
        runner = FlowRunContext.get().task_runner  # the flow's own ThreadPoolTaskRunner
        yield Pool(runner, slots=thread_slots(runner), remote=False)
        return
    from prefect_dask import DaskTaskRunner

    address = cfg.dask_address or SHARED_SCHEDULER.get()
    with environ_kept():
        quiet_dask()
        with api_for_workers() as api, DaskTaskRunner(**runner_options(cfg, address)) as runner:
            client = connect(runner, cfg)
            slots = check_workers(client, cfg, api)
            yield Pool(runner, slots=slots, remote=True)


def quiet_dask() -> None:
    """Dask's INFO lines (worker banners, every connection opened and closed) would bury the
    flow's own log: warnings and errors only, here and in the local workers, which read
    DASK_LOGGING__DISTRIBUTED as they start (set inside environ_kept, which takes it out)."""
    logging.getLogger("distributed").setLevel(logging.WARNING)
    os.environ["DASK_LOGGING__DISTRIBUTED"] = "warning"


@contextlib.contextmanager
def shared_cluster(cfg: Config) -> Iterator[str]:
    """One local cluster, as cfg's run would start for itself, for every flow run this context
    starts (a sweep's points, run at once): each run's fanout sends its work to it, so the
    cluster spreads the points' layers together. Yields its scheduler's address."""
    from distributed import LocalCluster

    with environ_kept():
        quiet_dask()
        try:
            cluster = LocalCluster(**runner_options(cfg)["cluster_kwargs"])
        except RuntimeError as exc:  # its worker processes did not start
            raise local_cluster_failed(exc) from None
        with cluster:
            token = SHARED_SCHEDULER.set(cluster.scheduler_address)
            try:
                yield cluster.scheduler_address
            finally:
                SHARED_SCHEDULER.reset(token)


def runner_options(cfg: Config, address: str = "") -> dict[str, Any]:
    """DaskTaskRunner arguments: the cluster at `address` (cfg's --dask-address, over TLS for a
    tls:// one; or a shared local one), or a local one of cfg.dask_workers processes running one
    task each, the machine's cores shared out between them (Dask's nanny would otherwise pin
    every worker's BLAS to one thread)."""
    if address := address or cfg.dask_address:
        client = {"timeout": CONNECT_TIMEOUT}
        if address == cfg.dask_address and (sec := security.dask_client(cfg)) is not None:
            client["security"] = sec
        return {"address": address, "client_kwargs": client}
    threads = str(max(1, (os.cpu_count() or 1) // cfg.dask_workers))
    return {
        "cluster_kwargs": {
            "n_workers": cfg.dask_workers,
            "threads_per_worker": 1,
            "processes": True,
            "env": dict.fromkeys(BLAS_THREADS, threads),
            # scheduler and dashboard on loopback only (Dask's dashboard default is every
            # interface); port 8787 when free, else Dask picks a free one and says so
            "host": "127.0.0.1",
            "dashboard_address": "127.0.0.1:8787",
        }
    }


@contextlib.contextmanager
def api_for_workers() -> Iterator[str]:
    """Point the workers at this flow's Prefect API. With no server configured the flow talks to
    a temporary one this process started; unless told its address, every Dask worker would
    start a server of its own (tens of seconds each). Yields that address ('' if a server was
    configured: the workers inherit PREFECT_API_URL with the rest of the flow's settings)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = "" if PREFECT_API_URL.value() else temporary_server_url()
    if not url:  # a configured server, or no temporary one running: nothing to point at
        yield ""
        return
    with temporary_settings({PREFECT_API_URL: url}):
        yield url


@contextlib.contextmanager
def environ_kept() -> Iterator[None]:
    """Dask's nanny writes its workers' settings (OMP_NUM_THREADS=1 and others) into this
    process's own environment before it spawns them; put the environment back afterwards, or
    every process the flow starts later would inherit one BLAS thread."""
    before = dict(os.environ)
    try:
        yield
    finally:
        for key in set(os.environ) - set(before):
            del os.environ[key]
        os.environ.update(before)


def connect(runner: Any, cfg: Config) -> Any:
    """The runner's Dask client (starting the local cluster, or reaching the scheduler)."""
    try:
        return runner.client
    except (OSError, TimeoutError) as exc:
        if cfg.dask_address.startswith("tls://"):
            raise LaminarError(
                f"--dask-address {cfg.dask_address}: no TLS connection to a Dask scheduler "
                f"({exc}); check that it runs there and that --dask-tls-ca, --dask-tls-cert and "
                "--dask-tls-key are the cluster's (a certificate it did not sign is refused)."
            ) from None
        raise LaminarError(
            f"--dask-address {cfg.dask_address}: no Dask scheduler answered ({exc}); start one "
            "with `dask scheduler` or fix the address."
        ) from None
    except RuntimeError as exc:  # the local cluster's worker processes did not start
        if cfg.dask_address:
            raise
        raise local_cluster_failed(exc) from None


def local_cluster_failed(exc: Exception) -> LaminarError:
    """The sentence for a local cluster whose worker processes did not start."""
    return LaminarError(
        f"the local Dask cluster did not start ({exc}): Dask starts its workers by "
        "re-importing the script that runs the flow, so a script of yours that calls "
        "laminar() must do it under `if __name__ == '__main__':`; or use --task-runner thread."
    )


def check_workers(client: Any, cfg: Config, api: str) -> int:
    """Wait for a worker, then ask every worker whether it can import laminar, has the device,
    can read and write the artifacts dir and reach the Prefect API; one sentence names the
    first that cannot.
    Returns the number of tasks the cluster runs at once."""
    where = cfg.dask_address or "the local cluster"
    try:
        client.wait_for_workers(1, timeout=WORKER_TIMEOUT)
    except TimeoutError:
        raise LaminarError(
            f"the Dask scheduler at {where} has no workers after {WORKER_TIMEOUT} s: start some "
            f"with `dask worker {cfg.dask_address or 'ADDRESS'}` and rerun."
        ) from None
    probe = paths.worker_probe(cfg.root, secrets.token_hex(8))
    probe.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    probe.write_text(token)
    try:
        answers = client.run(worker_problem, str(probe), token, api, cfg.device)
    except Exception as exc:  # Dask re-raises a worker's failed unpickling as a bare Exception
        if "No module named" not in str(exc):
            raise
        raise LaminarError(
            f"the Dask workers of {where} cannot import laminar ({exc}): start them in this "
            "project's environment (`pip install -e .`, or PYTHONPATH set to the repo root)."
        ) from None
    finally:
        probe.unlink(missing_ok=True)
    problems = {worker: p for worker, p in sorted(answers.items()) if p}
    if problems:
        worker, problem = next(iter(problems.items()))
        raise LaminarError(
            f"Dask worker {worker} {problem} ({len(problems)} of {len(answers)} workers "
            "affected): every worker must see the artifacts dir at the same path (a shared "
            "filesystem), reach the flow's Prefect API and have the --device asked for; fix "
            "that or use --task-runner thread."
        )
    # Asked of the scheduler now: the client's cached scheduler_info() is refreshed every few
    # seconds without its workers (n_workers=0), so reading it could count none.
    return sum(client.nthreads().values())


def worker_problem(probe: str, token: str, api: str, device: str = "auto") -> str:
    """Run on each worker: '' when it has the device, sees the flow's probe file, can write
    beside it and reach the API; else what is wrong, as the end of a sentence that starts with
    the worker's name."""
    try:
        resolve_device(device)
    except LaminarError:
        return f"has no CUDA GPU for --device {device}"
    path = Path(probe)
    try:
        if path.read_text() != token:
            return f"reads another file at '{path}' than the flow wrote"
        mine = path.with_name(f"{path.name}-{os.getpid()}")
        mine.write_text(token)
        mine.unlink()
    except OSError as exc:
        return f"cannot read and write '{path.parent}' ({exc.strerror})"
    if api:
        import httpx

        try:
            httpx.get(f"{api.rstrip('/')}/health", timeout=5).raise_for_status()
        except httpx.HTTPError as exc:
            return f"cannot reach the flow's Prefect API at {api} ({exc})"
    return ""
