"""Does bf16 change the science? Every layer of a random-weight GPT-2-architecture model, its SAE
trained from the same activations and seed in fp32 and in bf16 (the course's settings, 75
epochs): density, final loss, FVU and L0 per layer, their differences, and each claim's verdict
and statistics under each precision.

    .venv/bin/python benchmarks/science.py                      # tiny profiles: minutes
    .venv/bin/python benchmarks/science.py --shapes gpt2-small  # N = 10,230: hours on a CPU
    python3 benchmarks/science.py --shapes gpt2-small --device cuda --out X.json  # minutes

Each (layer, precision) is written to benchmarks/science-<shape>.partial.json as it finishes, so
a run that is stopped (or whose machine goes away) resumes at the next training; the partial file
records what produced it and is refused if the settings, shape, torch or the training code
differ. When every layer is done, benchmarks/results-science.json gets the shape's comparison
and a table is printed."""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.cache import code_digest
from tasks.config import SAE_FIELDS, Config
from tasks.settings import resolve_device
from tasks.stats import claims
from tasks.store import write_json
from tasks.train import InMemory, train_layer

ROOT = Path(__file__).resolve().parent.parent

# name: (n_layer, d_model, n_positions, n_seqs): activations are the MLP's c_fc output
# (mlp.hook_pre), position 0 dropped, on seeded random tokens
PROFILES = {
    "tiny": (3, 64, 128, 20),  # the tests' model shape
    "tiny-deep": (12, 64, 128, 20),  # the same width, GPT-2 small's depth: enough for the claims
    "gpt2-small": (12, 768, 1024, 10),  # the real batch shape, N = 10,230
}
METRICS = ("density_pct", "final_loss", "fvu", "l0")
PRECISIONS = ("fp32", "bf16")


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


def provenance(shape: str, layers: list[np.ndarray], cfg: Config) -> dict[str, Any]:
    """What a partial file's trainings depend on: a resume with anything else is refused."""
    first = layers[0]
    return {
        "shape": shape,
        "profile": list(PROFILES[shape]),
        "N": int(first.shape[0]),
        "d": int(first.shape[1]),
        "activations_sum": float(np.float64(first).sum()),  # same model, tokens and seed
        "settings": cfg.subset(*SAE_FIELDS),
        "sae_seed": 0,
        "torch": torch.__version__,
        "code": {m: code_digest(m) for m in ("tasks.sae", "tasks.train")},  # as cache keys do
    }


def load_partial(path: Path, expected: dict[str, Any]) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    saved = json.loads(path.read_text())
    if differ := [k for k in expected if saved["provenance"].get(k) != expected[k]]:
        raise SystemExit(
            f"science.py: '{path}' was made with other settings ({', '.join(differ)} differ: "
            f"{ {k: saved['provenance'].get(k) for k in differ} }, now "
            f"{ {k: expected[k] for k in differ} }); delete it to start this comparison again."
        )
    return saved["done"]


def train_all(shape: str, partial: Path, cfg: Config) -> dict[str, list[dict[str, Any]]]:
    """Every (layer, precision) training, each saved to `partial` as it finishes."""
    layers = activations(shape)
    meta = provenance(shape, layers, cfg)
    done = load_partial(partial, meta)
    for i, x in enumerate(layers):
        for precision in PRECISIONS:
            key = f"{i}/{precision}"
            if key in done:
                continue
            start = time.perf_counter()
            run_cfg = cfg.model_copy(update={"precision": precision})
            layer = InMemory(x, resolve_device(run_cfg.device))
            metrics, _ = train_layer(layer, run_cfg, f"{shape} L{i} {precision}")
            done[key] = {
                "model": shape,
                "layer": i,
                "rel_depth": i / max(len(layers) - 1, 1),
                **metrics,
                "seconds": time.perf_counter() - start,
                "host": platform.node(),
            }
            write_json(partial, {"provenance": meta, "done": done})
            print(f"{shape} L{i} {precision}: {done[key]['seconds']:.0f} s", flush=True)
    return {p: [done[f"{i}/{p}"] for i in range(len(layers))] for p in PRECISIONS}


def compare(rows: dict[str, list[dict[str, Any]]], shape: str, n: int, d: int) -> dict[str, Any]:
    """Per-layer absolute and relative differences (bf16 - fp32), the worst case, the claims."""
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
    return {"N": n, "d": d, "layers": per_layer, "worst": worst, "claims": verdicts}


def run_shape(shape: str, out: Path, cfg: Config) -> dict[str, Any]:
    device = "" if cfg.device == "cpu" else f"-{cfg.device}"  # each device's numbers apart
    partial = out.with_name(f"science-{shape}{device}.partial.json")
    rows = train_all(shape, partial, cfg)
    meta = json.loads(partial.read_text())["provenance"]
    return compare(rows, shape, meta["N"], meta["d"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="tiny,tiny-deep", help="comma-separated profiles")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results-science.json")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    for shape in args.shapes.split(","):
        result = run_shape(shape, args.out, Config(device=args.device))
        report = json.loads(args.out.read_text()) if args.out.exists() else {}
        report[shape] = result
        write_json(args.out, report)
        for precision, c in result["claims"].items():
            print(
                f"{shape} {precision}: density rises {c['density']['holds']} "
                f"(rho {c['density']['rho']}, slope {c['density']['slope']:.4g}); "
                f"loss U {c['loss']['holds']} (vertex {c['loss'].get('vertex')})"
            )
        print(f"{shape} worst: {result['worst']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
