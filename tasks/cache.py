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

import functools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy

from tasks import codehash
from tasks.config import Config
from tasks.settings import stable_hash
from tasks.store import verify

log = logging.getLogger(__name__)


# Modules a task may import that cannot change what it computes: left out of every key (and
# not followed: what only they import is not counted for them). Each says why.
NOT_COMPUTING = frozenset(
    {
        "tasks.config",  # the settings: their values enter keys as fields; its code checks them
        "tasks.config_input",  # the settings' fields (declarations): their values enter keys
        "tasks.config_sae",
        "tasks.config_run",
        "tasks.settings",  # Config's helpers: they check and name values that enter keys as such
        "tasks.cli",  # the command line
        "tasks.records",  # the records' types
        "tasks.paths",  # where files go: a replayed record names its files, with their sha256
        "tasks.host",  # names the process, host and device a result ran on
        "tasks.prefect_api",  # Prefect's private names
        "tasks.progress",  # progress lines and the estimate
        "tasks.cache",  # the keys themselves
        "tasks.codehash",  # how code is hashed
        "tasks.hf",  # transformers, loaded once a process before its names are used
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
