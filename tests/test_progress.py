"""Progress arithmetic: FLOPs of known shapes, the estimate line with cached layers subtracted,
the calibration measured once per machine, throttled epoch lines that read the loss only when a
line is due, the epochs-done file the flow reads, and the overall percentage."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import ArticleServer, quick_config, run_artifacts

from tasks import costs, progress


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Loss:
    """A loss whose read-back (float()) is counted, as a device sync would be."""

    reads = 0

    def __init__(self, value: float) -> None:
        self.value = value

    def __float__(self) -> float:
        Loss.reads += 1
        return self.value


def test_flops_of_the_gpt2_shapes() -> None:
    assert costs.sae_flops(10_230, 3072, 6144) == 10 * 10_230 * 3072 * 6144  # 1.93e12
    per_layer = costs.sae_flops(10_230, 5120, 10_240) * 75
    assert costs.human_flops(per_layer * 36) == "14.5 PFLOP"


def test_estimate_subtracts_cached_layers() -> None:
    line = costs.estimate("gpt2-large", 36, 12, 75, 10_230, 5120, 10_240, 210.0, "fp32")
    per_layer_s = costs.sae_flops(10_230, 5120, 10_240) * 75 / 210e9  # 1915 s
    assert line == (
        "gpt2-large: 36 layers × 75 epochs, 10,230 tokens, d 5120 → 14.5 PFLOP; about "
        f"{progress.human_time(24 * per_layer_s)} here (fp32, measured 210 GFLOP/s); "
        "cached: 12 of 36 layers"
    )
    assert progress.human_time(24 * per_layer_s) == "12.8 h"
    assert "about 0 s here" in costs.estimate("m", 3, 3, 75, 100, 8, 16, 1.0, "fp32")


def test_calibration_is_measured_once_per_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fake(device: str, precision: str, n: int, d: int, latent: int) -> float:
        calls.append((device, precision, n, d, latent))
        return 123.0

    monkeypatch.setattr(costs, "measure_rate", fake)
    assert costs.calibrated_rate(tmp_path, "cpu", "fp32", 10_230, 64, 128) == 123.0
    assert costs.calibrated_rate(tmp_path, "cpu", "fp32", 10_230, 64, 128) == 123.0
    assert calls == [("cpu", "fp32", 4096, 64, 128)]  # capped rows; the second run reused it
    costs.calibrated_rate(tmp_path, "cpu", "tf32", 10_230, 64, 128)  # another precision
    assert len(calls) == 2
    saved = json.loads((tmp_path / ".cache" / "calibration.json").read_text())
    assert len(saved) == 2 and all(v == 123.0 for v in saved.values())


def test_measured_rate_is_a_real_measurement() -> None:
    rate = costs.measure_rate("cpu", "fp32", 256, 64, 128)
    assert 0.01 < rate < 1e5  # GFLOP/s of a real matmul on this machine, not a constant


@pytest.mark.parametrize(
    ("per_row_s", "n", "probed", "rows"),
    [
        (1e-7, 4096, [1, 4, 16, 64, 256, 1024, 4096], 4096),  # fast: the run's rows, whole
        (1e-6, 3000, [1, 4, 16, 64, 256, 1024, 3000], 3000),  # the last step capped at n
        # 256 rows took 0.256 s: n = 4096 would take 4.096 s, under 5 s, so all of them
        (1e-3, 4096, [1, 4, 16, 64, 256], 4096),
        # 64 rows took 0.64 s: n = 4096 would take 40.96 s, so 4096 x 5 / 40.96 rows (5 s)
        (1e-2, 4096, [1, 4, 16, 64], 500),
        (0.1, 4096, [1, 4], 50),  # emulated bf16's rate: 409.6 s for n, so 50 rows
        (10.0, 4096, [1], 1),  # never fewer rows than the probe's
    ],
)
def test_a_slow_matmul_is_timed_on_fewer_rows(
    per_row_s: float, n: int, probed: list[int], rows: int
) -> None:
    calls: list[int] = []

    def call(r: int) -> float:
        calls.append(r)
        return r * per_row_s

    assert costs.rows_to_time(call, n) == rows
    assert calls == probed


def test_epoch_lines_are_throttled_and_read_the_loss_only_when_due(tmp_path: Path) -> None:
    clock, lines = Clock(), []
    path = tmp_path / "L00.progress.json"
    report = progress.EpochReporter(
        "gpt2 L0", 20, 15.0, path, clock, log=lambda *a: lines.append(a[0] % a[1:])
    )
    Loss.reads = 0
    for epoch in range(1, 21):
        clock.t = 4.0 * epoch  # 4 s per epoch: 80 s in all
        report(epoch, Loss(1.0 / epoch))
    assert lines == [
        "gpt2 L0: epoch 4/20, loss 0.25, 0.25 epochs/s, about 64 s left for this layer",
        "gpt2 L0: epoch 8/20, loss 0.125, 0.25 epochs/s, about 48 s left for this layer",
        "gpt2 L0: epoch 12/20, loss 0.083333, 0.25 epochs/s, about 32 s left for this layer",
        "gpt2 L0: epoch 16/20, loss 0.0625, 0.25 epochs/s, about 16 s left for this layer",
    ]
    assert Loss.reads == 4  # one read-back per line, none per step
    assert progress.read_epochs(path) == 20  # the last epoch always reaches the file
    quiet = progress.EpochReporter("q", 5, -1, None, clock, log=lines.append)
    for epoch in range(1, 6):
        clock.t += 100
        quiet(epoch, Loss(1.0))
    assert len(lines) == 4


def test_overall_percentage_counts_running_layers_by_epoch() -> None:
    assert progress.overall(1, 30, 4, 75) == pytest.approx(100 * 105 / 300)
    assert progress.overall(4, 0, 4, 75) == 100.0
    assert progress.read_epochs(Path("/nonexistent/progress.json")) == 0


# ------------------------------------------------------------------ through real runs


def flow_logs(flow_run_id: str, needle: str, limit_s: float = 20) -> list[str]:
    """The flow run's log messages (its tasks' included) as the Prefect API stores them, once
    one containing `needle` has arrived (logs are shipped in the background)."""
    import time

    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + limit_s
    with get_client(sync_client=True) as client:
        while True:
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )
            messages = [log.message for log in logs]
            if any(needle in m for m in messages) or time.monotonic() > deadline:
                return messages


def final_progress(flow_run_id: str) -> float:
    [bar] = [a for a in run_artifacts(flow_run_id) if a.type == "progress"]
    return float(bar.data)


@pytest.mark.parametrize("task_runner", ["thread", pytest.param("dask", marks=pytest.mark.cluster)])
def test_a_run_says_where_it_is(
    task_runner: str,
    tmp_path: Path,
    tiny_model: Path,
    article_server: ArticleServer,
) -> None:
    from flows.laminar import laminar

    cfg = quick_config(
        tiny_model,
        article_server,
        tmp_path,
        epochs=20,
        progress_every=0.0,
        task_runner=task_runner,
    )
    first = laminar(cfg)
    logs = flow_logs(first["flow_run_id"], "tiny-gpt2 L2: epoch 19/20")
    # The work ahead, before any heavy work (124 tokens = 4 x 31, d_mlp 256, latent 512).
    assert any(
        m.startswith("laminar: tiny-gpt2: 3 layers × 20 epochs, 124 tokens, d 256 → ")
        and m.endswith("; cached: 0 of 3 layers")
        for m in logs
    ), logs
    for layer in range(3):  # inside each layer, from whatever process trained it
        for epoch in (1, 10, 19):
            assert any(m.startswith(f"tiny-gpt2 L{layer}: epoch {epoch}/20, loss ") for m in logs)
    assert any(m.startswith("extract tiny-gpt2: 1/4 done, about ") for m in logs)
    assert final_progress(first["flow_run_id"]) == 100.0
    assert not list(tmp_path.rglob("*.progress"))  # the epochs-done files are gone

    if task_runner == "dask":
        return  # the rest is the flow's side, the same for both runners
    calibration = tmp_path / ".cache" / "calibration.json"
    stamp = calibration.stat().st_mtime_ns
    again = laminar(cfg)
    logs = flow_logs(again["flow_run_id"], "cached: 3 of 3 layers")
    assert any(
        m.endswith("; about 0 s here (fp32, measured " + m.split("measured ")[-1]) for m in logs
    )
    assert any(m.endswith("cached: 3 of 3 layers") for m in logs)
    assert calibration.stat().st_mtime_ns == stamp  # measured once, reused


def run_in_terminal(args: list[str], cwd: Path) -> str:
    """The CLI with a pseudo-terminal as stdout and stderr, as in a user's terminal."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    from conftest import ROOT

    main, child = pty.openpty()
    # A terminal of 40 rows and 120 columns, as a user's window has (a bare pty has no size).
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "flows" / "laminar.py"), *args],
        cwd=cwd,
        stdin=child,
        stdout=child,
        stderr=child,
        env=os.environ.copy(),
    )
    os.close(child)
    out = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the terminal closed: the program ended
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    assert proc.wait(300) == 0, out.decode(errors="replace")[-3000:]
    return out.decode(errors="replace")


