"""Every use of Prefect's private API, in one place.

laminar needs four things Prefect has no public API for: the lock files' paths and Prefect's
per-process lock table (to release a lock whose holder died), the size of the flow's thread pool,
the Dask future under Prefect's (to say why a worker died) and the address of the temporary API
server this process started (to point Dask workers at it). Each is reached only through this
module, and `missing()` lists the names a Prefect release has taken away: tests/test_prefect_api.py
fails with that list, so an upgrade breaks one test, loudly, instead of laminar quietly.

pyproject.toml pins prefect to the minor version these were checked against (see
docs/development.md, "Moving the Prefect pin")."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

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
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # a singleton: the one the flow already talks to
    return server.api_url if server.port is not None else ""


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
