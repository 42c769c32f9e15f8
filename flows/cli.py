"""The console commands that `pip install` makes (pyproject's [project.scripts]): `laminar`,
`laminar-compare` and `laminar-ui`. `laminar` checks its flags before it imports the flow, so a
malformed flag fails in a fraction of a second, before torch and Prefect load."""

from __future__ import annotations

import sys


def laminar() -> int:
    """`laminar ARGS`: the same as `python flows/laminar.py ARGS`."""
    from tasks.cli import exit_on_bad_flags

    exit_on_bad_flags(sys.argv[1:])
    from flows.laminar import main

    return main()
