"""The machine a figure came from, named as the docs name it beside every figure."""

from __future__ import annotations

import torch


def machine(device: str) -> str:
    """The GPU's name, or the CPU's model, family, threads and the flags that decide its matmul
    rates: 'AMD EPYC (family 26, model 2), 2 threads, flags avx2 avx512f avx512_bf16'. The
    family tells apart CPUs that /proc/cpuinfo names alike: an EPYC of family 26 runs bf16
    matmuls at 4x its fp32 rate, one whose bf16 runs at 2x is of an older family."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    from tasks.host import cpu_flags, cpu_name

    flags = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in cpu_flags())
    family = cpu_family()
    name = f"{cpu_name()} ({family})" if family else cpu_name()
    return f"{name}, {torch.get_num_threads()} threads, flags {flags or 'none of note'}"


def cpu_family() -> str:
    """'family 26, model 2' from /proc/cpuinfo's first processor; '' where it has none."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("cpu family", "model"):
                    fields.setdefault(key.strip(), value.strip())
                if not line.strip():  # the first processor's block ends
                    break
    except OSError:
        return ""
    if len(fields) < 2:
        return ""
    return f"family {fields['cpu family']}, model {fields['model']}"
