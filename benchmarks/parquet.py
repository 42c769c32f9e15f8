"""Parquet throughput: one layer's activations written and read back as laminar stores them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.common import timed
from tasks import store


def bench_parquet(n: int, d: int, folder: Path) -> dict[str, float]:
    """MB/s of writing (atomically, uncompressed) and reading an (n, d) fp32 layer file."""
    acts = np.random.default_rng(0).standard_normal((n, d), dtype=np.float32)
    idx = np.arange(n)
    path = folder / "layer.parquet"
    mb = acts.nbytes / 1e6

    def write() -> None:
        import pyarrow.parquet as pq

        with store.atomic_path(path) as tmp:
            pq.write_table(
                store.activation_table(idx, idx, idx, acts),
                tmp,
                compression="none",
                use_dictionary=False,
            )

    t_write = timed(write, "cpu", repeat=2)
    record = store.file_record(path)
    t_read = timed(lambda: store.read_activations(record), "cpu", repeat=2)
    assert np.array_equal(store.read_activations(record), acts)
    return {
        "MB": mb,
        "write_MB_s": mb / t_write,
        "read_MB_s": mb / t_read,
        "write_s": t_write,
        "read_s": t_read,
    }
