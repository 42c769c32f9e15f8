"""The console commands that `pip install` makes (pyproject's [project.scripts]): `laminar`,
`laminar-compare` and `laminar-ui`. `laminar` checks its flags before it imports the flow, so a
malformed flag fails in a fraction of a second, before torch and Prefect load."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.config import Config

# Ctrl-C, a closed terminal and `kill` (or `timeout`, a batch scheduler): each ends a run
# (ended_by_signals). Inside a flow run Prefect takes SIGTERM over (a deployment's run is cancelled
# with it): it lets the layer in training finish, marks the run Crashed, then hands the signal on.
INTERRUPTS = (signal.SIGINT, signal.SIGHUP, signal.SIGTERM)
CHILD_GRACE_S = 3.0  # for the run's child processes to end on SIGTERM, before SIGKILL


class _NoTracebackForUserErrors(logging.Filter):
    """Prefect logs every task/flow exception with its traceback; for a LaminarError (bad input,
    a fixable condition), failed layers or failed points, and a path in the way (the file-system
    refusals tasks/failures.py words as what stands where), the one-sentence message is the
    whole story."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            from flows.laminar import LayerFailedError
            from flows.sweep import PointFailedError
            from tasks.failures import OS_FIX
            from tasks.settings import LaminarError

            exc = record.exc_info[1]
            told = isinstance(exc, OSError) and type(exc).__name__ in OS_FIX
            if told or isinstance(exc, LaminarError | LayerFailedError | PointFailedError):
                record.exc_info, record.exc_text = None, None
        return True


def no_telemetry() -> None:
    """No telemetry from Prefect, the client's or the temporary server's, unless the user's
    environment asks for it. pyproject.toml says so for the server too, but Prefect reads it only
    when the command runs in the repository's root; elsewhere an offline server logged an ERROR
    line for each failed send."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _no_tracebacks_for_user_errors() -> None:
    for handler in logging.getLogger().handlers:  # Prefect's console handler sits on the root
        if not any(isinstance(f, _NoTracebackForUserErrors) for f in handler.filters):
            handler.addFilter(_NoTracebackForUserErrors())


def end_children() -> None:
    """End every process this one started (the temporary Prefect server, a local Dask cluster's
    nannies and workers): SIGTERM, then SIGKILL for any still there after CHILD_GRACE_S."""
    import psutil  # loaded by ended_by_signals before any signal can come

    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=CHILD_GRACE_S)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()


@contextlib.contextmanager
def ended_by_signals(prog: str, root: Path) -> Iterator[None]:
    """Ctrl-C (SIGINT) or a closed terminal (SIGHUP) ends the run at once, as SIGKILL would,
    which loses nothing finished: every write is atomic and every lock names its pid (the fault
    tests kill runs so). Prefect's own handling waited for the training thread to end its layer
    (minutes), then for its last calls to a temporary server that Ctrl-C had already stopped
    with the terminal's process group. SIGTERM comes here once Prefect is done with it (see
    INTERRUPTS); before, it left the temporary server running, orphaned. The run's children end
    first; the exit status is 128 + the signal's number, as a shell reports a process a signal
    ended."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread: a caller's thread keeps Python's
        return
    import psutil  # noqa: F401 (loaded here, not in the handler once a signal came)

    # a signal ignored from the start stays so (nohup's SIGHUP, a background job's SIGINT)
    kept = [sig for sig in INTERRUPTS if signal.getsignal(sig) is not signal.SIG_IGN]

    def stop(signum: int, frame: FrameType | None) -> None:
        for sig in kept:  # a second Ctrl-C while the children end changes nothing
            signal.signal(sig, signal.SIG_IGN)
        sentence = (
            f"{prog}: interrupted ({signal.Signals(signum).name}): what finished is kept in "
            f"{root}; run the same command again to compute only what is missing.\n"
        )
        os.write(2, sentence.encode())  # not print(): in a flow run, Prefect makes it a log line
        end_children()
        os._exit(128 + signum)

    before = {sig: signal.signal(sig, stop) for sig in kept}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def laminar(argv: list[str] | None = None) -> int:
    """`laminar ARGS` (and `python flows/laminar.py ARGS`): check the flags, then preflight
    before Prefect's server starts (bad input fails in seconds), then the flow, handed what
    preflight found. Exit 0 with the report's path on stdout; 2 for bad input, 1 for failed
    layers, each one sentence on stderr."""
    from tasks.cli import exit_on_bad_flags

    argv = sys.argv[1:] if argv is None else argv
    exit_on_bad_flags(argv)
    from tasks.cli import config_from_args
    from tasks.settings import LaminarError

    try:
        cfg = config_from_args(argv)
    except LaminarError as exc:
        print(f"laminar: {exc}", file=sys.stderr)
        return 2
    with ended_by_signals("laminar", cfg.root):  # one handler from preflight to the report
        return _profile(cfg)


