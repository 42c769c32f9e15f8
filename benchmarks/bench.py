"""laminar's benchmark: SAE training against the machine's matmul rate, extraction time and
memory, Parquet throughput, and a scaling table. Random-weight models with the true GPT-2 shapes
are built locally (no hub): right for cost, meaningless for science.

    .venv/bin/python benchmarks/bench.py                 # CPU, about 10 minutes on 2 cores
    .venv/bin/python benchmarks/bench.py --device cuda --sweep   # GPU: adds full-size sweeps

Prints a table and writes JSON (benchmarks/results-<device>.json). Where fewer epochs or tokens
are used than a real run, the table says so; rates are per FLOP, so they carry over."""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks import sae, store  # noqa: E402
from tasks.config import Config  # noqa: E402

SHAPES = {  # name: (n_layer, d_model, d_mlp)
    "gpt2-small": (12, 768, 3072),
    "gpt2-large": (36, 1280, 5120),
}
N_TOKENS = 10 * 1023  # 10 x 1024 windows, position 0 dropped


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Any, device: str, repeat: int = 3) -> float:
    """Best wall time of `repeat` calls after one warm-up."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def matmul_rate(n: int, d: int, m: int, device: str) -> float:
    """fp32 GFLOP/s of the SAE's own matmul shape (N, d) x (d, m): the limit to compare with."""
    x, w = torch.randn(n, d, device=device), torch.randn(m, d, device=device)
    return 2 * n * d * m / timed(lambda: x @ w.T, device) / 1e9


