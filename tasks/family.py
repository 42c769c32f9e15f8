"""--saes: the family of published SAEs found and checked before any heavy work, with no weights
loaded, and neither Prefect nor the task modules imported (torch alone comes in, with the SAE
architectures tasks.saelens names): preflight runs it before the flow loads, so a bad family
fails in a few seconds. A source is a local folder, or a Hugging
Face repo id (`org/name`, optionally `org/name:sub` for one subfolder); from the hub only the
cfg.json files are read here (each layer's task downloads its own weights, tasks.published)."""

from __future__ import annotations

from pathlib import Path

from tasks import saefiles, saelens
from tasks.config import Config
from tasks.models import ensure_hub_or_offline, hub_offline
from tasks.settings import LaminarError


def split_source(source: str) -> tuple[str, str]:
    """'org/name:sub/dir' -> ('org/name', 'sub/dir'); a repo alone -> (repo, ''). A subfolder
    that leads outside the repo ('..', an absolute path) is refused."""
    repo, _, sub = source.partition(":")
    return repo, saefiles.relative_subfolder(source, sub.rstrip("/")) if sub else ""


def fetch_configs(source: str) -> Path:
    """The folder holding the family's cfg.json files: the local folder, or a hub snapshot of
    just the cfg.json files (the weights come per layer, in the layer's task)."""
    if Path(source).expanduser().is_dir():
        return Path(source).expanduser().resolve()
    if Path(source).expanduser().exists():
        raise LaminarError(f"--saes '{source}' is a file: give the folder that holds the SAEs.")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    repo, sub = split_source(source)
    ensure_hub_or_offline([repo])
    pattern = f"{sub}/**cfg.json" if sub else "**cfg.json"
    try:
        root = Path(snapshot_download(repo, allow_patterns=[pattern, pattern.replace("**", "*/")]))
    except HFValidationError:
        raise LaminarError(
            f"--saes '{source}' is neither a local folder nor a hub repo id (org/name, "
            "optionally org/name:subfolder): check the path or the id."
        ) from None
    except Exception as exc:  # the hub client's errors have no common base to catch
        raise LaminarError(hub_problem(source, exc)) from None
    return root / sub if sub else root


def hub_problem(source: str, exc: BaseException) -> str:
    names = {type(e).__name__ for e in (exc, exc.__cause__, exc.__context__) if e is not None}
    if hub_offline() or names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled"}:
        why = "the hub cannot be reached and its SAEs are not in the local cache"
        fix = "connect once to download them, or pass a local folder"
    elif names & {"RepositoryNotFoundError", "GatedRepoError"}:
        why, fix = "the hub has no such repo (or it is private)", "check the id"
    else:
        why, fix = (
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            ("try again later, or pass a local folder"),
        )
    return f"--saes '{source}': cannot read its SAEs; {why}: {fix}."


def check_family(cfg: Config, layers: list[int], d: int, found: dict[int, saelens.Entry]) -> None:
    """Every layer the run profiles has an SAE, of the hook's width `d`."""
    missing = [la for la in layers if la not in found]
    if missing:
        have = ",".join(map(str, sorted(found)))
        raise LaminarError(
            f"--saes '{cfg.saes}' has no SAE for layer(s) {','.join(map(str, missing))} of "
            f"{cfg.models[0]} (it has layers {have}): give --layers {have}, or a fuller family."
        )
    for layer in layers:
        if found[layer].d_in != d:
            raise LaminarError(
                f"--saes '{cfg.saes}': the layer-{layer} SAE reads d_in {found[layer].d_in} but "
                f"{cfg.models[0]}'s {cfg.hook} is {d} wide: these SAEs belong to another model."
            )


def prepare(cfg: Config) -> tuple[Config, dict[int, saelens.Entry]]:
    """The family of --saes, read and checked (no weights loaded), and the config with the
    family's hook (refused when --hook was given as another)."""
    folder = fetch_configs(cfg.saes)
    found = saelens.family(folder, cfg.saes, weights_here=not is_hub(cfg.saes))
    hook = next(iter(found.values())).hook
    if "hook" in cfg.model_fields_set and cfg.hook != hook:
        raise LaminarError(
            f"--hook {cfg.hook} was given, but the SAEs of --saes '{cfg.saes}' read {hook}: "
            "leave --hook out (the SAEs' hook is used)."
        )
    return cfg.model_copy(update={"hook": hook}), found


def is_hub(source: str) -> bool:
    return not Path(source).expanduser().exists()
