"""Preflight: the checks that need no heavy work, so bad input fails in seconds with nothing
lost. The CLI runs them before Prefect starts and hands what it found to the flow run it starts
with the config itself (`hand_over`); any other flow run (a deployment's, a second run in one
process, a config changed since) checks for itself."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import NamedTuple

from tasks import family as families
from tasks import models
from tasks.config import Config
from tasks.config_input import MLP_INPUT, NOT_PER_TOKEN_HOOKS, OFF_HOOKS, not_per_token, off_hook
from tasks.costs import check_splice_memory
from tasks.records import ModelFacts
from tasks.saelens import Entry
from tasks.security import check_deployment_targets, dask_client
from tasks.settings import LaminarError, resolve_device, unwritable
from tasks.store import check_writable


class Checked(NamedTuple):
    cfg: Config  # canonical (Config.canonical); with --saes, the family's hook
    described: list[ModelFacts]  # each model, its layers and widths
    family: dict[int, Entry]  # --saes: the published SAE of each layer; {} when training


def preflight(cfg: Config) -> Checked:
    """The artifacts dir is writable, a TLS scheduler's certificates are given, the device
    exists (here, or on a Dask cluster's workers, which check it themselves), every model and
    its layers resolve, the downstream measures' memory fits, and a --saes family covers the
    layers at the hook's width. The config it returns is canonical: the settings its SAE does
    not read at their defaults."""
    cfg = cfg.canonical()
    check_deployment_targets(cfg)
    check_writable(cfg.root)
    if cfg.dask_address.startswith("tls://"):  # its certificates named and readable, before
        dask_client(cfg)  # a server starts (a tcp:// one's warning is said once, by the flow)
    # The device before any model is read: a missing GPU is said at once, not after the models'
    # configs and TransformerLens have loaded. Dask workers check their own device.
    device = resolve_device(cfg.device) if cfg.task_runner == "thread" else None
    family: dict[int, Entry] = {}
    if cfg.saes:  # the family read (its cfg.json files) and checked: its hook is the run's
        cfg, family = families.prepare(cfg)
        if cfg.hook in NOT_PER_TOKEN_HOOKS:
            fix = "pick a family trained on an MLP or residual-stream hook"
            raise LaminarError(not_per_token(f"--saes '{cfg.saes}' reads {cfg.hook}, which", fix))
        if cfg.hook in OFF_HOOKS:  # its values are at another hook's name: the fix renames
            fix = f"set hook_name in each cfg.json to blocks.<layer>.{MLP_INPUT}, the same values"
            raise LaminarError(off_hook(f"--saes '{cfg.saes}' reads {cfg.hook}, which", fix))
    described = [describe(cfg, m) for m in cfg.models]
    if device is not None:
        check_splice_memory(cfg, described, device)
    if family:
        families.check_family(cfg, described[0]["layers"], described[0]["d"], family)
    check_k(cfg, described)
    check_prefect_home()  # last: the runs refused above need not load Prefect's settings
    return Checked(cfg, described, family)


def describe(cfg: Config, model: str) -> ModelFacts:
    """models.describe, and what it lets through that would fail later or silently: a config
    value of the wrong type, and a local folder without tokenizer files."""
    from huggingface_hub.errors import StrictDataclassError

    try:
        facts = models.describe(cfg, model)
    except StrictDataclassError as exc:  # transformers checks config.json's fields by type
        why = str(exc).strip().splitlines()[-1].strip()
        raise LaminarError(
            f"--models '{model}': its config.json has a value of the wrong type ({why}): fix "
            "it, or save the model again with save_pretrained()."
        ) from None
    check_tokenizer_files(model)
    return facts


# What a saved tokenizer leaves in its folder, one of them at least (fast and slow tokenizers:
# BPE, WordPiece, SentencePiece).
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model")


def check_tokenizer_files(model: str) -> None:
    """A local folder with no tokenizer file: transformers builds an empty tokenizer from the
    config alone, and every article became 0 tokens (refused then as too short a text)."""
    folder = Path(model)
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise LaminarError(
            f"--models '{model}' holds no tokenizer ({', '.join(TOKENIZER_FILES)}): save the "
            f"model's tokenizer into it too, with tokenizer.save_pretrained('{model}')."
        )


def check_prefect_home() -> None:
    """With no Prefect server given, the run starts a temporary one whose SQLite database lives
    in PREFECT_HOME: a home that is a file, or under one, kept it from starting (uvicorn's
    traceback, then Prefect's 'Timed out while attempting to connect' after the start-up
    timeout, exit 1). Where a server is given there is nothing to check."""
    with warnings.catch_warnings():  # Prefect warns on import that it cannot make the home
        warnings.simplefilter("ignore")
        from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url:
        return
    home = Path(settings.home).expanduser()
    if why := unwritable(home):
        raise LaminarError(
            f"PREFECT_HOME '{home}' cannot hold the temporary Prefect server's database "
            f"({why}): point PREFECT_HOME at a folder you can write to, or PREFECT_API_URL at "
            "a running Prefect server."
        )


def check_k(cfg: Config, described: list[ModelFacts]) -> None:
    """topk and batchtopk keep --k latents a token: no more than an SAE has."""
    if cfg.sae_arch not in ("topk", "batchtopk"):
        return
    for facts in described:
        width = facts["d"] * cfg.expansion
        if cfg.k > width:
            raise LaminarError(
                f"--k {cfg.k} is more than the {width} latents of {facts['name']}'s SAEs (its "
                f"width {facts['d']} at --hook {cfg.hook} times --expansion {cfg.expansion}): "
                f"give --k at most {width}."
            )


def hand_over(cfg: Config, checked: Checked) -> Config:
    """`cfg` carrying what preflight found for it, for the flow run it is passed to."""
    cfg._preflight = (cfg.model_dump_json(), checked)
    return cfg


def checked_for(cfg: Config) -> Checked:
    """What preflight found for exactly this config: handed over with it, else checked now."""
    handed = cfg._preflight
    if handed is not None and handed[0] == cfg.model_dump_json():
        return handed[1]
    return preflight(cfg)
