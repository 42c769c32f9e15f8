"""The private Prefect names laminar relies on (all in tasks/prefect_api.py) still exist in the
installed Prefect, and do what laminar uses them for."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, prefect_home
from prefect.task_runners import ThreadPoolTaskRunner

from tasks import prefect_api
from tasks.prefect_api import record_before_exit


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


# A flow of many quick tasks run as a user's script or command runs it: no Prefect server given,
# so Prefect starts a temporary one and stops it at exit. The flow carries laminar's hook.
MANY_TASKS = """
import sys
from prefect import flow, task
from tasks.prefect_api import record_before_exit

@task
def one(i: int) -> int:
    return i

@flow(on_running=[record_before_exit])
def many(n: int) -> int:
    return sum(f.result() for f in [one.submit(i) for i in range(n)])

print(many(int(sys.argv[1])))
"""


def recorded(home: Path) -> list[str]:
    """The state of every task run the temporary server's database in `home` holds."""
    db = sqlite3.connect(home / "prefect.db")
    with contextlib.closing(db):
        return sorted(state for (state,) in db.execute("SELECT state_type FROM task_run"))


def test_the_temporary_server_records_the_run_before_it_stops(tmp_path: Path) -> None:
    """Prefect 3 sends task runs' states as events that its server records behind the run, and
    stops the temporary server at exit: stopped at once, the server had recorded about half of
    these 60 task runs, most of them not final, and its recorder was cancelled mid-write (an
    ERROR traceback at the end of a run that succeeded: often at 60 task runs, now and then at
    laminar's ten). laminar's flows carry `record_before_exit`, so the process waits at exit
    until the server has recorded every one as final: after a command and after a user's own
    script alike."""
    from flows.laminar import laminar
    from flows.sweep import sweep

    assert record_before_exit in laminar.on_running_hooks
    assert record_before_exit in sweep.on_running_hooks
    script = tmp_path / "many.py"
    script.write_text(MANY_TASKS)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    home = prefect_home(tmp_path / "home")
    out = subprocess.run(
        [sys.executable, str(script), "60"],
        env={**env, "PREFECT_HOME": str(home), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Starting temporary server" in out.stderr  # the server a user's run starts
    assert out.stdout.split() == [str(sum(range(60)))]
    assert not [x for x in out.stderr.splitlines() if "| ERROR" in x], out.stderr[-3000:]
    assert recorded(home) == ["COMPLETED"] * 60


def test_task_run_states_reads_every_page() -> None:
    """The task runs of a flow run and of its subflows, read a page at a time: 5 + 4, and the
    task run Prefect makes in the parent for the subflow's call."""
    from prefect import flow, task
    from prefect.client.orchestration import get_client

    @task
    def one(i: int) -> int:
        return i

    @flow
    def inner() -> int:
        return sum(f.result() for f in [one.submit(i) for i in range(4)])

    @flow
    def outer() -> int:
        return sum(f.result() for f in [one.submit(i) for i in range(5)]) + inner()

    state = outer(return_state=True)
    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the server records task runs behind the run
            read = prefect_api.task_run_states(client, state.state_details.flow_run_id, page=2)
            if len(read) == 10 and all(final for _, final in read):
                break
            time.sleep(0.1)
    assert len(read) == 10 and all(final for _, final in read)


def test_a_process_that_started_no_server_does_not_import_one() -> None:
    """With a server given, laminar learns that no temporary server runs without importing
    Prefect's server (1.5 s of CPU after each command's run)."""
    code = (
        "import sys; from tasks.prefect_api import temporary_server_url as url; "
        "print(repr(url()), 'prefect.server.api.server' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["''", "False"]
