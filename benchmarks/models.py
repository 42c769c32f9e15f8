"""Extraction and full-size sweeps on random-weight GPT-2-shaped models, each extraction in a
fresh process so its peak memory is its own. Used by bench.py; `--extract-child` is its entry."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import COURSE, N_TOKENS, SHAPES, timed_once, train_sae
from benchmarks.precision import limit
from tasks import store
from tasks.precision import matmul_precision
from tasks.sae import measures


def build_model(shape: str, folder: Path) -> Path:
    """A random-weight GPT-2-architecture folder with the given shape (cached between runs)."""
    import transformers

    path = folder / shape
    if not (path / "config.json").exists():
        n_layer, d_model, _ = SHAPES[shape]
        config = transformers.GPT2Config(n_layer=n_layer, n_embd=d_model, n_head=d_model // 64)
        transformers.GPT2LMHeadModel(config).save_pretrained(path)
    return path


def bench_extract(
    shape: str, mode: str, n_seqs: int, device: str, folder: Path, extract_batch: int
) -> dict:
    """Run one extraction in a fresh process, so its peak RSS is its own."""
    model = build_model(shape, folder)
    cmd = [
        sys.executable,
        __file__,
        str(model),
        mode,
        str(n_seqs),
        device,
        str(folder / f"art-{shape}-{mode}"),
        str(extract_batch),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_rss_gb() -> float:
    """This process's own peak RSS (VmHWM; ru_maxrss would include the parent's, inherited
    across fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e6
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def extract_child(
    model: str, mode: str, n_seqs: int, device: str, out: str, extract_batch: int = 1
) -> None:
    from prefect.logging import disable_run_logger

    from tasks.config import Config
    from tasks.extract import extract_activations
    from tasks.models import load_model

    cfg = Config(artifacts_dir=out, n_seqs=n_seqs, device=device, extract_batch=extract_batch)
    batch = np.random.default_rng(0).integers(0, 50257, (n_seqs, 1024)).astype(np.int32)
    store.write_batch(batch, Path(out) / "tokens.parquet")
    tokens = {"tokens": store.file_record(Path(out) / "tokens.parquet")}
    weights_gb = sum(p.stat().st_size for p in Path(model).glob("*.safetensors")) / 1e9
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block

    count = {"blocks": 0}  # every transformer block executed, over all forward passes

    def counter(module: torch.nn.Module, *args: Any) -> None:
        count["blocks"] += isinstance(module, GPT2Block)

    torch.nn.modules.module.register_module_forward_hook(counter)
    start = time.perf_counter()
    if mode == "load":  # the fixed cost of loading the model, in a fresh process
        load_model(model, device)
    elif mode == "laminar":
        with disable_run_logger():
            extract_activations.fn(cfg, model, "bench", "0" * 64, tokens)
    else:  # baseline: one forward pass per layer, each collecting its layer in memory
        bridge = load_model(model, device)
        ids = torch.from_numpy(batch).long().to(device)
        for layer in range(bridge.cfg.n_layers):
            got = []
            with torch.inference_mode():
                bridge.run_with_hooks(
                    ids,
                    return_type=None,
                    stop_at_layer=layer + 1,
                    fwd_hooks=[
                        (
                            f"blocks.{layer}.mlp.hook_pre",
                            lambda a, hook, got=got: got.append(a[:, 1:].cpu()),
                        )
                    ],
                )
            acts = torch.cat(got).reshape(-1, got[0].shape[-1]).numpy()
            idx = np.arange(len(acts))
            import pyarrow.parquet as pq

            pq.write_table(store.activation_table(idx, idx, idx, acts), f"{out}/base{layer}.pq")
    seconds = time.perf_counter() - start
    chunks = -(-n_seqs // cfg.extract_batch) if mode == "laminar" else 1
    peak_gb = peak_rss_gb()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss_gb": peak_gb,
                "weights_gb": weights_gb,
                "n_seqs": n_seqs,
                "blocks_run_per_chunk": count["blocks"] / chunks,
            }
        )
    )


def extracted(shape: str, device: str, folder: Path) -> tuple[float, list[dict[str, Any]]]:
    """laminar's extraction of 10 x 1024 random tokens through the random-weight model."""
    from prefect.logging import disable_run_logger

    from tasks.config import Config
    from tasks.extract import extract_activations

    cfg = Config(artifacts_dir=str(folder / f"sweep-{shape}"), device=device)
    batch = np.random.default_rng(0).integers(0, 50257, (10, 1024)).astype(np.int32)
    store.write_batch(batch, cfg.root / "tokens.parquet")
    tokens = {"tokens": store.file_record(cfg.root / "tokens.parquet")}
    model = str(build_model(shape, folder))
    with disable_run_logger():
        seconds, ext = timed_once(
            lambda: extract_activations.fn(cfg, model, shape, "0" * 64, tokens), device
        )
    return seconds, ext["files"]


def sweep_activations(shape: str, device: str, folder: Path) -> tuple[float, list[Any]]:
    """The sweep's activations, made once per shape and shared by every precision: laminar's
    extraction's seconds and layer files, or on a machine without Prefect or TransformerLens (a
    bare GPU image) NaN and one None per layer (random data of the same shape, which costs the
    same to train on)."""
    try:
        return extracted(shape, device, folder)
    except ImportError:
        return float("nan"), [None] * SHAPES[shape][0]


def sweep(
    shape: str,
    precision: str,
    device: str,
    made: tuple[float, list[Any]],
    epochs: int = 75,
) -> dict:
    """A real-size sweep: every layer's SAE for `epochs` full-batch epochs on 10,230 tokens,
    timed against the FLOP floor of its own precision (10·N·d·m per epoch at the rate of the
    SAE's matmul measured here in that precision). Only training and metrics are timed: each
    layer's activations are read (or drawn) and moved to the device before its clock starts."""
    t_extract, layers = made
    _, _, d = SHAPES[shape]
    m = COURSE.expansion * d
    with matmul_precision(precision):
        rate = limit(N_TOKENS, d, m, "bf16" if precision == "bf16" else "fp32", device)
    seconds = 0.0
    for f in layers:
        x_np = (
            store.read_activations(f)
            if f is not None
            else np.random.default_rng(0).standard_normal((N_TOKENS, d), dtype=np.float32)
        )
        x = torch.from_numpy(x_np).to(device)

        def train(x: torch.Tensor = x) -> None:
            with matmul_precision(precision):
                res = train_sae(x, epochs, precision=precision)
            with matmul_precision("fp32"):
                measures.metrics(res.sae, [x], measures.input_stats([x])["x_var"])

        seconds += timed_once(train, device)[0]
    floor = 10 * N_TOKENS * d * m * epochs * len(layers) / (rate * 1e9)
    return {
        "shape": shape,
        "precision": precision,
        "epochs": epochs,
        "activations": "random" if layers[0] is None else "model",
        "extract_s": t_extract,
        "train_s": seconds,
        "floor_s": floor,
        "x_floor": seconds / floor,
        "matmul_gflops": rate,
    }


if __name__ == "__main__":
    _, model, mode, n_seqs, device, out, batch = sys.argv
    extract_child(model, mode, int(n_seqs), device, out, int(batch))