# Loaded by the CLI under test (PYTHONPATH): every SAE epoch lasts at least 10 ms, so a layer of
# 200 epochs outlasts the bar's 0.5 s poll on any CPU. Test-side only: laminar has no such hook.
SLOW_EPOCHS = """
import sys, time
class _SlowEpochs:
    def find_spec(self, name, path, target=None):
        if name != "tasks.progress":
            return None
        sys.meta_path.remove(self)
        import importlib.util
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            call = module.EpochReporter.__call__
            def slow(self, *args, **kwargs):
                time.sleep(0.01)
                return call(self, *args, **kwargs)
            module.EpochReporter.__call__ = slow
        spec.loader.exec_module = exec_module
        return spec
sys.meta_path.insert(0, _SlowEpochs())
"""


@pytest.mark.slow  # a real run in a pseudo-terminal, twice
def test_terminal_bar_in_a_terminal_and_never_with_quiet(
    tmp_path: Path, tiny_model: Path, article_server: ArticleServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.cli import to_args

    (tmp_path / "slow").mkdir()
    (tmp_path / "slow" / "sitecustomize.py").write_text(SLOW_EPOCHS)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "slow"))
    base = quick_config(tiny_model, article_server, tmp_path / "a", epochs=200, layers="0,1")
    args = to_args(base)
    shown = run_in_terminal(args, tmp_path)
    assert re.search(r"SAE runs: 100%\|█+\| 2/2 \[", shown)  # the overall bar, finished
    assert re.search(r"sae tiny-gpt2 L[01]: +\d+%\|█*[ ▏▎▍▌▋▊▉]*\| \d+/200 \[", shown)
    quiet = run_in_terminal([*args, "--refresh", "--quiet", "--progress-every", "0"], tmp_path)
    assert "SAE runs" not in quiet and ": epoch 1/200" not in quiet


