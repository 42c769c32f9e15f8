"""Does bf16 change the science? Every layer of a random-weight GPT-2-architecture model, its SAE
trained from the same activations and seed in fp32 and in bf16 (the course's settings, 75
epochs): density, final loss, FVU and L0 per layer, their differences, and each claim's verdict
and statistics under each precision.

    .venv/bin/python benchmarks/science.py                      # tiny profiles: a minute
    .venv/bin/python benchmarks/science.py --shapes gpt2-small  # N = 10,230: hours on a CPU

Writes benchmarks/results-science.json (merged by shape) and prints a table per shape."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks.config import Config  # noqa: E402
from tasks.stats import claims  # noqa: E402
from tasks.train import train_layer  # noqa: E402

# name: (n_layer, d_model, n_positions, n_seqs): activations are the MLP's c_fc output
# (mlp.hook_pre), position 0 dropped, on seeded random tokens
PROFILES = {
    "tiny": (3, 64, 128, 20),  # the tests' model shape
    "tiny-deep": (12, 64, 128, 20),  # the same width, GPT-2 small's depth: enough for the claims
    "gpt2-small": (12, 768, 1024, 10),  # the real batch shape, N = 10,230
}
METRICS = ("density_pct", "final_loss", "fvu", "l0")


def activations(shape: str, seed: int = 0) -> list[np.ndarray]:
    """(N, d_mlp) float32 per layer of a seeded random-weight model of the profile's shape."""
    import transformers

    n_layer, d_model, n_pos, n_seqs = PROFILES[shape]
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_layer=n_layer, n_embd=d_model, n_head=max(1, d_model // 64), n_positions=n_pos
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    tokens = torch.randint(0, config.vocab_size, (n_seqs, n_pos), generator=torch.Generator())
    outs: list[torch.Tensor] = []
    hooks = [
        b.mlp.c_fc.register_forward_hook(
            lambda m, i, o: outs.append(o[:, 1:, :].reshape(-1, o.shape[-1]))
        )
        for b in model.transformer.h
    ]
    with torch.no_grad():
        model(tokens)
    for h in hooks:
        h.remove()
    return [o.numpy().astype(np.float32) for o in outs]


def compare(shape: str) -> dict[str, Any]:
    layers = activations(shape)
    rows: dict[str, list[dict[str, Any]]] = {"fp32": [], "bf16": []}
    for i, x in enumerate(layers):
        for precision, out in rows.items():
            metrics, _ = train_layer(x, Config(device="cpu", precision=precision), f"{shape} L{i}")
            rel_depth = i / max(len(layers) - 1, 1)
            out.append({"model": shape, "layer": i, "rel_depth": rel_depth, **metrics})
        diffs = {m: rows["bf16"][-1][m] - rows["fp32"][-1][m] for m in METRICS}
        print(f"{shape} L{i}: " + ", ".join(f"{m} {d:+.3g}" for m, d in diffs.items()), flush=True)
    per_layer = [
        {
            "layer": a["layer"],
            **{f"{m}_fp32": a[m] for m in METRICS},
            **{f"{m}_abs": b[m] - a[m] for m in METRICS},
            **{f"{m}_rel": (b[m] - a[m]) / a[m] if a[m] else 0.0 for m in METRICS},
        }
        for a, b in zip(rows["fp32"], rows["bf16"], strict=True)
    ]
    worst = {
        f"{m}_{kind}": max(abs(r[f"{m}_{kind}"]) for r in per_layer)
        for m in METRICS
        for kind in ("abs", "rel")
    }
    verdicts = {p: claims(r)[shape] for p, r in rows.items()}
    return {
        "N": len(layers[0]),
        "d": layers[0].shape[1],
        "layers": per_layer,
        "worst": worst,
        "claims": verdicts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="tiny,tiny-deep", help="comma-separated profiles")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results-science.json")
    args = parser.parse_args()
    report = json.loads(args.out.read_text()) if args.out.exists() else {}
    for shape in args.shapes.split(","):
        report[shape] = compare(shape)
        args.out.write_text(json.dumps(report, indent=2))
        for precision, c in report[shape]["claims"].items():
            print(
                f"{shape} {precision}: density rises {c['density']['holds']} "
                f"(rho {c['density']['rho']}, slope {c['density']['slope']:.4g}); "
                f"loss U {c['loss']['holds']} (vertex {c['loss'].get('vertex')})"
            )
        print(f"{shape} worst: {report[shape]['worst']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
