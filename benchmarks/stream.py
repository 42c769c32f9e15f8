"""Memory of minibatch training (--batch-tokens): peak RSS of one layer's whole SAE job (input
statistics, training, metrics) at a GPT-2-large layer's width, for N and 10 N tokens.

Each layer file is written here with seeded random activations in row groups of one 1023-token
sequence (as extraction writes them), and each job runs in a fresh process, so its peak RSS is
its own. A full-batch job at the larger N would hold the (N, d) activations (2.1 GB) and several
(N, m) latent buffers (4.2 GB each) at once; this one holds a pool of minibatches."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from benchmarks.common import SHAPES
from tasks.store import activation_schema, activation_table

ROOT = Path(__file__).resolve().parent.parent
GROUP_ROWS = 1023  # one sequence of 1024 tokens, position 0 dropped

_CHILD = """
import json, resource, sys, time
from pathlib import Path
from benchmarks.common import COURSE
from tasks import minibatch
from tasks.sae import measures
from tasks.config import SAE_FIELDS
from tasks.store import ActivationFile, file_record
path, b, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
start = time.perf_counter()
src = ActivationFile(file_record(Path(path)))
stats = measures.input_stats(minibatch.chunks(src, "cpu"))
settings = {**COURSE.subset(*SAE_FIELDS), "epochs": epochs}
result = minibatch.train(src, batch_tokens=b, seed=0, device="cpu", **settings)
out = measures.metrics(result.sae, minibatch.chunks(src, "cpu"), stats["x_var"])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": time.perf_counter() - start, "peak_gb": peak / 1e9,
                  "density_pct": out["density_pct"], "losses": result.losses}))
"""


def write_layer(path: Path, n: int, d: int, seed: int = 0) -> float:
    """n tokens x d of seeded random activations, a row group per sequence; its size in GB."""
    rng = np.random.default_rng(seed)
    offset = rng.standard_normal(d).astype(np.float32)  # a non-zero mean, as real layers have
    with pq.ParquetWriter(path, activation_schema(d, {}), compression="none") as writer:
        for start in range(0, n, GROUP_ROWS):
            rows = np.arange(start, min(n, start + GROUP_ROWS))
            acts = rng.standard_normal((len(rows), d), dtype=np.float32) + offset
            writer.write_table(activation_table(rows // GROUP_ROWS, rows, rows, acts))
    return path.stat().st_size / 1e9


def stream_memory(folder: Path, quick: bool, epochs: int = 1) -> list[dict[str, Any]]:
    """Peak RSS at N and 10 N tokens, B = 4096 (quick: tiny sizes, only to check it runs)."""
    d = 64 if quick else SHAPES["gpt2-large"][2]
    b = 128 if quick else 4096
    sizes = (512, 5120) if quick else (10 * GROUP_ROWS, 102_400)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in sizes:
        path = folder / f"stream-{n}x{d}.parquet"
        file_gb = write_layer(path, n, d)
        cmd = [sys.executable, "-c", _CHILD, str(path), str(b), str(epochs)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(
            {"N": n, "d": d, "m": 2 * d, "B": b, "epochs": epochs, "file_gb": file_gb, **row}
        )
        path.unlink()
    return rows
