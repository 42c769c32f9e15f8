"""Cache keys: only what a task depends on changes them; a record whose files vanished or
were truncated is dropped, so the task runs again instead of replaying it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tasks.cache import ContentKey
from tasks.config import Config
from tasks.store import file_record


def sample_task(cfg: Config, acts: dict) -> dict:
    return acts


def key(policy: ContentKey, storage: Path | None = None, **inputs: object) -> str:
    task = SimpleNamespace(name="sae", fn=sample_task, result_storage=storage)
    return policy.compute_key(SimpleNamespace(task=task), inputs, {})


def test_key_depends_on_declared_fields_and_inputs_only() -> None:
    policy = ContentKey(fields=("epochs", "lr"))
    acts = {"path": "/a/L00.parquet", "size": 10, "sha256": "aa"}
    base = key(policy, cfg=Config(), acts=acts)
    assert base == key(policy, cfg=Config(n_seqs=3, refresh=True), acts=acts)
    assert base != key(policy, cfg=Config(epochs=5), acts=acts)
    assert base != key(policy, cfg=Config(), acts={**acts, "sha256": "bb"})
    assert base.startswith("sae-")


def test_stale_record_is_dropped(tmp_path: Path) -> None:
    data = tmp_path / "L00.parquet"
    data.write_bytes(b"0123456789")
    acts = file_record(data)
    policy = ContentKey(fields=())
    k = key(policy, tmp_path, cfg=Config(), acts=acts)
    record = tmp_path / k
    record.write_text(json.dumps({"metadata": {}, "result": json.dumps({"acts": acts})}))

    key(policy, tmp_path, cfg=Config(), acts=acts)
    assert record.exists()  # files intact: the record stays and Prefect replays it
    data.write_bytes(b"01234")  # truncated
    assert key(policy, tmp_path, cfg=Config(), acts=acts) == k
    assert not record.exists()  # dropped: the task runs again under the same key


def test_locks_of_dead_processes_here_are_released_another_machines_are_explained(
    tmp_path: Path, caplog: Any
) -> None:
    import subprocess
    import sys

    from tasks.cache import ProcessLockManager

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    locks = ProcessLockManager(lock_files_directory=tmp_path)
    for key, host in [("here", ProcessLockManager.host), ("there", "gpu-node-7")]:
        assert locks.acquire_lock(key, holder=f"run-{key}")
        path = Path(locks._lock_path_for_key(key))
        info = json.loads(path.read_text())
        path.write_text(json.dumps({**info, "pid": dead.pid, "host": host}))

    other = ProcessLockManager(lock_files_directory=tmp_path)  # a second run's view
    assert not other.is_locked("here")  # its holder died on this machine: released
    with caplog.at_level("WARNING", logger="tasks.cache"):
        assert other.is_locked("there") and other.is_locked("there")  # cannot tell: waits
    [warning] = [r.getMessage() for r in caplog.records if "waiting for there" in r.getMessage()]
    assert f"process {dead.pid} on gpu-node-7" in warning
    assert f"delete {tmp_path / 'there.lock'}" in warning
