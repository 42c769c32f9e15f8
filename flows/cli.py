"""The console commands that `pip install` makes (pyproject's [project.scripts]): `laminar`,
`laminar-compare` and `laminar-ui`. `laminar` checks its flags before it imports the flow, so a
malformed flag fails in a fraction of a second, before torch and Prefect load."""

from __future__ import annotations

import logging
import os
import sys


class _NoTracebackForUserErrors(logging.Filter):
    """Prefect logs every task/flow exception with its traceback; for a LaminarError (bad input,
    a fixable condition) or failed layers the one-sentence message is the whole story."""

    def filter(self, record: logging.LogRecord) -> bool:
        from flows.laminar import LayerFailedError
        from tasks.settings import LaminarError

        if record.exc_info and isinstance(record.exc_info[1], LaminarError | LayerFailedError):
            record.exc_info, record.exc_text = None, None
        return True


def laminar(argv: list[str] | None = None) -> int:
    """`laminar ARGS` (and `python flows/laminar.py ARGS`): check the flags, then preflight
    before Prefect's server starts (bad input fails in seconds), then the flow, handed what
    preflight found. Exit 0 with the report's path on stdout; 2 for bad input, 1 for failed
    layers, each one sentence on stderr."""
    from tasks.cli import exit_on_bad_flags

    argv = sys.argv[1:] if argv is None else argv
    exit_on_bad_flags(argv)
    # No telemetry from the ephemeral Prefect server (it would only time out on offline machines)
    os.environ.setdefault("DO_NOT_TRACK", "1")
    from flows.laminar import LayerFailedError
    from flows.laminar import laminar as flow
    from tasks.cli import config_from_args
    from tasks.preflight import hand_over, preflight
    from tasks.settings import LaminarError

    for handler in logging.getLogger().handlers:  # Prefect's console handler sits on the root
        if not any(isinstance(f, _NoTracebackForUserErrors) for f in handler.filters):
            handler.addFilter(_NoTracebackForUserErrors())
    try:
        cfg = config_from_args(argv)
        summary = flow(hand_over(cfg, preflight(cfg)))
    except (LaminarError, LayerFailedError) as exc:
        print(f"laminar: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, LaminarError) else 1
    print(f"report: {os.path.join(summary['report'], 'report.md')}")
    return 0