def _profile(cfg: Config) -> int:
    """Preflight before the flow's module (Prefect, transformers, the tasks) loads: seconds,
    not ten; then the flow, handed what preflight found."""
    from tasks.cli import print_out
    from tasks.preflight import hand_over, preflight
    from tasks.settings import LaminarError

    try:
        checked = preflight(cfg)
    except LaminarError as exc:
        print(f"laminar: {exc}", file=sys.stderr)
        return 2
    no_telemetry()
    from flows.laminar import LayerFailedError
    from flows.laminar import laminar as flow

    _no_tracebacks_for_user_errors()
    try:
        summary = flow(hand_over(cfg, checked))
    except (LaminarError, LayerFailedError) as exc:
        print(f"laminar: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, LaminarError) else 1
    print_out(f"report: {os.path.join(summary['report'], 'report.md')}")
    return 0


def laminar_sweep(argv: list[str] | None = None) -> int:
    """`laminar-sweep --grid FIELD=V1,V2 ... [laminar's flags]` (flows/sweep.py): the grid and
    every point's settings checked before the flow loads; exit 0 with sweep.md's path on stdout,
    2 for a bad grid entry or flag, 1 if a point failed, each a sentence on stderr."""
    import argparse

    from tasks.cli import config_from_args, print_out

    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="laminar-sweep", add_help=False)
    parser.add_argument("--grid", action="append", default=[])
    parser.add_argument("--grid-file")
    known, rest = parser.parse_known_args(argv)
    if "-h" in rest or "--help" in rest:
        print_out(SWEEP_USAGE)
        return 0
    from tasks import sweep as grid
    from tasks.preflight import check_prefect_home
    from tasks.settings import LaminarError

    try:
        if not known.grid and not known.grid_file:
            raise LaminarError("no --grid given: e.g. --grid sae_arch=course,topk.")
        base, entries = config_from_args(rest), grid.parse_grid(known.grid, known.grid_file)
        grid.check_flags_not_swept(base, entries)
    except LaminarError as exc:
        return _refused(exc)
    with ended_by_signals("laminar-sweep", base.root):  # from the points to the matrix
        try:
            points = grid.points(base, entries)
            check_prefect_home()
            print(
                f"laminar-sweep: {grid.count(entries, points)}, each a laminar run sharing its "
                f"cached tasks with the others: {grid.cost([cfg for *_, cfg in points])}.",
                file=sys.stderr,
            )
        except LaminarError as exc:
            return _refused(exc)
        no_telemetry()
        from flows.sweep import PointFailedError, Sweep, sweep

        _no_tracebacks_for_user_errors()
        try:
            summary = sweep(Sweep(base=base, grid=entries))
        except PointFailedError as exc:
            print(f"laminar-sweep: {exc}", file=sys.stderr)
            return 1
    print_out(f"sweep: {os.path.join(summary['folder'], 'sweep.md')}")
    return 0


def _refused(exc: Exception) -> int:
    """A bad grid entry or flag: its sentences on stderr, exit 2."""
    for sentence in str(exc).splitlines():
        print(f"laminar-sweep: {sentence}", file=sys.stderr)
    return 2


SWEEP_USAGE = """usage: laminar-sweep --grid FIELD=VALUE[,VALUE...] [--grid ...]
                     [--grid-file GRID.yaml] [laminar's flags]

Runs laminar at every combination of the grid's values (any setting of what is computed, e.g.
--grid sae_arch=course,topk --grid epochs=75,600), the other flags setting every point's base,
or given as a YAML mapping of settings to lists of values in --grid-file, and writes the
verdict matrix of the claims (sweep.md, sweep.csv, sweep.parquet) under
ARTIFACTS_DIR/sweeps/. `laminar --help` lists the settings."""