def course_loop(x: torch.Tensor, epochs: int, seed: int) -> tuple[list[float], float]:
    """The baseline: the course's SAE written the straightforward way (autograd, sorted top-k)."""
    d = x.shape[1]
    enc = torch.nn.Linear(d, 2 * d, bias=False).to(x.device)
    with torch.no_grad():
        enc.weight.copy_(sae.TiedSAE(d, 2 * d, 0, torch.Generator().manual_seed(seed)).weight)
    opt = torch.optim.Adam(enc.parameters(), lr=1e-4)
    losses = []
    for _ in range(epochs):
        z = torch.relu(enc(x))
        kth = torch.topk(z, z.shape[1] // 3, dim=1).values[:, -1:]
        z = torch.where(z >= kth, z, torch.zeros_like(z))
        loss = torch.nn.functional.mse_loss(z @ enc.weight, x) + z.abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        z = torch.relu(enc(x))
        kth = torch.topk(z, z.shape[1] // 3, dim=1).values[:, -1:]
        density = 100 * ((z >= kth) & (z > 0)).float().mean().item()
    return losses, density


def timed_once(fn: Any, device: str) -> tuple[float, Any]:
    """Wall time and result of one call (for runs long enough that one is a measurement)."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def bench_sae(n: int, d: int, epochs: int, device: str, rate: float) -> dict[str, Any]:
    x = torch.randn(n, d, device=device)
    flop = 10 * n * d * (2 * d) * epochs

    def ours(x: torch.Tensor = x) -> sae.TrainResult:
        return sae.train(x, expansion=2, topk_frac=1 / 3, epochs=epochs, lr=1e-4, l1=1.0, seed=0)

    ours(x[:256]), course_loop(x[:256], 1, 0)  # warm-up: kernels, allocator, thread pool
    t_ours, res = timed_once(ours, device)
    t_base, (base_losses, base_density) = timed_once(lambda: course_loop(x, epochs, 0), device)
    density = sae.metrics(res.sae, x)["density_pct"]
    return {
        "N": n,
        "d": d,
        "m": 2 * d,
        "epochs": epochs,
        "s_per_epoch": t_ours / epochs,
        "baseline_s_per_epoch": t_base / epochs,
        "gflops": flop / t_ours / 1e9,
        "pct_of_matmul": 100 * flop / t_ours / 1e9 / rate,
        "baseline_pct_of_matmul": 100 * flop / t_base / 1e9 / rate,
        "speedup": t_base / t_ours,
        "max_rel_loss_diff": max(
            abs(a - b) / abs(b) for a, b in zip(res.losses, base_losses, strict=True)
        ),
        "density_diff_pct_points": abs(density - base_density),
    }


def bench_tf32(n: int, d: int, epochs: int, device: str) -> dict[str, Any]:
    """Effect of the opt-in TF32 precision on time, density and final loss (CUDA only)."""
    x = torch.randn(n, d, device=device)
    out = {}
    for precision in ["fp32", "tf32"]:
        with sae.matmul_precision(precision):

            def run() -> sae.TrainResult:
                return sae.train(
                    x, expansion=2, topk_frac=1 / 3, epochs=epochs, lr=1e-4, l1=1.0, seed=0
                )

            run()  # warm-up
            t, res = timed_once(run, device)
        out[precision] = {
            "s": t,
            "final_loss": res.losses[-1],
            "density_pct": sae.metrics(res.sae, x)["density_pct"],
        }
    return out


def bench_parquet(n: int, d: int, folder: Path) -> dict[str, float]:
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
        "--extract-child",
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
    from tasks.extract import extract_activations, load_model
    from tasks.tokens import write_batch

    cfg = Config(artifacts_dir=out, n_seqs=n_seqs, device=device, extract_batch=extract_batch)
    batch = np.random.default_rng(0).integers(0, 50257, (n_seqs, 1024)).astype(np.int32)
    write_batch(batch, Path(out) / "tokens.parquet")
    tokens = {"tokens": store.file_record(Path(out) / "tokens.parquet")}
    weights_gb = sum(p.stat().st_size for p in Path(model).glob("*.safetensors")) / 1e9
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block

    count = {"blocks": 0}  # every transformer block executed, over all forward passes

    def counter(module: torch.nn.Module, *args: Any) -> None:
        count["blocks"] += isinstance(module, GPT2Block)

    torch.nn.modules.module.register_module_forward_hook(counter)
    start = time.perf_counter()
    if mode == "laminar":
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


def sweep(shape: str, precision: str, device: str, folder: Path) -> dict[str, Any]:
    """A real-size sweep: extraction of 10 x 1024 tokens, then every layer's SAE for 75 epochs,
    timed against the FLOP floor (10·N·d·m per epoch at the measured matmul rate)."""
    from prefect.logging import disable_run_logger

    from tasks.config import Config
    from tasks.extract import extract_activations
    from tasks.tokens import write_batch
    from tasks.train import train_layer

    n_layer, _, d = SHAPES[shape]
    cfg = Config(artifacts_dir=str(folder / f"sweep-{shape}"), device=device, precision=precision)
    batch = np.random.default_rng(0).integers(0, 50257, (10, 1024)).astype(np.int32)
    write_batch(batch, cfg.root / "tokens.parquet")
    tokens = {"tokens": store.file_record(cfg.root / "tokens.parquet")}
    with disable_run_logger():
        t_extract, ext = timed_once(
            lambda: extract_activations.fn(
                cfg, str(build_model(shape, folder)), shape, "0" * 64, tokens
            ),
            device,
        )
    with sae.matmul_precision(precision):
        rate = matmul_rate(N_TOKENS, d, 2 * d, device)
    start = time.perf_counter()
    for f in ext["files"]:
        train_layer(store.read_activations(f), cfg, f"{shape} L{f['layer']}")
    seconds = time.perf_counter() - start
    floor = 10 * N_TOKENS * d * 2 * d * cfg.epochs * n_layer / (rate * 1e9)
    return {
        "shape": shape,
        "precision": precision,
        "extract_s": t_extract,
        "train_s": seconds,
        "floor_s": floor,
        "x_floor": seconds / floor,
        "matmul_gflops": rate,
    }


def fixed_costs() -> dict[str, float]:
    """Seconds of a trivial Prefect flow on the ephemeral API, in a fresh process."""
    code = "from prefect import flow\n@flow\ndef f(): return 1\nf()"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, cwd=ROOT)
    return {"prefect_trivial_flow_s": time.perf_counter() - start}


def scaling(device: str) -> list[dict[str, float]]:
    """Seconds per epoch as N and d double (m = 2d): t grows with N·d², so predict from here."""
    rows = []
    for n, d in [(2560, 768), (5120, 768), (10240, 768), (5120, 1536), (5120, 3072)]:
        x = torch.randn(n, d, device=device)

        def run(x: torch.Tensor = x) -> sae.TrainResult:
            return sae.train(x, expansion=2, topk_frac=1 / 3, epochs=2, lr=1e-4, l1=1.0, seed=0)

        run(x[:256])
        rows.append({"N": n, "d": d, "s_per_epoch": timed_once(run, device)[0] / 2})
    return rows


def section_sae(args: argparse.Namespace, n: int) -> dict[str, Any]:
    widths = (
        [(64, "small width")]
        if args.quick
        else [(3072, "gpt2-small"), (5120, "gpt2-large"), (256, "small width")]
    )
    rows = []
    for d, label in widths:
        rate = matmul_rate(n, d, 2 * d, args.device)
        rows.append(
            {
                "shape": label,
                "matmul_gflops": rate,
                **bench_sae(n, d, args.epochs, args.device, rate),
            }
        )
        print_row("sae", rows[-1])
    out: dict[str, Any] = {"sae": rows}
    if args.device == "cuda":
        out["tf32"] = bench_tf32(n, 64 if args.quick else 5120, args.epochs, args.device)
        print_row("tf32", out["tf32"])
    return out


def section_extract(args: argparse.Namespace, n: int) -> dict[str, Any]:
    rows = {}
    for shape in [] if args.quick else SHAPES:
        for mode in ["laminar", "baseline"] if shape == "gpt2-small" else ["laminar"]:
            rows[f"{shape} {mode}"] = bench_extract(
                shape, mode, args.extract_seqs, args.device, args.models_dir, Config().extract_batch
            )
            print_row(f"extract {shape} {mode}", rows[f"{shape} {mode}"])
    return {"extract": rows}


def section_sweeps(args: argparse.Namespace, n: int) -> dict[str, Any]:
    rows = []
    for shape in SHAPES if args.sweep else []:
        for precision in ["fp32", "tf32"]:
            rows.append(sweep(shape, precision, args.device, args.models_dir))
            print_row("sweep", rows[-1])
    return {"sweeps": rows}


SECTIONS = {
    "sae": section_sae,
    "parquet": lambda a, n: {"parquet": bench_parquet(512 if a.quick else n, 5120, a.models_dir)},
    "extract": section_extract,
    "scaling": lambda a, n: {"scaling": [] if a.quick else scaling(a.device)},
    "sweeps": section_sweeps,
    "fixed": lambda a, n: {"fixed": fixed_costs()},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--epochs", type=int, default=2, help="epochs per SAE timing")
    parser.add_argument("--extract-seqs", type=int, default=2, help="1024-token sequences")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks it runs")
    parser.add_argument("--sweep", action="store_true", help="full-size sweeps (for a GPU)")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help="comma-separated subset; results merge into --out",
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--models-dir", type=Path, default=ROOT / "benchmarks" / ".models")
    args = parser.parse_args()
    torch.manual_seed(0)
    n = 512 if args.quick else N_TOKENS
    out = args.out or ROOT / "benchmarks" / (
        f"results-{args.device}{'-quick' if args.quick else ''}.json"
    )
    report = json.loads(out.read_text()) if out.exists() else {}
    report.update(device=args.device, machine=machine(args.device), N=n)
    for name in args.sections.split(","):
        result = SECTIONS[name](args, n)
        report.update(result)
        for key, value in result.items():
            if isinstance(value, dict) and key not in ("extract", "tf32"):
                print_row(key, value)
        if name == "scaling":
            for row in report["scaling"]:
                print_row("scaling", row)
        out.write_text(json.dumps(report, indent=2))  # after each section: partial results kept
    print(f"wrote {out}")


def machine(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def print_row(section: str, row: dict[str, Any]) -> None:
    cells = ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
    )
    print(f"{section:>24}: {cells}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--extract-child":
        _, _, model, mode, n_seqs, device, out, batch = sys.argv
        extract_child(model, mode, int(n_seqs), device, out, int(batch))
    else:
        main()
