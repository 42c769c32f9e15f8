"""What a run will cost, said before any heavy work.

- `announce` / `estimate`: one line per model: layers x epochs, tokens, width, FLOPs, the time
  they take at the rate this device measured (a short matmul at the run's own shape, cached per
  machine, device and precision under the artifacts dir), and the layers already cached (their
  time subtracted); on a CPU, a line about bf16 (`bf16_advice`).
- `clean_bytes` / `check_splice_memory`: the downstream measures' peak memory, and a run that
  cannot fit refused in one sentence before any work."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from tasks import paths
from tasks.config import Config
from tasks.host import available_memory, describe_device, native_bf16
from tasks.precision import matmul_precision
from tasks.progress import human_time
from tasks.records import Batch, EvalBatch, ModelFacts
from tasks.settings import LaminarError, plural, resolve_device
from tasks.store import write_json

CALIBRATION_SECONDS = 0.5  # time the matmul for at least this long (GPT-2 shapes: 2-7 s in all)

CALIBRATION_MAX_SECONDS = 5.0  # one timed matmul at most about this long: fewer rows if slower

PROBE_SECONDS = 0.25  # the probe's rows grow fourfold until one matmul takes this long

CALIBRATION_REPEATS = 20  # or this many times, whichever comes first (small shapes)

CALIBRATION_ROWS = 4096  # rows of the timed matmul at most (the run's tokens if fewer)


def training_tokens(cfg: Config) -> int:
    """The tokens each SAE trains on: n_seqs windows of seq_len, position 0 dropped unless
    kept (--keep-first-token)."""
    return cfg.n_seqs * (cfg.seq_len - (0 if cfg.keep_first_token else 1))


def sae_flops(n_tokens: int, d: int, latent: int) -> float:
    """FLOPs of one full-batch epoch: five (N, d, m) matmuls (encode, decode, three in the
    backward pass), 2 N d m each."""
    return 10.0 * n_tokens * d * latent


def human_flops(flops: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if flops >= scale:
            return f"{flops / scale:.3g} {unit}"
    return f"{flops:.3g} FLOP"


def measure_rate(device: str, precision: str, n: int, d: int, latent: int) -> float:
    """GFLOP/s of the SAE's (n, d) x (d, m) matmul on `device`, timed over a few repeats, on
    fewer than n rows where one call of n would take longer than CALIBRATION_MAX_SECONDS
    (`rows_to_time`): bf16 that a CPU emulates can run hundreds of times below fp32
    (docs/performance.md, "Without native bf16"), so one call at a GPT-2 shape took minutes."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(n, d, device=device, dtype=dtype)
    b = torch.randn(d, latent, device=device, dtype=dtype)

    def call(rows: int) -> float:
        start = time.perf_counter()
        torch.mm(a[:rows], b)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    with matmul_precision(precision):
        call(1)  # warm-up: the first call also sets up the kernels
        rows = rows_to_time(call, n)
        done, start = 0, time.perf_counter()
        while done < CALIBRATION_REPEATS and time.perf_counter() - start < CALIBRATION_SECONDS:
            call(rows)
            done += 1
        seconds = time.perf_counter() - start
    return 2.0 * rows * d * latent * done / seconds / 1e9 if seconds > 0 else 0.0


def rows_to_time(call: Callable[[int], float], n: int) -> int:
    """The rows to time the matmul on: n, unless at the rate of a probe (1 row, then 4x as many
    until a call takes PROBE_SECONDS) one call of n would take longer than
    CALIBRATION_MAX_SECONDS; then as many as take about that long. `call(rows)`: its seconds."""
    rows = 1
    while (seconds := call(rows)) < PROBE_SECONDS and rows < n:
        rows = min(n, 4 * rows)
    whole = seconds * n / rows
    if whole <= CALIBRATION_MAX_SECONDS:
        return n
    return max(rows, int(n * CALIBRATION_MAX_SECONDS / whole))


