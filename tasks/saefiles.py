"""The files of a SAELens-format SAE that a user hands in (--saes), checked in full before any
work: each a regular file inside the folder it was named by (a hub snapshot's own links into
its cache excepted), read with a size bound; cfg.json an object whose every field laminar reads
has the type and range it needs; sae_weights.safetensors a real safetensors file (its header
parsed by hand, never unpickled) whose tensors have the names, shapes and float dtypes that
cfg.json implies, every value finite. Each failure is one sentence naming the file, the field
and the fix."""

from __future__ import annotations

import json
import os
import stat
import struct
from pathlib import Path
from typing import Any

import numpy as np

from tasks.settings import LaminarError

MAX_CFG_BYTES = 1 << 20  # a cfg.json is a few hundred bytes; 1 MiB is generous
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit on its JSON header
MAX_WEIGHTS_BYTES = 64 << 30  # the widest published SAEs are a few GB
MAX_WIDTH = 1 << 24  # d_in and d_sae: 16M latents is far past any published SAE
FLOAT_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": None, "F64": np.float64}
CFG_DTYPES = {None, "float32", "float16", "bfloat16", "float64", "torch.float32"}
CFG_DTYPES |= {"torch.float16", "torch.bfloat16", "torch.float64"}


def refuse(path: Path, what: str, fix: str) -> LaminarError:
    return LaminarError(f"--saes: {path} {what}: {fix}.")


def inside(path: Path, root: Path) -> Path:
    """`path` resolved (links followed), refused unless it is a regular file under `root`."""
    real = path.resolve()
    if real != root and root not in real.parents:
        raise refuse(path, f"leads outside the folder --saes names ({root})", "remove the link")
    try:
        mode = real.stat().st_mode
    except OSError as exc:
        raise refuse(path, f"cannot be read ({exc.strerror})", "check the file") from None
    if not stat.S_ISREG(mode):
        raise refuse(path, "is not a regular file", "replace it with the SAE's file")
    return real


def read_bounded(path: Path, root: Path, limit: int) -> bytes:
    real = inside(path, root)
    size = real.stat().st_size
    if size > limit:
        raise refuse(path, f"is {size:,} bytes, over the {limit:,} a {path.name} may be", "fix it")
    with open(real, "rb") as f:
        return f.read(limit + 1)[:limit]


def read_cfg(path: Path, root: Path) -> dict[str, Any]:
    """cfg.json as a dict, its fields checked (check_cfg)."""
    try:
        cfg = json.loads(read_bounded(path, root, MAX_CFG_BYTES))
    except (ValueError, UnicodeDecodeError) as exc:
        raise refuse(path, f"is not JSON ({exc})", "give SAELens's cfg.json") from None
    if not isinstance(cfg, dict):
        raise refuse(path, f"holds a JSON {type(cfg).__name__}, not an object", "fix it")
    check_cfg(path, cfg)
    return cfg


def field_error(path: Path, key: str, value: Any, want: str) -> LaminarError:
    return refuse(path, f"has {key} {json.dumps(value)[:60]}", f"{key} must be {want}")


def check_cfg(path: Path, cfg: dict[str, Any]) -> None:
    meta = cfg.get("metadata", {})
    if not isinstance(meta, dict):
        raise field_error(path, "metadata", meta, "an object (or absent)")
    for key in ("d_in", "d_sae"):
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_WIDTH:
            raise field_error(path, key, value, f"a whole number from 1 to {MAX_WIDTH:,}")
    for key in ("hook_name", "hook_point"):
        for where in (cfg, meta):
            if where.get(key) is not None and not isinstance(where[key], str):
                raise field_error(path, key, where[key], "a hook name (a string)")
    if not isinstance(cfg.get("architecture", "standard"), str):
        raise field_error(path, "architecture", cfg["architecture"], "a string")
    if not isinstance(cfg.get("apply_b_dec_to_input", False), bool):
        raise field_error(path, "apply_b_dec_to_input", cfg["apply_b_dec_to_input"], "a boolean")
    if cfg.get("dtype") not in CFG_DTYPES:
        raise field_error(path, "dtype", cfg.get("dtype"), "float32, float16, bfloat16 or float64")
    k = cfg.get("k")
    topk = cfg.get("architecture") == "topk" or ("laminar" in cfg and k is not None)
    if topk and (isinstance(k, bool) or not isinstance(k, int) or not 0 < k <= cfg["d_sae"]):
        raise field_error(path, "k", k, f"a whole number from 1 to d_sae ({cfg['d_sae']})")


