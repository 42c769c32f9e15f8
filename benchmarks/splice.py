"""The downstream measures' cost (tasks.splice) at a GPT-2 shape, on a random-weight model: the
clean pass once, then per layer the spliced and the ablated pass, at the first, middle and last
layer (each a whole forward pass, so the three should agree). Rounds interleave the layers;
each figure is the median with min-max.

    python -m benchmarks.splice --shape gpt2-large --rounds 3 --out benchmarks/results-splice.json

--memory E,E,...: instead, the peak resident memory of the splices at GPT-2 small's shape for
each count E of 1024-token held-out windows, each in a fresh process (the clean pass and one
layer's ablated and spliced passes), beside tasks.costs.clean_bytes's estimate; an E whose
estimate exceeds the free memory is refused as a run refuses it.

    python -m benchmarks.splice --memory 2,32,128 --out benchmarks/results-splice-memory.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import spread
from benchmarks.machine import machine
from benchmarks.models import build_model
from tasks import splice
from tasks.config import EVAL_TOKENS
from tasks.models import load_model
from tasks.precision import matmul_precision
from tasks.sae import course

SEQ_LEN = 1024


def with_tokenizer(folder: Path) -> Path:
    """The model folder with the repository's GPT-2 tokenizer beside the weights."""
    if not (folder / "tokenizer.json").exists():
        root = Path(__file__).resolve().parent.parent
        sys.path.insert(0, str(root / "tests"))
        from conftest import gpt2_tokenizer

        gpt2_tokenizer(root / "tests" / "data" / "gpt2-tokenizer").save_pretrained(folder)
    return folder


def peak_rss(folder: Path, n_seqs: int) -> dict[str, float]:
    """In this (fresh) process: RSS after loading, then the peak over the splices of one
    layer on n_seqs random windows (GB)."""
    import resource

    bridge = load_model(str(folder), "cpu")
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB -> GB
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, bridge.cfg.d_vocab, (n_seqs, SEQ_LEN), generator=g)
    model, _ = course.fresh(bridge.cfg.d_mlp, 2, 1 / 3, 1e-4, 0, "cpu")
    with torch.inference_mode(), matmul_precision("fp32"):
        splicer = splice.Splicer(("memory",), bridge)
        splicer.measure(model, tokens, "bench", splice.Where("blocks.0.mlp.hook_pre", 1, 1))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return {"loaded_gb": loaded, "peak_gb": peak, "splices_gb": peak - loaded}


def memory(counts: list[int], folder: Path) -> dict[str, Any]:
    """peak_rss for each E in its own process, beside the estimate a run prints."""
    import subprocess

    from tasks.costs import clean_bytes
    from tasks.host import available_memory

    rows = {}
    for n in counts:
        estimate = clean_bytes(n, SEQ_LEN, 50257, 1) / 1e9
        free = (available_memory("cpu") or 0) / 1e9
        if estimate > free:
            rows[str(n)] = {"estimate_gb": estimate, "free_gb": free, "refused": True}
            continue
        code = (
            "import json, pathlib; from benchmarks.splice import peak_rss; "
            f"print(json.dumps(peak_rss(pathlib.Path({str(folder)!r}), {n})))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(out.stderr[-2000:])
        rows[str(n)] = {"estimate_gb": estimate, **json.loads(out.stdout.strip().splitlines()[-1])}
        print(n, rows[str(n)], flush=True)
    return {"shape": "gpt2-small", "seq_len": SEQ_LEN, "hardware": machine("cpu"), "windows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", default="gpt2-large")
    parser.add_argument("--folder", default="/tmp/laminar-bench-models")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory", default="", help="E,E,...: peak memory per window count")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    if args.memory:
        folder = with_tokenizer(build_model("gpt2-small", Path(args.folder)))
        result = memory([int(n) for n in args.memory.split(",")], folder)
        print(json.dumps(result, indent=2))
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        return 0
    folder = with_tokenizer(build_model(args.shape, Path(args.folder)))
    bridge = load_model(str(folder), "cpu")
    n_layers, d_mlp = bridge.cfg.n_layers, bridge.cfg.d_mlp
    layers = [0, n_layers // 2, n_layers - 1]
    n_seqs = -(-EVAL_TOKENS // SEQ_LEN)
    tokens = torch.randint(0, bridge.cfg.d_vocab, (n_seqs, SEQ_LEN), generator=torch.Generator())
    model, _ = course.fresh(d_mlp, 2, 1 / 3, 1e-4, 0, "cpu")  # the course's SAE, untrained
    clean_s, per_layer = [], {layer: [] for layer in layers}
    with torch.inference_mode(), matmul_precision("fp32"):
        for r in range(args.rounds):
            # a fresh Splicer each round: its own clean pass and ablations
            splicer = splice.Splicer((f"round {r}",), bridge)
            start = time.perf_counter()
            splicer.clean_pass(tokens, "bench", chunk=1)
            clean_s.append(time.perf_counter() - start)
            for layer in layers:
                start = time.perf_counter()
                where = splice.Where(f"blocks.{layer}.mlp.hook_pre", first=1, chunk=1)
                splicer.measure(model, tokens, "bench", where)
                per_layer[layer].append(time.perf_counter() - start)
    result = {
        "shape": args.shape,
        "hardware": machine("cpu"),
        "eval_tokens": n_seqs * SEQ_LEN,
        "rounds": args.rounds,
        "clean_pass_s": spread(clean_s),
        "layer_s": {str(la): spread(v) for la, v in per_layer.items()},
        "n_layers": n_layers,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
