"""Content-addressed cache keys for Prefect tasks, so a rerun resumes instead of recomputing.

Prefect's default policy includes the run id (nothing is reused across runs) and hashes only the
task function's own source. Here a key is the hash of
  * the config fields the task depends on (not the whole config: another `--epochs` must not
    re-extract activations),
  * the code of every module the task's result depends on, as Python parses it: comments,
    docstrings, type annotations, imports and layout do not count, so a change that leaves what
    runs alone (a typed signature, a reworded comment) keeps every key. The modules are found
    from the imports (tasks.codehash): the task's module and every tasks module it reaches,
    less NOT_COMPUTING (each with its reason), so a new helper cannot fall out of the key,
  * the other inputs as canonical JSON; upstream results are small records that carry the
    sha256 of the files they point to, so a changed file changes the key.
Before a key is handed to Prefect, the record it would replay is checked: if a file it names
has vanished or changed size, or the record was not written by laminar's JSON serializer (Prefect
would decode it with whatever the record names: pickle runs code), the record is dropped and the
task runs again."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy

from tasks import codehash
from tasks.config import Config, stable_hash
from tasks.prefect_api import LockFiles
from tasks.store import atomic_path, pid_alive, verify

log = logging.getLogger(__name__)


# Modules a task may import that cannot change what it computes: left out of every key (and
# not followed: what only they import is not counted for them). Each says why.
NOT_COMPUTING = frozenset(
    {
        "tasks.config",  # the settings: their values enter keys as fields; its code checks them
        "tasks.cli",  # the command line
        "tasks.records",  # the records' types
        "tasks.paths",  # where files go: a replayed record names its files, with their sha256
        "tasks.host",  # names the process, host and device a result ran on
        "tasks.prefect_api",  # Prefect's private names
        "tasks.progress",  # progress lines and the estimate
        "tasks.cache",  # the keys themselves
        "tasks.codehash",  # how code is hashed
    }
)


@functools.cache
def code_digest(module: str) -> str:
    """Hash of what a module runs (tasks.codehash), the same on every Python 3.10+."""
    return codehash.source_digest(codehash.module_file(module).read_text())


@functools.cache
def computing_modules(module: str, leave_out: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The modules a task defined in `module` depends on: it and every tasks module it imports,
    transitively, less NOT_COMPUTING and the task's own `leave_out`."""
    return codehash.reachable(module, NOT_COMPUTING | set(leave_out))


def _source_digest(modules: tuple[str, ...]) -> str:
    return stable_hash([code_digest(m) for m in modules])


def _file_records(obj: Any) -> list[dict[str, Any]]:
    """Every {'path', 'size', 'sha256'} record nested anywhere in a task result."""
    if isinstance(obj, dict):
        if {"path", "size", "sha256"} <= obj.keys():
            return [obj]
        return [r for v in obj.values() for r in _file_records(v)]
    if isinstance(obj, list | tuple):
        return [r for v in obj for r in _file_records(v)]
    return []


# The serializer laminar writes its records with (result_serializer="json", Prefect's defaults).
# Prefect decodes a record with whatever serializer the record itself names, so a record naming
# another (pickle, a jsonlib or object decoder of its choosing) would run code on replay.
JSON_SERIALIZER = {
    "type": "json",
    "jsonlib": "json",
    "object_encoder": "prefect.serializers.prefect_json_object_encoder",
    "object_decoder": "prefect.serializers.prefect_json_object_decoder",
    "dumps_kwargs": {},
    "loads_kwargs": {},
}


def _untrusted(payload: Any, result: Any) -> str | None:
    """Why a record is not one laminar wrote, or None: its serializer must be JSON_SERIALIZER,
    and its result plain JSON (no object that Prefect's decoder would import a class for)."""
    serializer = (
        payload.get("metadata", {}).get("serializer") if isinstance(payload, dict) else None
    )
    if serializer != JSON_SERIALIZER:
        kind = serializer.get("type") if isinstance(serializer, dict) else serializer
        return f"its serializer is {kind!r}, not laminar's JSON"
    found: list[Any] = [result]
    while found:
        value = found.pop()
        if isinstance(value, dict):
            if {"__class__", "__exc_type__"} & value.keys():
                return "its result names a Python class to build"
            found.extend(value.values())
        elif isinstance(value, list):
            found.extend(value)
    return None