def test_bf16_advice_on_cpus_with_and_without_native_bf16(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The line gives the matmul's two measured rates (here stood in for, each at its own
    artifacts dir so none is read from another's calibration) and their ratio."""
    from tasks.config import Config

    cfg = Config(artifacts_dir=str(tmp_path))
    rates = {"fp32": 102.0}  # an AVX2-only EPYC's fp32 rate at GPT-2 small's shape

    def advice(precision: str, native: str | None, bf16: float, root: str) -> list[str]:
        rates["bf16"] = bf16
        monkeypatch.setattr(costs, "native_bf16", lambda: native)
        monkeypatch.setattr(costs, "measure_rate", lambda device, p, *shape: rates[p])
        run = cfg.model_copy(update={"precision": precision, "artifacts_dir": str(tmp_path / root)})
        return costs.bf16_advice(run, "cpu", 64, 500)

    emulated = "--precision bf16 on a CPU without native bf16 (no amx_bf16 or avx512_bf16 flag): "
    assert advice("bf16", None, 1.1, "slow") == [
        emulated + "PyTorch emulates it, and the SAE's matmul ran 93x slower here than in fp32 "
        "(1.1 against 102 GFLOP/s); the run goes on, but --precision fp32 is faster here"
    ]
    assert (
        advice("bf16", None, 78.0, "close")
        == [  # 1.3x: not rounded to '1x slower'
            emulated
            + "PyTorch emulates it, and the SAE's matmul ran 1.3x slower here than in fp32 "
            "(78 against 102 GFLOP/s); the run goes on, but --precision fp32 is faster here"
        ]
    )
    assert advice("bf16", None, 255.0, "fast") == [
        emulated + "the SAE's matmul ran 2.5x as fast here as fp32 (255 against 102 GFLOP/s)"
    ]
    assert advice("bf16", None, 0.0, "untimed") == [
        emulated + "PyTorch emulates it (too quick here to time); the run goes on"
    ]
    assert advice("fp32", None, 1.1, "fp32") == []  # nothing to offer
    assert advice("fp32", "avx512_bf16", 408.0, "native") == [
        "this CPU has native bf16 (avx512_bf16): --precision bf16 ran the SAE's matmul 4.0x as "
        "fast here (408 against 102 GFLOP/s), at the accuracy cost measured in "
        "docs/performance.md (bf16)"
    ]
    assert advice("bf16", "avx512_bf16", 408.0, "native") == []
    known = json.loads((tmp_path / "native" / ".cache" / "calibration.json").read_text())
    assert sorted(known.values()) == [102.0, 408.0]  # both rates kept for the next run
    assert costs.bf16_advice(cfg, "cuda", 64, 500) == []
    assert costs.bf16_advice(cfg.model_copy(update={"precision": "tf32"}), "cpu", 64, 500) == []
