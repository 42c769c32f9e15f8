"""What process and machine this is: for the records each result carries (which host, process
and device made it) and for error messages on Dask workers. Imports no Dask: a module that
asks whether it runs on a worker must not pull the cluster machinery in."""

from __future__ import annotations

import functools
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys


def logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run's logger inside a flow or task run (its lines reach the UI), else a plain
    one (the CLI before Prefect starts)."""
    try:
        from prefect.exceptions import MissingContextError
        from prefect.logging import get_run_logger

        return get_run_logger()
    except (ImportError, MissingContextError):
        return logging.getLogger("laminar")


def this_process() -> str:
    """host:pid, recorded with each result: which machine and (Dask worker) process made it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def on_worker() -> str:
    """' on Dask worker ADDRESS' inside a Dask worker, '' elsewhere (for error messages)."""
    if "distributed" not in sys.modules:  # every Dask worker has it loaded: not one
        return ""
    try:
        from distributed import get_worker

        return f" on Dask worker {get_worker().address}"
    except (ImportError, ValueError):
        return ""


@functools.cache
def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # native bf16 matmuls; without them PyTorch emulates


def native_bf16() -> str | None:
    """Which native bf16 instructions this CPU has ('amx_bf16', 'avx512_bf16'), or None."""
    flags = cpu_flags()
    return next((f for f in BF16_FLAGS if f in flags), None)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


@functools.cache
def gpu_driver() -> str:
    """The NVIDIA driver version, from nvidia-smi where it is installed."""
    if not shutil.which("nvidia-smi"):
        return "unknown"
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.splitlines()[0].strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def describe_device(device: str) -> str:
    """'cpu: <model name>, N threads on HOST' or 'cuda: <GPU>, CUDA x.y, driver z on HOST'."""
    import torch

    host = socket.gethostname()
    if device.startswith("cuda"):
        gpu = torch.cuda.get_device_name(torch.device(device))
        return f"cuda: {gpu}, CUDA {torch.version.cuda}, driver {gpu_driver()} on {host}"
    return f"cpu: {cpu_name()}, {torch.get_num_threads()} threads on {host}"


def available_memory(device: str) -> int | None:
    """Bytes free for a new allocation on `device`: a CUDA device's free memory, else the
    machine's MemAvailable (Linux); None where neither can be read."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
