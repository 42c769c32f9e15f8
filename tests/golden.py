"""The golden metrics: what laminar's training and measuring give on fixed layers, recorded
before a refactor and checked bit for bit after it (tests/test_golden.py). Run this file to
record them again, only where a change of numbers is intended and said in the commit:
    cd tests && ../.venv/bin/python golden.py

Bits depend on the CPU as well as the code: the BLAS and oneDNN pick their kernels (so their
order of additions) by vendor and instruction set, and an AMD EPYC's fp32 weights differ from an
Intel AMX Xeon's in the last bits. So each platform (`platform()`) keeps its own record, checked
bit for bit where it was recorded; running this file adds or replaces this machine's record
only. Elsewhere the numbers are checked against the first record within TOLERANCE."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "data" / "golden_metrics.json"
CASES = {  # name: (Config overrides, trained on a file streamed in minibatches)
    "full_fp32": ({}, False),
    "full_bf16": ({"precision": "bf16"}, False),
    "streamed_fp32": ({"batch_tokens": 256}, True),
    "streamed_bf16": ({"batch_tokens": 256, "precision": "bf16"}, True),
}


# Relative tolerance of a float metric on an unrecorded platform, by precision. Measured between
# the two recorded platforms: 2.2e-6 at worst in fp32, 8.5e-5 in bf16 (streamed density).
TOLERANCE = {"fp32": 1e-5, "bf16": 1e-3}
NUMERIC_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # what the kernels dispatch on


def platform() -> str:
    """What the bits depend on besides the code: CPU vendor, the instruction sets the kernels
    choose by, and torch's version, e.g. 'AuthenticAMD avx2 avx512f avx512_bf16 torch 2.13.0'."""
    import torch

    fields: dict[str, str] = {}
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:  # Linux; elsewhere unknown
        for line in f:
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
            if not line.strip():
                break  # the first processor's block is enough
    flags = set(fields.get("flags", "").split())
    isa = [f for f in NUMERIC_FLAGS if f in flags]
    return " ".join([fields.get("vendor_id", "unknown"), *isa, f"torch {torch.__version__}"])


def differences(got: dict[str, Any], want: dict[str, Any], precision: str) -> list[str]:
    """Where `got` is not `want` within TOLERANCE[precision]: floats (kept as strings) by
    relative error, integers exactly, the latent-frequency histogram with at most 1% of latents
    moved to a neighbouring bin. The weights' sha256 is not compared (it is bits)."""
    rel, out = TOLERANCE[precision], []
    for key, value in want.items():
        mine = got.get(key)
        if key == "weights_sha256":
            continue
        if key == "freq_hist":
            moved = sum(abs(a - b) for a, b in zip(mine, value, strict=True))
            if sum(mine) != sum(value) or moved > 2 * max(1, round(0.01 * sum(value))):
                out.append(f"{key}: {mine} != {value}")
            continue
        pairs = list(zip(mine, value, strict=True)) if isinstance(value, list) else [(mine, value)]
        for a, b in pairs:
            if isinstance(b, str):
                if not math.isclose(float(a), float(b), rel_tol=rel, abs_tol=rel * 1e-3):
                    out.append(f"{key}: {a} != {b} within {rel:g}")
            elif a != b:
                out.append(f"{key}: {a} != {b}")
    return out


def layer() -> np.ndarray:
    """A fixed 1023 x 128 layer: seeded, with per-feature scales and a non-zero mean."""
    rng = np.random.default_rng(2026)
    x = rng.standard_normal((1023, 128))
    x = x * rng.uniform(0.2, 2.0, 128) + rng.standard_normal(128)
    return x.astype(np.float32)


def plain(value: Any) -> Any:
    """A metrics value as JSON keeps it exactly: floats as their repr (17 digits)."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def measure(name: str, folder: Path) -> dict[str, Any]:
    """One case's metrics row (timings and places dropped) and its SAE's weights' sha256."""
    from tasks.config import Config
    from tasks.store import ActivationFile, activation_schema, activation_table, file_record
    from tasks.train import InMemory, Streamed, train_layer

    overrides, streamed = CASES[name]
    cfg = Config(device="cpu", epochs=20, **overrides)
    x = layer()
    if streamed:
        import pyarrow.parquet as pq

        path = folder / f"{name}.parquet"
        with pq.ParquetWriter(path, activation_schema(x.shape[1], {})) as writer:
            for start in range(0, len(x), 200):
                part = x[start : start + 200]
                rows = np.arange(start, start + len(part))
                writer.write_table(activation_table(rows, rows, rows, part))
        data: InMemory | Streamed = Streamed(ActivationFile(file_record(path)), "cpu")
    else:
        data = InMemory(x, "cpu")
    out, model = train_layer(data, cfg, "gold", 0)
    weights = model.weight.detach().contiguous().numpy().tobytes()
    drop = {"seconds", "device", "hardware", "ran_on"}
    row = {k: plain(v) for k, v in sorted(out.items()) if k not in drop}
    return {**row, "weights_sha256": hashlib.sha256(weights).hexdigest()}


if __name__ == "__main__":
    import tempfile

    sys.path.insert(0, str(HERE.parent))
    with tempfile.TemporaryDirectory() as tmp:
        cases = {name: measure(name, Path(tmp)) for name in CASES}
    records = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    records[platform()] = cases
    GOLDEN.write_text(json.dumps(records, indent=1) + "\n")
    print(f"recorded {GOLDEN} for {platform()}")