def calibrated_rate(
    root: Path, device: str, precision: str, n_tokens: int, d: int, latent: int
) -> float:
    """The measured rate at the run's shape (at most CALIBRATION_ROWS rows), cached in
    <root>/.cache/calibration.json per machine, device, precision, thread count and shape: a
    second run measures nothing."""
    import torch

    path = paths.calibration(root)
    n = min(n_tokens, CALIBRATION_ROWS)
    key = f"{describe_device(device)} | {precision} | {torch.get_num_threads()} | {n}x{d}x{latent}"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return float(known[key])
    rate = measure_rate(device, precision, n, d, latent)
    if rate > 0:  # 0: unknown, measured again next time rather than remembered
        known[key] = rate
        write_json(path, known)
    return rate


def estimate(
    name: str,
    layers: int,
    cached: int,
    epochs: int,
    n_tokens: int,
    d: int,
    latent: int,
    gflops: float,
    precision: str,
) -> str:
    """'gpt2-large: 36 layers × 75 epochs, 10,230 tokens, d 5120 → 14.5 PFLOP; about 19 h here
    (fp32, measured 210 GFLOP/s); cached: 12 of 36 layers'."""
    per_layer = sae_flops(n_tokens, d, latent) * epochs
    if gflops > 0:
        left = per_layer * (layers - cached) / (gflops * 1e9)
        rate = figure_text(gflops)
        when = f"about {human_time(left)} here ({precision}, measured {rate} GFLOP/s)"
    else:  # a matmul too fast for the clock, or none timed: no rate, so no time
        when = f"time here unknown ({precision}, no matmul rate measured)"
    return (
        f"{name}: {plural(layers, 'layer')} × {plural(epochs, 'epoch')}, {n_tokens:,} tokens, "
        f"d {d} → {human_flops(per_layer * layers)}; {when}; cached: {cached} of "
        f"{plural(layers, 'layer')}"
    )


def figure_text(value: float) -> str:
    """A measured rate or ratio for a sentence: '210', or two significant digits below 10
    ('1.1', '0.26'), where rounding to a whole number would say 1 or 0."""
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


EMULATED = "--precision bf16 on a CPU without native bf16 (no amx_bf16 or avx512_bf16 flag): "


def bf16_advice(cfg: Config, device: str, d: int, n_tokens: int) -> list[str]:
    """On a CPU, one line about bf16, from the SAE's matmul measured here in both precisions
    (cached with the run's calibration): for a bf16 run on a CPU without native bf16, how much
    slower PyTorch's emulation ran than fp32 (it goes on); for an fp32 run on a CPU with it,
    how much faster bf16 ran."""
    if device != "cpu" or cfg.precision == "tf32":
        return []
    native = native_bf16()
    emulated_run = cfg.precision == "bf16" and native is None
    could_use_it = cfg.precision == "fp32" and native is not None
    if not (emulated_run or could_use_it):
        return []
    latent = cfg.expansion * d
    fp32 = calibrated_rate(cfg.root, device, "fp32", n_tokens, d, latent)
    bf16 = calibrated_rate(cfg.root, device, "bf16", n_tokens, d, latent)
    if fp32 <= 0 or bf16 <= 0:  # a matmul too fast for the clock: no ratio to give
        if native is not None:
            return []
        return [EMULATED + "PyTorch emulates it (too quick here to time); the run goes on"]
    measured = f"({figure_text(bf16)} against {figure_text(fp32)} GFLOP/s)"
    if native is not None:
        return [
            f"this CPU has native bf16 ({native}): --precision bf16 ran the SAE's matmul "
            f"{bf16 / fp32:.1f}x as fast here {measured}, at the accuracy cost measured in "
            "docs/performance.md (bf16)"
        ]
    if bf16 >= fp32:
        return [
            EMULATED + f"the SAE's matmul ran {bf16 / fp32:.1f}x as fast here as fp32 {measured}"
        ]
    slower = figure_text(fp32 / bf16)
    return [
        EMULATED + f"PyTorch emulates it, and the SAE's matmul ran {slower}x slower here than in "
        f"fp32 {measured}; the run goes on, but --precision fp32 is faster here"
    ]


def splice_passes(layers: int, seeds: int) -> int:
    """Forward passes of the model that splicing costs (tasks.splice): the clean one, then per
    layer one ablated and, per seed, one spliced pass."""
    return 1 + layers * (1 + seeds)


CHUNK_BUFFERS = 7  # (T, vocab) fp32 buffers a chunk's sequence holds at the peak (measured)


