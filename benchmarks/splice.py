"""The downstream measures' cost (tasks.splice) at a GPT-2 shape, on a random-weight model: the
clean pass once, then per layer the spliced and the ablated pass, at the first, middle and last
layer (each a whole forward pass, so the three should agree). Rounds interleave the layers;
each figure is the median with min-max.

    python -m benchmarks.splice --shape gpt2-large --rounds 3 --out benchmarks/results-splice.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.bench import machine
from benchmarks.models import build_model
from tasks import sae, splice
from tasks.config import EVAL_TOKENS
from tasks.models import load_model
from tasks.precision import matmul_precision

SEQ_LEN = 1024


def with_tokenizer(folder: Path) -> Path:
    """The model folder with the repository's GPT-2 tokenizer beside the weights."""
    if not (folder / "tokenizer.json").exists():
        root = Path(__file__).resolve().parent.parent
        sys.path.insert(0, str(root / "tests"))
        from conftest import gpt2_tokenizer

        gpt2_tokenizer(root / "tests" / "data" / "gpt2-tokenizer").save_pretrained(folder)
    return folder


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", default="gpt2-large")
    parser.add_argument("--folder", default="/tmp/laminar-bench-models")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    folder = with_tokenizer(build_model(args.shape, Path(args.folder)))
    bridge = load_model(str(folder), "cpu")
    n_layers, d_mlp = bridge.cfg.n_layers, bridge.cfg.d_mlp
    layers = [0, n_layers // 2, n_layers - 1]
    n_seqs = -(-EVAL_TOKENS // SEQ_LEN)
    tokens = torch.randint(0, bridge.cfg.d_vocab, (n_seqs, SEQ_LEN), generator=torch.Generator())
    model, _ = sae.fresh(d_mlp, 2, 1 / 3, 1e-4, 0, "cpu")  # the course's SAE, untrained
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