def _drop_if_stale(record_path: Path, locks: Any) -> None:
    """Delete a cached Prefect result whose files are gone or truncated, that laminar did not
    write (see _untrusted: replaying it could run code), or that is unreadable while no live run
    holds its lock (one that does may be writing it right now)."""
    try:
        payload = json.loads(record_path.read_text())
        result = json.loads(payload["result"])
    except FileNotFoundError:
        return
    except (ValueError, KeyError, TypeError):
        if locks is not None and locks.is_locked(record_path.name):
            return
        log.warning("cache record %s is unreadable; recomputing", record_path)
        record_path.unlink(missing_ok=True)
        return
    why = _untrusted(payload, result)
    if why:
        log.warning("cache record %s was not written by laminar (%s); dropped", record_path, why)
        record_path.unlink(missing_ok=True)
        return
    stale = [r["path"] for r in _file_records(result) if not verify(r)]
    if stale:
        log.warning("cached result names missing or changed files %s; recomputing", stale)
        record_path.unlink(missing_ok=True)


FAILURE_AGE_S = 5.0  # a failure record younger than this may be read right now by its run


def sweep_failures(results: Path, older_than_s: float = FAILURE_AGE_S) -> int:
    """Delete the records Prefect keeps of failed tasks and flows (a random name, an exception
    for a result): nothing replays them, so they would pile up run after run. Each run sweeps
    those older than a few seconds as it starts (its own run reads its failures at once).
    Returns how many went."""
    gone, now = 0, time.time()
    for path in results.glob("*") if results.is_dir() else []:
        if path.name.count("-") or now - path.stat().st_mtime < older_than_s:
            continue  # a content key (task-<hash>) names a cache record: kept
        try:
            result = json.loads(json.loads(path.read_text())["result"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(result, dict) and "__exc_type__" in result:
            path.unlink(missing_ok=True)
            gone += 1
    return gone


@dataclass
class ContentKey(CachePolicy):
    """Key = config fields + module sources + input records (see the module docstring)."""

    fields: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()  # inputs that name a run but do not change its result
    # modules the task's module imports that this task never runs (say why where it is used)
    leave_out: tuple[str, ...] = ()

    def compute_key(
        self,
        task_ctx: Any,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        parts: dict[str, Any] = {"task": task_ctx.task.name}
        parts["source"] = _source_digest(
            computing_modules(task_ctx.task.fn.__module__, self.leave_out)
        )
        for name, value in sorted(inputs.items()):
            if name in self.exclude:
                continue
            parts[name] = value.subset(*self.fields) if isinstance(value, Config) else value
        key = f"{task_ctx.task.name.replace(' ', '-')}-{stable_hash(parts)[:32]}"
        storage = getattr(task_ctx.task, "result_storage", None)
        if isinstance(storage, str | Path):
            _drop_if_stale(Path(storage) / key, getattr(self, "lock_manager", None))
        return key


# Prefect creates a lock file, then writes its holder; laminar then adds the pid and host. Each
# step follows the last within milliseconds, so a lock file still without a pid after this many
# seconds was left by a process that died while taking the lock (Prefect's locks never expire).
LOCK_GRACE_S = 10.0


def _read_or(path: str, default: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return default


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def process_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, /proc/PID/stat's 22nd field), or None
    where that cannot be read: a pid reused by a later process has another start."""
    stat = _read_or(f"/proc/{pid}/stat", "")
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


class ProcessLockManager(LockFiles):
    """Prefect's file locks, plus who holds them: pid, host, boot and pid namespace, and the
    process's start. Released instead of making every later run wait forever: a lock whose
    process is gone (kill -9) where that can be checked (this host, this boot and this pid
    namespace: containers that share a host name do not share pids), and a lock file that is
    empty or has no pid LOCK_GRACE_S after it was last written (its taker died)."""

    host = socket.gethostname()
    boot = _read_or("/proc/sys/kernel/random/boot_id", "")
    pid_namespace = _pid_namespace()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._told: set[str] = set()  # keys held on another machine that we warned about

    def acquire_lock(self, key: str, holder: str, *args: Any, **kwargs: Any) -> bool:
        acquired = super().acquire_lock(key, holder, *args, **kwargs)
        if acquired:
            path = self.lock_path(key)
            info = json.loads(path.read_bytes())
            me = {"pid": os.getpid(), "host": self.host, "boot": self.boot}
            me |= {"pid_namespace": self.pid_namespace, "started": process_start(os.getpid())}
            data = json.dumps({**info, **me}).encode()
            with atomic_path(path) as tmp:  # readers see the old or the new file, never half
                tmp.write_bytes(data)
        return acquired

    def read_info(self, key: str, use_cache: bool) -> Any:
        # Prefect creates a lock file, then writes it: a reader in between sees an empty file.
        # That is a lock being taken, so: locked, holder unknown (never us).
        try:
            return super().read_info(key, use_cache)
        except ValueError:
            return {"holder": "", "expiration": None, "path": self.lock_path(key)}

    def _here(self, info: dict[str, Any]) -> bool:
        """Whether the holder's pid can be checked from this process: the same host, and where
        the lock says so, the same boot and pid namespace."""
        same = [(info.get("host"), self.host)]
        same += [
            (info[f], v)
            for f, v in (("boot", self.boot), ("pid_namespace", self.pid_namespace))
            if f in info
        ]
        return all(a == b for a, b in same)

    def _gone(self, info: dict[str, Any]) -> bool:
        pid, started = info.get("pid"), info.get("started")
        if not isinstance(pid, int):
            return False
        return not pid_alive(pid) or (started is not None and process_start(pid) != started)

    def is_locked(self, key: str, use_cache: bool = False) -> bool:
        if not super().is_locked(key, use_cache=use_cache):
            return False
        info, ino, age = self._snapshot(key)
        pid, host = info.get("pid"), info.get("host")
        if self._here(info) and self._gone(info):
            log.warning("releasing the lock on %s left by process %s, which is gone", key, pid)
            return self._release(key, ino)
        if pid is None and age > LOCK_GRACE_S:
            log.warning(
                "releasing the lock on %s: its file has had no holder pid for %.0f s, so the "
                "process taking it died",
                key,
                age,
            )
            return self._release(key, ino)
        if host and not self._here(info) and key not in self._told:
            # Another machine's pid cannot be checked from here: say what we wait on and how to
            # end the wait if that machine is gone.
            self._told.add(key)
            log.warning(
                "waiting for %s, which process %s on %s is computing; if that machine is gone, "
                "delete %s",
                key,
                pid,
                host,
                self.lock_path(key),
            )
        return True

    def _snapshot(self, key: str) -> tuple[dict[str, Any], tuple[int, bytes] | None, float]:
        """The lock file's record, its identity (inode and bytes: a file system may give a new
        file the inode of one just deleted) and its age in seconds, read from one open file (so
        they belong together); an empty or half-written record reads as {}."""
        try:
            fd = os.open(self.lock_path(key), os.O_RDONLY)
        except FileNotFoundError:
            return {}, None, 0.0
        try:
            st = os.fstat(fd)
            raw = os.read(fd, 1 << 16)
        finally:
            os.close(fd)
        try:
            info = json.loads(raw)
        except ValueError:
            info = {}
        info = info if isinstance(info, dict) else {}
        return info, (st.st_ino, raw), time.time() - st.st_mtime

    def _release(self, key: str, judged: tuple[int, bytes] | None) -> bool:
        """Remove the lock file judged stale (identity `judged`), and only that one: it is moved
        aside first, so a lock another run took meanwhile in its place is put back, not
        deleted. Returns whether the key is still locked."""
        path = self.lock_path(key)
        aside = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.released")
        try:
            os.rename(path, aside)
        except FileNotFoundError:  # another run released it first
            self.forget(key)
            return False
        if judged is not None and (aside.stat().st_ino, aside.read_bytes()[: 1 << 16]) != judged:
            # a new lock took the stale one's place: put it back
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
            aside.unlink()
            return True
        aside.unlink()
        self.forget(key)
        return False
