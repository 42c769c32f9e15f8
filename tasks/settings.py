"""What Config is built from: the roles its fields declare, the one-sentence errors a value
gets, and the helpers that parse and name its values (layer specs, devices, model short names,
stable hashes, flag names). tasks.config holds the Config declaration itself."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, NoReturn

from pydantic_core import PydanticCustomError

# Every field declares its role (`role(...)` on its own Field), and the sets below are derived
# from them after the class, so a new field cannot fall out of the cache keys unnoticed:
#   "sae"        the SAE's hyperparameters (tasks.sae.fit.train's keyword arguments)
#   "training"   how the SAE is trained besides them (precision, minibatches)
#   "recipe"     the SAE's architecture and the settings only the field's architectures take
#                (tasks.sae.recipes); the course's SAE depends on none of them
#   "result"     what is measured: models, text, tokens, hook, seeds; in every result hash
#   "execution"  how a run executes, never what it computes: kept out of result hashes
ROLES = ("sae", "training", "recipe", "result", "execution")


def role(name: str) -> dict[str, str]:
    """A Field's json_schema_extra naming its role (one of ROLES)."""
    assert name in ROLES, name
    return {"role": name}


class LaminarError(Exception):
    """A failure the user can fix: its message is one sentence naming the input and the fix."""


def refuse(sentence: str) -> NoReturn:
    """Inside a validator: refuse the value with one sentence naming the flag and the fix.
    pydantic collects these from every field, so a config with several bad values reports each."""
    raise PydanticCustomError("laminar", sentence)


def read_at_most(path: Path, limit: int, name: str, what: str) -> bytes:
    """A file a user handed in, read within `limit` bytes (one byte past it tells a file over
    the bound from one at it). `name` is how the sentence names the input ("--grid-file 'g.yaml'")
    and `what` what a file over the bound cannot be ("a grid")."""
    try:
        with path.open("rb") as f:
            raw = f.read(limit + 1)
    except OSError as exc:
        raise LaminarError(f"{name} cannot be read ({exc.strerror}).") from None
    if len(raw) > limit:
        raise LaminarError(f"{name} is over {limit:,} bytes: not {what}.")
    return raw


def unwritable(folder: Path) -> str:
    """Why `folder` cannot be made a folder this process writes in (the system's words: 'File
    exists', 'Not a directory', 'Permission denied'), or '' once it is one."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return "" if os.access(folder, os.W_OK | os.X_OK) else "Permission denied"


def first_twice(values: list[Any]) -> Any:
    """The first value a list names twice, or None."""
    return next((v for v in values if values.count(v) > 1), None)


def once(values: list[Any], name: str, what: str) -> None:
    """Refuse a list that names the same value twice (it would be counted twice)."""
    if (twice := first_twice(values)) is not None:
        refuse(f"{name} lists '{twice}' twice: name each {what} once.")


# A Dask scheduler address as `dask scheduler` prints it: tcp://HOST:PORT (scheme optional).
_DASK_ADDRESS = re.compile(r"^([a-z]+://)?[\w.\-\[\]:]+:\d+$")


def check_models(value: list[str]) -> list[str]:
    """--models: each named once, no two sharing the short name files are named by."""
    once(value, "--models", "model")
    names: dict[str, str] = {}
    for model in value:  # reports, figures and files are named by the short name
        other = names.setdefault(short_name(model), model)
        if other != model:
            refuse(
                f"--models '{other}' and '{model}' share the name '{short_name(model)}' "
                "that laminar's reports and files use: rename or link one folder (a local "
                "folder's name is its name), or profile them in separate runs."
            )
    return value


def check_urls(value: list[str]) -> list[str]:
    """--urls: web addresses, each once, stripped."""
    value = [u.strip() for u in value]
    for url in value:
        if not re.match(r"^https?://[^/\s]+", url):
            refuse(
                f"--urls '{url}' is not a web address: give http(s)://… addresses of "
                "Wikipedia articles."
            )
    once(value, "--urls", "article")
    return value


def check_dask_address(value: str) -> str:
    """--dask-address: empty (a local cluster) or a scheduler address, stripped."""
    value = value.strip()
    if value and not _DASK_ADDRESS.match(value):
        refuse(
            f"--dask-address '{value}' is not a scheduler address: use tcp://HOST:PORT as "
            "`dask scheduler` prints it, or leave it empty for a local cluster."
        )
    return value


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; 'cuda' without one is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise LaminarError(
            "--device cuda was asked for but torch sees no CUDA GPU: use --device cpu or auto."
        )
    return device


def plural(n: int, word: str) -> str:
    """'1 point', '2 points', '0 points'."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def short_name(model: str) -> str:
    """'gpt2-large' for a hub id, the folder's name for a local folder."""
    return Path(model.rstrip("/")).name if Path(model).exists() else model.split("/")[-1]


def stable_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


_SPEC = re.compile(r"^\d+(-\d+)?$")
MAX_LAYER = 9999


def parse_layer_spec(spec: str, n_layers: int | None) -> list[int]:
    """'0,3,5-7' -> [0, 3, 5, 6, 7]; 'all' -> range(n_layers). With n_layers=None only the
    syntax is checked (the layer count is known once the model is loaded)."""
    spec = spec.strip().lower()
    if spec == "all":
        return list(range(n_layers)) if n_layers is not None else []
    layers: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not _SPEC.match(part):
            raise LaminarError(
                f"--layers '{spec}' is malformed at '{part}': use 'all' or numbers and "
                "ranges such as '0,3,5-7'."
            )
        lo, _, hi = part.partition("-")
        a, b = int(lo), int(hi or lo)
        if b > MAX_LAYER:  # before the range is made: '0-99999999999' would exhaust memory
            raise LaminarError(
                f"--layers '{spec}' asks for layer {b}: no model has more than {MAX_LAYER + 1} "
                "layers; pick layers the model has, or use 'all'."
            )
        if a > b:
            raise LaminarError(
                f"--layers range '{part}' runs backwards: write it low to high, e.g. '{b}-{a}'."
            )
        layers.update(range(a, b + 1))
    if n_layers is not None and max(layers) >= n_layers:
        raise LaminarError(
            f"--layers '{spec}' asks for layer {max(layers)} but the model has {n_layers} "
            f"layers (0-{n_layers - 1}): pick layers in that range or use 'all'."
        )
    return sorted(layers)


def flag(name: str) -> str:
    """The CLI flag of a Config field: n_seqs -> --n-seqs."""
    return "--" + name.replace("_", "-")
