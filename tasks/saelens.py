"""SAEs in SAELens's on-disk format (cfg.json + sae_weights.safetensors): finding a family of
them, one per layer, in a local folder or a Hugging Face repo, each checked before any work.
tasks.sae.files loads one, by its architecture (tasks.sae.standard, topk, jumprelu; laminar's
own as tasks.sae.course), and runs it without SAELens."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks import saefiles
from tasks.host import logger
from tasks.sae import files
from tasks.settings import LaminarError, stable_hash

ARCHITECTURES = tuple(files.PUBLISHED)  # the SAELens architectures laminar runs
_HOOK = re.compile(r"^blocks\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Entry:
    """One SAE of a family: its folder, the layer and hook suffix it reads, and its widths."""

    folder: Path
    layer: int
    hook: str  # the part after blocks.<layer>. : hook_resid_pre, mlp.hook_pre, ...
    d_in: int
    d_sae: int
    architecture: str


def hook_of(cfg: dict[str, Any], where: Path) -> tuple[int, str]:
    """(layer, hook suffix) from cfg.json: metadata.hook_name (SAELens 6), or the older
    top-level hook_name / hook_point and hook_layer."""
    meta = cfg.get("metadata") or {}
    name = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    match = _HOOK.match(name or "")
    if not match:
        raise LaminarError(
            f"--saes: {where} names hook '{name}', not one inside a block (blocks.<layer>.…): "
            "laminar profiles SAEs on the blocks' hooks; point --saes at such a family."
        )
    return int(match.group(1)), match.group(2)


def read_entry(cfg_file: Path, root: Path, weights_here: bool = True) -> Entry:
    """The family entry of one cfg.json, refused in one sentence when laminar cannot run it;
    with `weights_here`, its weights checked in full too (tasks.saefiles). `root`: the folder
    the files must stay inside (saefiles.bounded_root)."""
    cfg = saefiles.read_cfg(cfg_file, root)
    arch = cfg.get("architecture", "standard")
    if "laminar" in cfg:
        arch = "laminar"
    elif arch not in ARCHITECTURES:
        raise LaminarError(
            f"--saes: {cfg_file} is a '{arch}' SAE; laminar runs {', '.join(ARCHITECTURES)} "
            "SAEs (and its own): convert it, or profile another family."
        )
    for key, bad, fix in (
        ("normalize_activations", lambda v: v not in (None, "none"), "none"),
        ("rescale_acts_by_decoder_norm", bool, "false"),
        ("hook_head_index", lambda v: v is not None, "null"),
    ):
        value = cfg.get(key, (cfg.get("metadata") or {}).get(key))
        if bad(value):
            raise LaminarError(
                f"--saes: {cfg_file} sets {key} to {value!r}; laminar runs SAEs with {key} "
                f"{fix} only."
            )
    layer, hook = hook_of(cfg, cfg_file)
    weights = cfg_file.parent / files.WEIGHTS_FILE
    if weights_here and not weights.exists() and not weights.is_symlink():
        raise LaminarError(
            f"--saes: {cfg_file.parent} has cfg.json but no {files.WEIGHTS_FILE}: download the "
            "whole SAE."
        )
    if weights_here:
        saefiles.check_weights(weights, root, cfg)
    return Entry(cfg_file.parent, layer, hook, cfg["d_in"], cfg["d_sae"], arch)


def family(folder: Path, source: str, weights_here: bool = True) -> dict[int, Entry]:
    """Every SAE under `folder` (cfg.json at most two folders down) at the family's hook (the
    one most of them read; the others are named in a warning), by layer, one SAE a layer.
    `weights_here`: each folder must hold its weights
    too (a hub family's come later, per layer)."""
    found = sorted(p for depth in ("", "*/", "*/*/") for p in folder.glob(f"{depth}cfg.json"))
    if not found:
        raise LaminarError(
            f"--saes '{source}' holds no SAE (no cfg.json in it or in its subfolders): point it "
            "at a folder or repo of SAELens-format SAEs, one per layer."
        )
    root = saefiles.bounded_root(folder)
    entries = [read_entry(cfg_file, root, weights_here) for cfg_file in found]
    counts = Counter(e.hook for e in entries)
    hook = max(counts, key=lambda h: (counts[h], h == "hook_resid_pre"))
    if len(counts) > 1:  # e.g. gpt2-small-res-jb: resid_pre of 0-11, and resid_post of 11
        rest = ", ".join(f"{n} at {h}" for h, n in counts.items() if h != hook)
        logger().warning(
            "--saes '%s': profiling its %d SAEs at %s; left out: %s (one hook per run: "
            "repo:subfolder picks another)",
            source,
            counts[hook],
            hook,
            rest,
        )
    by_layer: dict[int, Entry] = {}
    for entry in (e for e in entries if e.hook == hook):
        if entry.layer in by_layer:
            raise LaminarError(
                f"--saes '{source}' holds two SAEs for layer {entry.layer} at {hook} "
                f"({by_layer[entry.layer].folder} and {entry.folder}): point it at one family "
                "(repo:subfolder picks one)."
            )
        by_layer[entry.layer] = entry
    return by_layer


def fingerprint(folder: Path) -> str:
    """Identity of an SAE's files for cache keys, cheap: its cfg.json, and the size and mtime of
    its weights (a hub snapshot's folder names its commit as well)."""
    weights = folder / files.WEIGHTS_FILE
    stat = weights.stat() if weights.exists() else None
    return stable_hash(
        {
            "folder": str(folder),
            "cfg": saefiles.read_cfg(folder / files.CFG_FILE, saefiles.bounded_root(folder)),
            "weights": [stat.st_size, stat.st_mtime_ns] if stat else None,
        }
    )
