"""The private Prefect names laminar relies on (all in tasks/prefect_api.py) still exist in the
installed Prefect, and do what laminar uses them for."""

from __future__ import annotations

from pathlib import Path

from prefect.task_runners import ThreadPoolTaskRunner

from tasks import prefect_api


def test_no_private_name_is_missing() -> None:
    assert prefect_api.missing() == [], (
        "this Prefect dropped private names laminar uses; adapt tasks/prefect_api.py"
    )


def test_lock_files_behind_public_names(tmp_path: Path) -> None:
    locks = prefect_api.LockFiles(lock_files_directory=tmp_path)
    assert locks.acquire_lock("k", holder="me")
    path = locks.lock_path("k")
    assert path.parent == tmp_path and path.exists()
    assert locks.read_info("k", use_cache=False)["holder"] == "me"
    path.unlink()
    locks.forget("k")
    assert not locks.is_locked("k")
    assert prefect_api.thread_slots(ThreadPoolTaskRunner(max_workers=3)) == 3
    assert prefect_api.dask_future(object()) is None