def expected_tensors(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The tensors sae_weights.safetensors must hold, with their shapes; a jumprelu's threshold
    (either name) is checked by check_weights."""
    d, m = cfg["d_in"], cfg["d_sae"]
    if "laminar" in cfg:  # laminar's own tied SAE: the decoder alone
        return {"W_dec": (m, d)}
    return {"W_enc": (d, m), "b_enc": (m,), "W_dec": (m, d), "b_dec": (d,)}


def header(path: Path, root: Path) -> tuple[Path, dict[str, Any], int]:
    """(the real file, the safetensors header, where the data starts), checked against the
    file's size; no tensor is read."""
    real = inside(path, root)
    size = real.stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        raise refuse(path, f"is {size:,} bytes, over {MAX_WEIGHTS_BYTES:,}", "check the file")
    with open(real, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < n <= min(MAX_HEADER_BYTES, size - 8):
            raise refuse(path, "is not a safetensors file", "give SAELens's weights file")
        try:
            meta = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError):
            raise refuse(path, "is not a safetensors file", "give SAELens's weights") from None
    if not isinstance(meta, dict):
        raise refuse(path, "is not a safetensors file", "give SAELens's weights file")
    meta.pop("__metadata__", None)
    for name, t in meta.items():
        ok = isinstance(t, dict) and isinstance(t.get("shape"), list)
        ok = ok and isinstance(t.get("data_offsets"), list) and len(t["data_offsets"]) == 2
        if not ok or not all(isinstance(v, int) and v >= 0 for v in t["data_offsets"]):
            raise refuse(path, f"has a malformed entry for tensor '{name}'", "re-save the SAE")
        if t["data_offsets"][1] > size - 8 - n:
            raise refuse(path, f"is cut short (tensor '{name}' runs past its end)", "re-download")
    return real, meta, 8 + n


def check_weights(path: Path, root: Path, cfg: dict[str, Any]) -> None:
    """Names, shapes and float dtypes as cfg.json implies, then every value finite."""
    real, meta, _ = header(path, root)
    want = expected_tensors(cfg)
    if cfg.get("architecture") == "jumprelu":
        names = [n for n in ("threshold", "log_threshold") if n in meta]
        if not names:
            raise refuse(path, "has no threshold", "a jumprelu SAE needs threshold (d_sae,)")
        want[names[0]] = (cfg["d_sae"],)
    for name, shape in want.items():
        if name not in meta:
            raise refuse(path, f"has no tensor '{name}'", f"a {name} of shape {list(shape)}")
        t = meta[name]
        if tuple(t["shape"]) != shape:
            raise refuse(
                path,
                f"has {name} of shape {t['shape']}, but cfg.json's d_in {cfg['d_in']} and d_sae "
                f"{cfg['d_sae']} make it {list(shape)}",
                "give the cfg.json that belongs to these weights",
            )
        if t.get("dtype") not in FLOAT_DTYPES:
            raise refuse(path, f"stores {name} as {t.get('dtype')}", "weights must be floats")
    check_finite(path, real, list(want))


def check_finite(path: Path, real: Path, names: list[str]) -> None:
    """Every value of the named tensors finite, read one tensor at a time."""
    import torch
    from safetensors import safe_open

    with safe_open(str(real), framework="pt") as f:
        for name in names:
            tensor = f.get_tensor(name)
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                why = f"has {bad:,} values of {name} that are NaN or infinite"
                raise refuse(path, why, "re-train or re-download it")
            del tensor


def bounded_root(folder: Path) -> Path:
    """The folder an SAE's files must stay inside: a hub snapshot's repo cache (its files are
    links into ../../blobs), else the family folder itself."""
    real = folder.resolve()
    for parent in [real, *real.parents]:
        if parent.parent.name == "snapshots":
            return parent.parent.parent
    return real


def relative_subfolder(source: str, sub: str) -> str:
    """repo:subfolder's subfolder, refused unless it names a folder inside the repo."""
    parts = Path(sub).parts
    if sub.startswith(("/", "\\")) or any(p in ("..", "") for p in parts) or os.path.isabs(sub):
        raise LaminarError(
            f"--saes '{source}': the subfolder '{sub}' leads outside the repo: give a folder "
            "inside it (org/name:folder/inside)."
        )
    return sub
