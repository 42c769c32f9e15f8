"""How a failed task is told: one sentence for the runs of a task that failed, and a file-system
refusal (a real OSError, as Prefect words it) reworded as what stands where and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.failures import failed_runs, refused


def test_failed_runs_say_whether_any_other_is_cached() -> None:
    assert failed_runs("sae", 3, ["sae L0: boom", "sae L1: bang."]) == (
        "2 of 3 sae runs failed: sae L0: boom; sae L1: bang; the other is cached: fix these and "
        "rerun."
    )
    assert failed_runs("fetch", 4, ["a."]) == (
        "1 of 4 fetch runs failed: a; the others are cached: fix it and rerun."
    )
    assert (
        failed_runs("sae", 1, ["sae L0: boom"])
        == "1 of 1 sae run failed: sae L0: boom: fix it and rerun."
    )
    assert (
        failed_runs("fetch", 2, ["a", "b"])
        == "2 of 2 fetch runs failed: a; b: fix these and rerun."
    )


def refuse_on_disk(kind: str, folder: str) -> None:
    """What the file system does to a run that meets a blocked path, for real."""
    blocker = Path(folder) / "L02"
    if kind == "exists":
        blocker.mkdir()
    elif kind == "not a folder":
        (blocker / "cfg.json").write_text("{}")
    elif kind == "a folder":
        Path(folder).write_text("")
    elif kind == "denied":  # root may write anywhere: the error a user's run would meet
        raise PermissionError(13, "Permission denied", folder)
    else:
        (Path(folder) / "missing").read_text()


@pytest.mark.filterwarnings("ignore:Logger 'prefect.task_runs' attempted:UserWarning")
def test_a_file_system_refusal_says_what_stands_where_and_the_fix(tmp_path: Path) -> None:
    """Prefect's message for a task that a real OSError ended, reworded; any other message is
    kept as it is."""
    from prefect import task

    (tmp_path / "L02").write_text("a file where a folder belongs")
    ran = task(refuse_on_disk, persist_result=False, cache_policy=None, retries=0)

    def said(kind: str) -> str:
        state = ran(kind, str(tmp_path), return_state=True)
        assert state.is_failed(), kind
        return refused(str(state.message).rstrip("."))

    blocker = tmp_path / "L02"
    assert said("exists") == (
        f"file exists at '{blocker}' (FileExistsError): something that is not laminar's stands "
        "there: move it away"
    )
    assert said("not a folder") == (
        f"not a directory at '{blocker / 'cfg.json'}' (NotADirectoryError): a file stands where "
        "laminar needs a folder: move it away"
    )
    assert said("a folder") == (
        f"is a directory at '{tmp_path}' (IsADirectoryError): a folder stands where laminar "
        "writes a file: move it away"
    )
    assert said("denied") == (
        f"permission denied at '{tmp_path}' (PermissionError): give the user running laminar "
        "write permission there"
    )
    missing = "Task run encountered an exception FileNotFoundError: [Errno 2] No such file or "
    assert said("missing") == f"{missing}directory: '{tmp_path / 'missing'}'"  # kept: no fix known
    assert refused("the article server answered 503") == "the article server answered 503"
