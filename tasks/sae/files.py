"""SAEs on disk in SAELens's format: a folder of cfg.json and sae_weights.safetensors, which
SAELens's SAE.load_from_disk reads. Each architecture module gives its state and cfg fields;
loading picks the module by the cfg's architecture (laminar's own SAEs, marked by a "laminar"
record in cfg.json, load as the architecture that trained them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tasks import saefiles, store
from tasks.sae import course
from tasks.sae.jumprelu import JumpReLU
from tasks.sae.standard import Standard
from tasks.sae.topk import TopK

WEIGHTS_FILE, CFG_FILE = "sae_weights.safetensors", "cfg.json"
# SAELens's architecture name -> the module class that runs it (older files name none: standard)
PUBLISHED: dict[str, type[Standard]] = {"standard": Standard, "topk": TopK, "jumprelu": JumpReLU}


def save(
    sae: course.TiedSAE, folder: Path, hook_name: str, model_name: str, laminar: dict[str, Any]
) -> None:
    """Write the SAE in SAELens's format, with the hook, the model and laminar's own record
    (under "laminar") in cfg.json. Both files are written atomically; the weights first, so a
    cfg.json means a whole SAE."""
    from safetensors.torch import save as to_bytes

    state, fields = course.saelens_state(sae)
    cfg = {
        **fields,
        "dtype": "float32",
        "device": "cpu",
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"model_name": model_name, "hook_name": hook_name, "hook_head_index": None},
        "laminar": laminar,
    }
    store.write_bytes(folder / WEIGHTS_FILE, to_bytes(state))
    store.write_json(folder / CFG_FILE, cfg)


def load(folder: str | Path) -> torch.nn.Module:
    """The SAE in `folder` (CPU, fp32), cfg.json read within its size bound and inside the
    folder: laminar's own as the course's TiedSAE, so it gives the numbers its training
    reported; any other as its SAELens architecture."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = saefiles.read_cfg(folder / CFG_FILE, saefiles.bounded_root(folder))
    state = load_file(folder / WEIGHTS_FILE)
    if "laminar" in cfg:
        return course.from_saelens(cfg, state)
    return PUBLISHED[cfg.get("architecture") or "standard"](cfg, state)
