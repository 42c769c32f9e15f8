"""The golden metrics: what laminar's training and measuring give on fixed layers, recorded
before a refactor and checked bit for bit after it (tests/test_golden.py). Run this file to
record them again, only where a change of numbers is intended and said in the commit:
    cd tests && ../.venv/bin/python golden.py"""

from __future__ import annotations

import hashlib
import json
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
    GOLDEN.write_text(json.dumps(cases, indent=1) + "\n")
    print(f"recorded {GOLDEN}")
