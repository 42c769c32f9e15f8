"""The command line, built from the config model: every Config field is a flag with the field's
description as its help, and a value the model refuses is one sentence naming the flag."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Any, Literal

from pydantic import ValidationError

from tasks.config import Config
from tasks.settings import LaminarError, flag

OPTIONS_PAGE = "docs/options.md"
_ROLE_WORDS = {
    "result": "what is measured: changing it recomputes what depends on it",
    "sae": "an SAE hyperparameter: changing it retrains the SAEs only",
    "training": "how the SAEs are trained: changing it retrains the SAEs only",
    "recipe": "the SAE architecture and its own settings: changing it retrains the SAEs only",
    "execution": "how the run executes, never what it computes: no cache key holds it",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="laminar",
        description="The laminar profile: train one SAE per layer of each model and report "
        "density and loss against depth.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for name, field in Config.model_fields.items():
        kwargs: dict[str, Any] = {"help": field.description, "default": field.default}
        annotation = field.annotation
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif getattr(annotation, "__origin__", None) is list:
            kwargs["nargs"] = "+"
        elif getattr(annotation, "__origin__", None) is Literal:
            kwargs["choices"] = list(annotation.__args__)
        # --url (one article) is how runs were written before --urls: still understood
        aliases = ["--url"] if name == "urls" else []
        parser.add_argument(flag(name), *aliases, **kwargs)
    return parser


def to_args(cfg: Config) -> list[str]:
    """The command line that gives `cfg`: config_from_args(to_args(cfg)) == cfg."""
    args: list[str] = []
    for name, value in cfg.model_dump().items():
        if value is None:  # unset (the field's own default decides)
            continue
        if isinstance(value, bool):
            args.append(flag(name) if value else "--no-" + flag(name)[2:])
        elif isinstance(value, list):
            args += [flag(name), *map(str, value)]
        else:
            args += [flag(name), str(value)]
    return args


def config_from_args(argv: list[str] | None = None) -> Config:
    """Parse the command line into a Config; a bad value raises LaminarError naming the flag."""
    args = vars(build_parser().parse_args(argv))
    # only what differs from a field's default counts as given (Config.model_fields_set)
    args = {k: v for k, v in args.items() if k not in Config.model_fields or v != _default(k)}
    try:
        return Config(**args)
    except ValidationError as exc:
        raise LaminarError(describe_validation_error(exc)) from None


def _default(name: str) -> Any:
    return Config.model_fields[name].default


def exit_on_bad_flags(argv: list[str]) -> None:
    """Parse the command line; on values the config refuses, print each one's sentence on a line
    of its own and exit 2. Needs only pydantic, so the CLI runs it before importing anything
    heavy."""
    try:
        config_from_args(argv)
    except LaminarError as exc:
        for sentence in str(exc).splitlines():
            print(f"laminar: {sentence}", file=sys.stderr)
        raise SystemExit(2) from None


def describe_validation_error(exc: ValidationError) -> str:
    """Every refused value, one sentence a line: laminar's own sentences as they are, pydantic's
    as '--flag VALUE is invalid: why.'"""
    lines = []
    for err in exc.errors():
        if err["type"] == "laminar":
            lines.append(err["msg"])
            continue
        field = str(err["loc"][0]) if err["loc"] else "config"
        given = err.get("input")  # quoted as a shell would need it: '' for an empty value
        shown = shlex.quote(given) if isinstance(given, str) else given
        lines.append(f"{flag(field)} {shown} is invalid: {err['msg'].lower()}.")
    return "\n".join(lines)


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return " ".join(map(str, value))
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value) if value != "" else "empty"


def options_page() -> str:
    """The options page of the docs, made from Config alone (`make docs` writes it to
    OPTIONS_PAGE; a test fails when that file and the model differ)."""
    rows = []
    for name, field in Config.model_fields.items():
        role = field.json_schema_extra["role"]  # type: ignore[index]
        text = " ".join(str(field.description).split()).replace("|", "\\|")
        rows.append(f"| `{flag(name)}` | `{_shown(field.default)}` | {role} | {text} |")
    roles = "\n".join(f"- **{r}**: {words}." for r, words in _ROLE_WORDS.items())
    return f"""# Options

<!-- Made from tasks/config.py by `make docs` (tasks/cli.py: options_page); do not edit. -->

Every option is a field of one typed config model (`tasks/config.py`), which builds the command
line (`laminar --help`), the Prefect parameter form, the cache keys and the config recorded in
each report. Each field declares its role:

{roles}

| flag | default | role | meaning |
|---|---|---|---|
{chr(10).join(rows)}

Booleans take `--no-` to turn them off (`--no-save-saes`). Bad values get one sentence each,
naming the flag, the value and the fix, and exit code 2 before anything starts (e.g.
`laminar: --layers '7' asks for layer 7 but the model has 3 layers (0-2): pick layers in that
range or use 'all'.`); a run in which some layers failed exits 1 after writing the report for
the rest.
"""


def print_out(text: str) -> None:
    """`text` on stdout, for a reader that may stop early (`| head -1`, `| true`): once it is
    gone the rest goes nowhere, where print() raised BrokenPipeError (a traceback, and exit 1,
    after the work was done and its files written)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:  # and Python's own flush of stdout at exit would raise it again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":  # python -m tasks.cli: write the options page of the docs
    from pathlib import Path

    Path(sys.argv[1] if len(sys.argv) > 1 else OPTIONS_PAGE).write_text(options_page())
