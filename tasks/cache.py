"""Content-addressed cache keys for Prefect tasks, so a rerun resumes instead of recomputing.

Prefect's default policy includes the run id (nothing is reused across runs) and hashes only the
task function's own source. Here a key is the hash of
  * the config fields the task depends on (not the whole config: another `--epochs` must not
    re-extract activations),
  * the source of every module the task's result depends on,
  * the other inputs as canonical JSON; upstream results are small records that carry the
    sha256 of the files they point to, so a changed file changes the key.
Before a key is handed to Prefect, the record it would replay is checked: if a file it names
has vanished or changed size, the record is dropped and the task runs again."""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from prefect.cache_policies import CachePolicy

from tasks.config import Config, stable_hash
from tasks.store import verify

log = logging.getLogger(__name__)


def _source_digest(modules: tuple[ModuleType, ...]) -> str:
    return stable_hash([inspect.getsource(m) for m in modules])


def _file_records(obj: Any) -> list[dict[str, Any]]:
    """Every {'path', 'size', 'sha256'} record nested anywhere in a task result."""
    if isinstance(obj, dict):
        if {"path", "size", "sha256"} <= obj.keys():
            return [obj]
        return [r for v in obj.values() for r in _file_records(v)]
    if isinstance(obj, list | tuple):
        return [r for v in obj for r in _file_records(v)]
    return []


def _drop_if_stale(record_path: Path) -> None:
    """Delete a cached Prefect result whose files are gone or truncated."""
    try:
        payload = json.loads(record_path.read_text())
        result = json.loads(payload["result"])
    except FileNotFoundError:
        return
    except (ValueError, KeyError, TypeError):
        log.warning("cache record %s is unreadable; recomputing", record_path)
        record_path.unlink(missing_ok=True)
        return
    stale = [r["path"] for r in _file_records(result) if not verify(r)]
    if stale:
        log.warning("cached result names missing or changed files %s; recomputing", stale)
        record_path.unlink(missing_ok=True)


@dataclass
class ContentKey(CachePolicy):
    """Key = config fields + module sources + input records (see the module docstring)."""

    fields: tuple[str, ...] = ()
    modules: tuple[ModuleType, ...] = ()
    exclude: tuple[str, ...] = field(default=())

    def compute_key(
        self,
        task_ctx: Any,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        parts: dict[str, Any] = {"task": task_ctx.task.name}
        own = inspect.getmodule(task_ctx.task.fn)
        parts["source"] = _source_digest((own, *self.modules) if own else self.modules)
        for name, value in sorted(inputs.items()):
            if name in self.exclude:
                continue
            parts[name] = value.subset(*self.fields) if isinstance(value, Config) else value
        key = f"{task_ctx.task.name.replace(' ', '-')}-{stable_hash(parts)[:32]}"
        storage = getattr(task_ctx.task, "result_storage", None)
        if isinstance(storage, str | Path):
            _drop_if_stale(Path(storage) / key)
        return key
