"""SAEs in SAELens's on-disk format (cfg.json + sae_weights.safetensors): finding a family of
them, one per layer, in a local folder or a Hugging Face repo, and running them without SAELens.

The architectures read, as SAELens 6 computes them (x_in = x - b_dec when apply_b_dec_to_input,
else x; pre = x_in W_enc + b_enc; x̂ = z W_dec + b_dec):
    standard   z = ReLU(pre)
    topk       z = ReLU of pre's k largest entries per token, the rest 0 (exactly k, as
               torch.topk picks them)
    jumprelu   z = ReLU(pre) where pre > threshold, else 0
laminar's own SAEs (a cfg.json with a "laminar" record) load as tasks.sae.TiedSAE, so they give
the numbers their training run reported. Shapes: x (N, d_in), z (N, d_sae)."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tasks import sae, saefiles
from tasks.config import LaminarError, stable_hash
from tasks.host import logger

ARCHITECTURES = ("standard", "topk", "jumprelu")
_HOOK = re.compile(r"^blocks\.(\d+)\.(.+)$")


class PublishedSAE(torch.nn.Module):
    """A standard, topk or jumprelu SAE with SAELens's parameter names (see the module doc)."""

    def __init__(self, cfg: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.architecture = cfg.get("architecture", "standard")  # older files name none
        self.k = int(cfg.get("k") or 0)
        self.b_dec_to_input = bool(cfg.get("apply_b_dec_to_input", False))
        self.W_enc = state["W_enc"].float()  # (d_in, d_sae)
        self.b_enc = state["b_enc"].float()  # (d_sae,)
        self.weight = state["W_dec"].float()  # (d_sae, d_in): the decoder, named as TiedSAE's
        self.b_dec = state["b_dec"].float()  # (d_in,)
        threshold = state.get("threshold")
        if threshold is None and "log_threshold" in state:
            threshold = state["log_threshold"].exp()
        self.threshold = None if threshold is None else threshold.float()  # (d_sae,)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x_in = x - self.b_dec if self.b_dec_to_input else x
        pre = x_in @ self.W_enc + self.b_enc  # (N, d_sae)
        if self.architecture == "topk":
            top = torch.topk(pre, k=min(self.k, pre.shape[-1]), dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter_(-1, top.indices, top.values.relu())
        z = pre.relu()
        if self.architecture == "jumprelu":
            z = z * (pre > self.threshold).to(z.dtype)
        return z

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.weight + self.b_dec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return self.decode(z), z  # x̂ (N, d_in), z (N, d_sae)


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
    weights = cfg_file.parent / sae.WEIGHTS_FILE
    if weights_here and not weights.exists() and not weights.is_symlink():
        raise LaminarError(
            f"--saes: {cfg_file.parent} has cfg.json but no {sae.WEIGHTS_FILE}: download the "
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
    weights = folder / sae.WEIGHTS_FILE
    stat = weights.stat() if weights.exists() else None
    return stable_hash(
        {
            "folder": str(folder),
            "cfg": saefiles.read_cfg(folder / sae.CFG_FILE, saefiles.bounded_root(folder)),
            "weights": [stat.st_size, stat.st_mtime_ns] if stat else None,
        }
    )


def load(folder: str | Path) -> torch.nn.Module:
    """The SAE in `folder`: laminar's own as TiedSAE, any other as PublishedSAE (CPU, fp32)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = saefiles.read_cfg(folder / sae.CFG_FILE, saefiles.bounded_root(folder))
    if "laminar" in cfg:
        return sae.load(folder)
    return PublishedSAE(cfg, load_file(folder / sae.WEIGHTS_FILE))
