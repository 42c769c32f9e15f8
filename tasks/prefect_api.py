"""Every use of Prefect's private API, in one place.

laminar needs four things Prefect has no public API for: the lock files' paths and Prefect's
per-process lock table (to release a lock whose holder died), the size of the flow's thread pool,
the Dask future under Prefect's (to say why a worker died) and the temporary API server this
process started (its address, to point Dask workers at it; whether one runs, to let it record
the run before it stops at exit). Each is reached only through this module, and `missing()` lists
the names a Prefect release has taken away: tests/test_prefect_api.py fails with that list, so an
upgrade breaks one test, loudly, instead of laminar quietly.

pyproject.toml pins prefect to the minor version these were checked against (see
docs/development.md, "Moving the Prefect pin")."""

from __future__ import annotations

import atexit
import inspect
import sys
import time
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.locking.filesystem import FileSystemLockManager


class LockFiles(FileSystemLockManager):
    """Prefect's file lock manager with its private parts behind public names: `lock_path`,
    `forget` and the overridable `read_info` (Prefect's `_get_lock_info`)."""

    def lock_path(self, key: str) -> Path:
        return Path(self._lock_path_for_key(key))

    def forget(self, key: str) -> None:
        """Drop this process's memory of the lock (after its file was deleted)."""
        self._locks.pop(key, None)

    def read_info(self, key: str, use_cache: bool) -> Any:
        """The lock file's content ({'holder', 'expiration', 'path', ...}) or None if absent."""
        return super()._get_lock_info(key, use_cache=use_cache)

    def _get_lock_info(self, key: str, use_cache: bool = True) -> Any:
        return self.read_info(key, use_cache)


def thread_slots(runner: Any) -> int:
    """How many tasks a ThreadPoolTaskRunner runs at once."""
    return getattr(runner, "_max_workers", 1) or 1


def dask_future(future: Any) -> Any:
    """The distributed.Future under a PrefectDaskFuture (None for other futures)."""
    return getattr(future, "wrapped_future", None)


def temporary_server_url() -> str:
    """The API URL of the temporary Prefect server this process started ('' if none runs)."""
    # Prefect imports its server's module to start one: a process that has not imported it runs
    # none, and need not spend the import (1.5 s of CPU) to learn so after every run.
    module = sys.modules.get("prefect.server.api.server")
    if module is None:
        return ""
    server = module.SubprocessASGIServer()  # a singleton: the one the flow already talks to
    return server.api_url if server.port is not None else ""


def record_before_exit(flow: Any, flow_run: Any, state: Any) -> None:
    """A flow's on_running hook: when the run is a top-level one on a temporary server this
    process started, the process waits at exit until that server has recorded the run (see
    `settle_temporary_server`), whoever called the flow: a command, a script, a notebook.
    Registered as the run starts, so it runs before the server's own stop at exit, which Prefect
    registered as the server started (atexit runs last in, first out). A sweep's points are
    subflows: their parent's wait reads them. With a server given, Prefect starts none, so
    `temporary_server_url` is '' and nothing is registered."""
    if flow_run.parent_task_run_id is None and temporary_server_url():
        atexit.register(settle_temporary_server, flow_run.id)


def settle_temporary_server(flow_run_id: UUID, timeout_s: float = 10.0) -> None:
    """Wait, at most timeout_s, until the temporary server this process started has recorded a
    final state for every task run of the flow run and of its subflows. Prefect 3 sends task
    runs' states as events, which the server's task-run recorder writes behind the run; Prefect
    stops the server at exit, and with events still queued the recorder was cancelled mid-write:
    an ERROR traceback (`Error flushing 1 events`, `Exception during reset or similar`) at the
    end of a run that succeeded, and task runs left Running in the server's database. Does
    nothing for a real server (it keeps running) and gives up quietly if the server is gone."""
    if not temporary_server_url():
        return
    from prefect.client.orchestration import get_client
    from prefect.events.worker import EventsWorker

    deadline = time.monotonic() + timeout_s
    try:
        EventsWorker.drain_all(timeout=timeout_s)  # what the client has not sent yet
        with get_client(sync_client=True) as client:
            seen = None
            while time.monotonic() < deadline:
                now = task_run_states(client, flow_run_id)
                # the recorder may not have created the last task runs yet: a snapshot that is
                # all final and the same twice running
                if now == seen and all(final for _, final in now):
                    return
                seen = now
                time.sleep(0.1)
    except Exception:  # a server that died has nothing left to record
        return


def task_run_states(
    client: Any, flow_run_id: UUID, page: int = 200
) -> frozenset[tuple[UUID, bool]]:
    """(task run id, whether its state is final) for every task run the server has recorded
    for the flow run and its subflows (a sweep's points), read `page` at a time (200: the
    server's default limit, which a sweep's points can pass)."""
    from prefect.client.schemas import filters as f

    under = f.FlowRunFilter(parent_flow_run_id=f.FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
    flow_runs = [flow_run_id] + [run.id for run in client.read_flow_runs(flow_run_filter=under)]
    runs = f.FlowRunFilter(id=f.FlowRunFilterId(any_=flow_runs))
    states: set[tuple[UUID, bool]] = set()
    offset = 0
    while True:
        batch = client.read_task_runs(flow_run_filter=runs, limit=page, offset=offset)
        states |= {(run.id, bool(run.state and run.state.is_final())) for run in batch}
        offset += len(batch)
        if len(batch) < page:
            return frozenset(states)


def missing() -> list[str]:
    """The private names above that this Prefect no longer has, or has in another shape."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask.task_runners import PrefectDaskFuture

    gone = []
    for name in ("_lock_path_for_key", "_get_lock_info"):
        if not callable(getattr(FileSystemLockManager, name, None)):
            gone.append(f"FileSystemLockManager.{name}")
    if "use_cache" not in inspect.signature(FileSystemLockManager._get_lock_info).parameters:
        gone.append("FileSystemLockManager._get_lock_info(use_cache=)")
    if not isinstance(getattr(FileSystemLockManager(Path(".")), "_locks", 0), dict):
        gone.append("FileSystemLockManager._locks (a dict)")
    if not isinstance(getattr(ThreadPoolTaskRunner(max_workers=3), "_max_workers", 0), int):
        gone.append("ThreadPoolTaskRunner._max_workers")
    if "wrapped_future" not in dir(PrefectDaskFuture):
        gone.append("PrefectDaskFuture.wrapped_future")
    if not isinstance(getattr(SubprocessASGIServer, "api_url", None), property):
        gone.append("SubprocessASGIServer.api_url")
    if "self.port" not in inspect.getsource(SubprocessASGIServer.__init__):
        gone.append("SubprocessASGIServer().port")
    return gone
