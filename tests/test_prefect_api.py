"""The private Prefect names laminar relies on (all in tasks/prefect_api.py) still exist in the
installed Prefect, and do what laminar uses them for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, prefect_home
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


# A flow of many quick tasks run as a user's command runs it: no Prefect server given, so Prefect
# starts a temporary one and stops it at exit. Printed once `settled` returned: how many of the
# flow run's task runs the server had recorded, how many of them as final, and the flow's result.
MANY_TASKS = """
import sys
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from flows.cli import settled
from tasks.prefect_api import task_run_states

@task
def one(i: int) -> int:
    return i

@flow
def many(n: int) -> dict[str, int]:
    return {"sum": sum(f.result() for f in [one.submit(i) for i in range(n)])}

state = many(int(sys.argv[1]), return_state=True)
result = settled(state)
ours = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
with get_client(sync_client=True) as client:
    runs = client.read_task_runs(flow_run_filter=ours)
print(len(runs), sum(bool(run.state and run.state.is_final()) for run in runs), result["sum"])
with get_client(sync_client=True) as client:  # paged as settled reads them, 7 at a time
    paged = task_run_states(client, state.state_details.flow_run_id, page=7)
print(len(paged), sum(final for _, final in paged))
"""


def test_the_temporary_server_records_the_run_before_it_stops(tmp_path: Path) -> None:
    """Prefect 3 sends task runs' states as events that its server records behind the run, and
    stops the temporary server at exit: stopped at once, the server had recorded about half of
    these 60 task runs, most of them not final, and its recorder was cancelled mid-write (an
    ERROR traceback at the end of a run that succeeded: often at 60 task runs, now and then at
    laminar's ten). The CLI's `settled` waits until the server has recorded every one as final."""
    script = tmp_path / "many.py"
    script.write_text(MANY_TASKS)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    out = subprocess.run(
        [sys.executable, str(script), "60"],
        env={**env, "PREFECT_HOME": str(prefect_home(tmp_path / "home")), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Starting temporary server" in out.stderr  # the server a user's run starts
    assert out.stdout.split() == ["60", "60", str(sum(range(60))), "60", "60"]
    assert not [x for x in out.stderr.splitlines() if "| ERROR" in x], out.stderr[-3000:]


def test_a_process_that_started_no_server_does_not_import_one() -> None:
    """With a server given, `settled` learns that no temporary server runs without importing
    Prefect's server (1.5 s of CPU after each command's run)."""
    code = (
        "import sys; from tasks.prefect_api import temporary_server_url as url; "
        "print(repr(url()), 'prefect.server.api.server' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["''", "False"]
