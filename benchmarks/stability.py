"""Memory of the cross-seed stability measure (tasks.sae.stability.decoder_match) at GPT-2
large's SAE width: two random decoders of 10,240 latents x 5,120, every latent live. Each
measurement runs in a fresh process; its peak resident memory (ru_maxrss) is read before and
after the comparison, so the figure is what the comparison adds above its two decoders.

    .venv/bin/python benchmarks/stability.py --out benchmarks/results-stability.json"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from tasks.host import describe_device

ROOT = Path(__file__).resolve().parent.parent
CHILD = """
import json, resource, sys, time
import torch
from tasks.sae.stability import decoder_match
m, d = int(sys.argv[1]), int(sys.argv[2])
g = torch.Generator().manual_seed(0)
w_a, w_b = torch.randn(m, d, generator=g), torch.randn(m, d, generator=g)
live = torch.ones(m, dtype=torch.bool)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.perf_counter()
out = decoder_match(w_a, w_b, live)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"m": m, "d": d, "inputs_gb": 2 * m * d * 4 / 1e9, "before_gb": before / 1e9,
                  "peak_gb": peak / 1e9, "added_gb": (peak - before) / 1e9,
                  "seconds": seconds, **out}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results-stability.json")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for m, d in [(6144, 3072), (10_240, 5120)]:
        for _ in range(args.repeats):
            done = subprocess.run(
                [sys.executable, "-c", CHILD, str(m), str(d)],
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
            )
            rows.append(json.loads(done.stdout.splitlines()[-1]))
            print(rows[-1])
    out = {"machine": describe_device("cpu"), "rows": rows}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
