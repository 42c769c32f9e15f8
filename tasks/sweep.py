"""A sweep over recipes: the grid (Config fields and the values each takes), its points (each a
whole Config, validated before anything runs) and what they will cost. Its verdict matrix is
tasks/sweep_matrix.py."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tasks.cli import describe_validation_error
from tasks.config import EXECUTION_FIELDS, READ_BY, Config
from tasks.progress import human_time
from tasks.records import ModelFacts
from tasks.settings import (
    LaminarError,
    first_twice,
    flag,
    plural,
    read_at_most,
    resolve_device,
    stable_hash,
)


def parse_grid(
    entries: list[str], grid_file: str | None = None, given: dict[str, list[str]] | None = None
) -> dict[str, list[str]]:
    """'field=v1,v2' entries (a flag's spelling, --sae-arch or sae-arch, works too), a YAML
    file's and a form's {field: [values]} as one grid {field: [values]}; a malformed entry, a
    name Config does not have, a field without values, or a field or value given twice is one
    sentence."""
    grid: dict[str, list[str]] = {}
    for name, values in (given or {}).items():
        _add(grid, name, [str(v) for v in values], "the grid")
    for entry in entries:
        name, sep, values = entry.partition("=")
        if not sep or not values.strip():
            raise LaminarError(
                f"--grid '{entry}' is not FIELD=VALUE[,VALUE...]: e.g. epochs=75,600."
            )
        _add(grid, name, [v.strip() for v in values.split(",")], f"--grid '{entry}'")
    if grid_file:
        for name, values in read_grid_file(Path(grid_file)).items():
            _add(grid, name, values, f"--grid-file '{grid_file}'")
    return grid


def check_flags_not_swept(base: Config, grid: dict[str, list[str]]) -> None:
    """A setting given as a flag and swept too: every point would take the grid's values and
    drop the flag's without a word. The flags given are Config.model_fields_set, as
    tasks.cli.config_from_args builds it."""
    if both := [field for field in grid if field in base.model_fields_set]:
        field = both[0]
        raise LaminarError(
            f"{flag(field)} is given ({getattr(base, field)}) and swept by the grid "
            f"({field}={','.join(grid[field])}): give {field} in one place, as a flag for "
            "every point or in the grid."
        )


def _add(grid: dict[str, list[str]], name: str, values: list[str], where: str) -> None:
    field = name.strip().lstrip("-").replace("-", "_")
    if field not in Config.model_fields:
        raise LaminarError(
            f"{where}: '{name}' is not a laminar setting: give one of `laminar --help`'s "
            "options (e.g. sae_arch, epochs, hook)."
        )
    if field in EXECUTION_FIELDS:  # its points would be one run under several labels
        raise LaminarError(
            f"{where}: {field} sets how a run is made, not what it computes, so every point "
            "would give the same numbers: sweep a setting of the profile or its SAEs (e.g. "
            f"sae_arch, epochs) and give {flag(field)} as a flag."
        )
    if not values:  # a form's or a grid file's empty list: the sweep would have no point
        raise LaminarError(f"{where} gives '{field}' no values: give at least one.")
    if field in grid:
        raise LaminarError(f"{where} names '{field}' twice: give its values once.")
    if (twice := first_twice(values)) is not None:
        raise LaminarError(f"{where} gives '{field}' the value '{twice}' twice: give it once.")
    grid[field] = values


MAX_GRID_FILE = 1 << 20  # bytes: a grid file is a few lines


def read_grid_file(path: Path) -> dict[str, list[str]]:
    """A YAML mapping of setting -> a value or a list of values, read within its size bound."""
    import yaml

    raw = read_at_most(path, MAX_GRID_FILE, f"--grid-file '{path}'", "a grid")
    try:
        data = yaml.load(raw, Loader=_grid_loader())  # a SafeLoader (below)
    except _KeyTwiceError as twice:
        raise LaminarError(
            f"--grid-file '{path}' names '{twice.key}' twice (lines {twice.lines}): give its "
            "values once."
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}: {getattr(exc, 'problem', '')})" if mark else ""
        raise LaminarError(
            f"--grid-file '{path}' is not valid YAML{where}: write a mapping of settings to "
            "values, e.g. 'sae_arch: [course, topk]'."
        ) from None
    if not isinstance(data, dict) or not data:
        raise LaminarError(
            f"--grid-file '{path}' is not a YAML mapping of settings to values: e.g. "
            "'sae_arch: [course, topk]'."
        )
    values = {str(k): v if isinstance(v, list) else [v] for k, v in data.items()}
    return {k: [str(x) for x in v] for k, v in values.items()}


class _KeyTwiceError(Exception):
    def __init__(self, key: str, lines: str) -> None:
        self.key, self.lines = key, lines


def _grid_loader() -> type:
    """YAML's safe loader, refusing a key given twice: plain YAML keeps the last and drops the
    rest without a word (`epochs: [2, 3]` then `epochs: [4]` swept 4 alone)."""
    import yaml

    class GridLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                line = key_node.start_mark.line + 1
                if not isinstance(key, str | int | float | bool):
                    continue  # SafeLoader refuses an unhashable key itself
                if key in first:
                    raise _KeyTwiceError(str(key), f"{first[key]} and {line}")
                first.setdefault(key, line)
            return super().construct_mapping(node, deep=deep)

    return GridLoader


def _value(field: str, value: str) -> Any:
    """A grid value as Config takes it: list settings (--models, --urls, --sae-seeds) get a
    list of one; pydantic converts the rest from the string."""
    annotation = str(Config.model_fields[field].annotation)
    return [value] if annotation.startswith("list") else value


def points(base: Config, grid: dict[str, list[str]]) -> list[tuple[str, dict[str, str], Config]]:
    """Every combination of the grid's values over `base`: (label, the point's values, its
    canonical Config). A value a point's Config refuses is one sentence naming the grid entry.
    A point leaves the settings its SAE does not read (Config.unread: --k for the course's and
    the standard SAE) out of its label and values, and combinations that differ only in them
    are the same run, so one point (the first)."""
    out, seen = [], set()
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo, strict=True))
        try:
            cfg = Config(**{**base.model_dump(), **{f: _value(f, v) for f, v in values.items()}})
        except ValidationError as exc:
            entry = " ".join(f"{f}={v}" for f, v in values.items())
            raise LaminarError(
                f"--grid point {entry}: {describe_validation_error(exc).splitlines()[0]}"
            ) from None
        unread = cfg.unread()
        values = {f: v for f, v in values.items() if f not in unread}
        cfg = cfg.canonical()
        label = " ".join(f"{f}={v}" for f, v in values.items()) or "base"
        if label not in seen:
            seen.add(label)
            out.append((label, values, cfg))
    return out


def unread_in_base(
    base: Config, grid: dict[str, list[str]], plan: list[tuple[str, dict[str, str], Config]]
) -> list[str]:
    """A sentence per SAE of the plan that does not read a setting the base gives (Config.
    unread_given; the grid's own settings are left to the points' labels)."""
    notes: list[str] = []
    reset = {f: Config.model_fields[f].default for f in grid if f in READ_BY}
    for arch in dict.fromkeys(cfg.sae_arch for *_, cfg in plan):
        note = base.model_copy(update={"sae_arch": arch, **reset}).unread_given()
        notes += [note] if note and note not in notes else []
    return notes


def count(grid: dict[str, list[str]], plan: list[tuple[str, dict[str, str], Config]]) -> str:
    """The points of `grid`, and how many of its combinations repeat another (points())."""
    said = f"{plural(len(plan), 'point')} ("
    said += " × ".join(f"{len(v)} {f}" for f, v in grid.items())
    if (repeats := math.prod(len(v) for v in grid.values()) - len(plan)) > 0:
        said += (
            f"; {repeats} of the {repeats + len(plan)} combinations "
            f"{'repeats' if repeats == 1 else 'repeat'} another in settings its SAE does not "
            "read"
        )
    return said + ")"


def _device(cfg: Config) -> str:
    """The device the point's SAEs train on here; '' where this machine lacks it (a Dask
    cluster's GPU): no rate is measured for it."""
    try:
        return resolve_device(cfg.device)
    except LaminarError:
        return ""


