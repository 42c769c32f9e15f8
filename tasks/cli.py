"""The command line, built from the config model: every Config field is a flag with the field's
description as its help, and a value the model refuses is one sentence naming the flag."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Literal

from pydantic import ValidationError

from tasks.config import Config, LaminarError, flag


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python flows/laminar.py",
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
    try:
        return Config(**args)
    except ValidationError as exc:
        raise LaminarError(describe_validation_error(exc)) from None


def exit_on_bad_flags(argv: list[str]) -> None:
    """Parse the command line; on a value the config refuses, print its one sentence and exit 2.
    Needs only pydantic, so the CLI runs it before importing anything heavy."""
    try:
        config_from_args(argv)
    except LaminarError as exc:
        print(f"laminar: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def describe_validation_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    field = str(err["loc"][0]) if err["loc"] else "config"
    return f"{flag(field)} {err.get('input')} is invalid: {err['msg'].lower()}."
