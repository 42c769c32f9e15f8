"""How a failed task is told to the user: the reason in one sentence (laminar's own, a file-system
refusal reworded as what stands where and the fix, or a Dask worker that died), and one sentence
for the runs of a task that failed, saying whether the others are cached."""

from __future__ import annotations

import re
from typing import Any

from tasks.prefect_api import dask_future
from tasks.settings import plural


def why_failed(future: Any, state: Any) -> str:
    """A failed task's message; for one whose process died (its state never became final, and
    Dask gave up after its retries: KilledWorker), say so and where to look."""
    if state.is_final():  # Prefect's 'Task run encountered an exception LaminarError: <sentence>'
        message = str(state.message)
        prefix = "Task run encountered an exception LaminarError: "
        return refused(message.removeprefix(prefix).rstrip("."))
    inner = dask_future(future)
    error = inner.exception() if inner is not None else None
    worker = getattr(getattr(error, "last_worker", None), "address", "?")
    tries = getattr(error, "allowed_failures", -1) + 1
    return (
        f"the Dask worker process running it died {plural(tries, 'time')}, last on {worker}, and "
        f"Dask gave up on it ({type(error).__name__}): check that worker's memory and log"
    )


# A task the file system refused, as Prefect words it: "Task run encountered an exception
# FileExistsError: [Errno 17] File exists: '/a/sae/tiny/L02'". Said instead as what stands where.
OS_ERROR = re.compile(r"Task run encountered an exception (\w+): \[Errno \d+\] (.+?): '(.+)'$")
OS_FIX = {
    "FileExistsError": "something that is not laminar's stands there: move it away",
    "NotADirectoryError": "a file stands where laminar needs a folder: move it away",
    "IsADirectoryError": "a folder stands where laminar writes a file: move it away",
    "PermissionError": "give the user running laminar write permission there",
}


def refused(message: str) -> str:
    """A file-system refusal in one sentence (what, where, the fix); any other message as is."""
    m = OS_ERROR.match(message)
    if m is None or m[1] not in OS_FIX:
        return message
    return f"{m[2].lower()} at '{m[3]}' ({m[1]}): {OS_FIX[m[1]]}"


def failed_runs(task: str, n_runs: int, why: list[str]) -> str:
    """One sentence for the runs of `task` that failed (`why`: each one's reason), saying
    whether any others are cached."""
    kept = n_runs - len(why)
    cached = {0: "", 1: "; the other is cached"}.get(kept, "; the others are cached")
    fix = "fix it" if len(why) == 1 else "fix these"
    reasons = "; ".join(w.rstrip(".") for w in why)
    runs = plural(n_runs, f"{task} run")
    return f"{len(why)} of {runs} failed: {reasons}{cached}: {fix} and rerun."