def cost(configs: list[Config]) -> str:
    """What the grid computes once its points share their cached tasks, before any run: the
    distinct extractions and SAE trainings (told apart by the settings their tasks' cache keys
    name and by the artifacts dir whose cache holds them), their FLOPs (tasks.costs.sae_flops)
    and their time at the SAE matmul's rate measured here (calibrated once per shape, in the
    calibration cache the runs then reuse). Not less what earlier runs cached: each point says
    that as it starts."""
    from tasks import costs, models
    from tasks.extract import extract_activations
    from tasks.recipes import train_recipe
    from tasks.tokens import tokenize
    from tasks.train import train_sae

    upstream = ("urls", *tokenize.cache_policy.fields, *extract_activations.cache_policy.fields)
    facts: dict[tuple[str, str, str, int], ModelFacts] = {}
    extractions: set[str] = set()
    trainings: dict[str, tuple[Path, tuple[str, str, int, int, int], float]] = {}
    for cfg in (c for c in configs if not c.saes):  # published SAEs are measured, not trained
        trainer = train_sae if cfg.sae_arch == "course" else train_recipe
        n_tokens = costs.training_tokens(cfg)
        for model in cfg.models:
            at = (model, cfg.hook, cfg.layers, cfg.seq_len)
            if at not in facts:
                facts[at] = models.describe(cfg, model)
            d, layers = facts[at]["d"], facts[at]["layers"]
            source = stable_hash([model, str(cfg.root), cfg.subset(*upstream)])
            extractions.add(source)
            shape = (_device(cfg), cfg.precision, n_tokens, d, cfg.expansion * d)
            flops = costs.sae_flops(*shape[2:]) * cfg.epochs
            for layer, seed in itertools.product(layers, cfg.sae_seeds):
                settings = cfg.subset(*trainer.cache_policy.fields)
                trainings[stable_hash([source, layer, seed, settings])] = (cfg.root, shape, flops)
    if not trainings:  # every point measures published SAEs
        return "no SAE to train: each point measures the published SAEs of its --saes"
    rates = {
        shape: costs.calibrated_rate(root, *shape) if shape[0] else 0.0
        for root, shape, _ in trainings.values()
    }
    said = f"{plural(len(extractions), 'extraction')} and {plural(len(trainings), 'SAE')} "
    said += f"to train, {costs.human_flops(sum(f for *_, f in trainings.values()))}"
    if not all(rates.values()):  # a device this machine lacks, or a matmul too fast to time
        return f"{said}; time here unknown (no SAE matmul rate measured for its device)"
    seconds = sum(f / (rates[shape] * 1e9) for _, shape, f in trainings.values())
    shown = ", ".join(
        sorted({f"{costs.figure_text(r)} GFLOP/s in {s[1]}" for s, r in rates.items()})
    )
    return f"{said}; about {human_time(seconds)} here (measured {shown})"