def clean_bytes(n_seqs: int, seq_len: int, vocab: int, chunk: int) -> int:
    """Memory the splices (tasks.splice) hold at their peak: the clean log-probs (E, T, vocab)
    fp32, kept for the run, plus one chunk's working set of CHUNK_BUFFERS (T, vocab) buffers
    per sequence: its log-probs, the clean probabilities of the KL, and the forward pass's own
    (measured at GPT-2 small's shape: benchmarks/splice.py --memory, docs/measures.md)."""
    return 4 * seq_len * vocab * (n_seqs + CHUNK_BUFFERS * min(chunk, n_seqs))


def check_splice_memory(cfg: Config, models: list[ModelFacts], device: str) -> None:
    """Refuse, before any work, a run whose splices cannot fit in the device's free memory."""
    free = available_memory(device)
    for m in models if cfg.n_eval_seqs else []:
        need = clean_bytes(cfg.n_eval_seqs, cfg.seq_len, m["vocab"], cfg.extract_batch)
        if free is not None and need > free:
            raise LaminarError(
                f"--eval-seqs {cfg.n_eval_seqs} × --seq-len {cfg.seq_len} would hold "
                f"{human_bytes(need)} of {m['name']}'s next-token log-probs (vocabulary "
                f"{m['vocab']:,}) on {device}, which has {human_bytes(free)} free: lower "
                "--eval-seqs (or --extract-batch), or give --eval-seqs 0 to skip the splices."
            )


def human_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def splice_estimate(cfg: Config, m: ModelFacts, held: EvalBatch) -> str:
    """'gpt2: downstream measures (SAEs spliced in) on 2 × 1024 tokens (2 held out): 25 forward
    passes of the model, 0.835 GB held for the clean log-probs'."""
    passes = splice_passes(len(m["layers"]), 1 if cfg.saes else len(cfg.sae_seeds))
    n = held["held_out"] + held["in_sample"]
    where = f"{held['held_out']} held out" + (
        f", {held['in_sample']} in-sample" if held["in_sample"] else ""
    )
    memory = clean_bytes(n, cfg.seq_len, m["vocab"], cfg.extract_batch)
    return (
        f"{m['name']}: downstream measures (SAEs spliced in) on {n} × {cfg.seq_len} tokens "
        f"({where}): {passes} forward passes of the model, {human_bytes(memory)} held at the "
        "peak for the clean log-probs"
    )


def announce(
    cfg: Config,
    models: list[ModelFacts],
    batches: dict[str, Batch],
    holdouts: dict[str, EvalBatch],
) -> list[str]:
    """Before any heavy work: one line per model with the work ahead and its time on this
    device (`estimate`), printed (so logged) and published as an artifact."""
    try:
        device = resolve_device(cfg.device)
    except LaminarError:  # a Dask run whose workers have the GPU this machine lacks
        return []
    n_tokens = training_tokens(cfg)
    lines = []
    for m in models:
        sha = batches[m["tokenizer_fingerprint"]]["tokens"]["sha256"]
        folder = paths.activation_dir(cfg, m["name"], m["weights_fingerprint"], sha)
        runs = [(layer, s) for layer in m["layers"] for s in cfg.sae_seeds]
        cached = sum(
            paths.layer_json(cfg, paths.layer_file(folder, layer), s).exists() for layer, s in runs
        )
        latent = cfg.expansion * m["d"]
        rate = calibrated_rate(cfg.root, device, cfg.precision, n_tokens, m["d"], latent)
        lines.append(
            estimate(
                m["name"],
                len(runs),
                cached,
                cfg.epochs,
                n_tokens,
                m["d"],
                latent,
                rate,
                cfg.precision,
            )
        )
    lines += [
        splice_estimate(cfg, m, holdouts[m["tokenizer_fingerprint"]])
        for m in models
        if m["tokenizer_fingerprint"] in holdouts
    ]
    if models:
        lines += bf16_advice(cfg, device, models[0]["d"], n_tokens)
    for line in lines:
        print(f"laminar: {line}")
    from prefect.artifacts import create_markdown_artifact  # not at import: preflight's module

    create_markdown_artifact(
        key="laminar-estimate",
        markdown="# The work ahead\n\n" + "\n".join(f"- {line}" for line in lines),
        description="estimated before the run started",
    )
    return lines
