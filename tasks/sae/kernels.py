"""The CPU kernels of the course's step: reusable buffers, and ReLU-then-top-k as one bitmask.

Shapes: z (N, m) latents before the ReLU, a row per token."""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch


def topk_k(latent: int, frac: float) -> int:
    """k = floor(latent * frac); the small epsilon makes 1/3 of 6144 exactly 2048 in floats."""
    return math.floor(latent * frac + 1e-9)


class Workspace:
    """The step's large buffers, kept from one step to the next. A fresh (N, m) tensor is new
    memory the kernel must fault in page by page (~0.07 s for 250 MB on a 2-core CPU), and a
    step makes several; views of buffers that only grow cost nothing after the first step.
    Minibatches of any size up to the first use views of the same buffers."""

    def __init__(self) -> None:
        self._bytes: dict[str, torch.Tensor] = {}

    def get(
        self, name: str, shape: tuple[int, ...], like: torch.Tensor, dtype: Any = None, at: int = 0
    ) -> torch.Tensor:
        """A contiguous `shape` view of buffer `name`, `at` bytes in (contents undefined)."""
        dtype = dtype or like.dtype
        end = at + math.prod(shape) * dtype.itemsize
        buf = self._bytes.get(name)
        if buf is None or buf.numel() < end or buf.device != like.device:
            buf = self._bytes[name] = torch.empty(end, dtype=torch.uint8, device=like.device)
        return buf[at:end].view(dtype).view(shape)


# Same-width integers: a float's bits read as an integer. For floats >= +0 the integers sort as
# the floats do, and every negative float (and -0.0) reads as a negative integer, below them.
BITS = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.bfloat16: torch.int16,
    torch.float16: torch.int16,
}


class _Pool:
    """The selection's worker threads, made on first use and kept for the process: a pool per
    call costs a thread start per row block, and the threads hold no state between calls."""

    executor: ThreadPoolExecutor | None = None

    @classmethod
    def map(cls, fn: Any, parts: list[slice]) -> None:
        if cls.executor is None:
            cls.executor = ThreadPoolExecutor(max(2, os.cpu_count() or 2), "laminar-topk")
        list(cls.executor.map(fn, parts))


def tiny(dtype: torch.dtype) -> float:
    """The smallest float > 0 of `dtype`: a threshold that keeps exactly the positive values."""
    zero = torch.zeros((), dtype=dtype)
    return torch.nextafter(zero, torch.ones((), dtype=dtype)).item()


def kth_bits(z: torch.Tensor, k: int, scratch: torch.Tensor) -> torch.Tensor:
    """(N,) the k-th largest entry of each row of z (N, m), as its integer bits, on the CPU:
    numpy's introselect over the rows' bits (partition, not sort: 0.02-0.04 s where topk takes
    0.3 s at GPT-2 small's width), the rows split among torch's threads. `scratch` is an (N, m)
    buffer of z's size that the partition may overwrite."""
    n, m = z.shape
    bits = z.view(BITS[z.dtype]).numpy()
    work = scratch.view(BITS[z.dtype]).numpy()
    out = np.empty(n, dtype=bits.dtype)

    def rows(part: slice) -> None:
        np.copyto(work[part], bits[part])
        work[part].partition(m - k, axis=1)  # the k-th largest now at column m - k
        out[part] = work[part, m - k]

    parts = max(1, min(torch.get_num_threads(), n // 64))
    step = -(-n // parts)
    if parts == 1:
        rows(slice(0, n))
    else:
        _Pool.map(rows, [slice(i, i + step) for i in range(0, n, step)])
    return torch.from_numpy(out)


def threshold(z: torch.Tensor, k: int, ws: Workspace) -> torch.Tensor:
    """(N, 1) in z's dtype: each row's keep threshold, max(its k-th largest, smallest float > 0).
    A latent is kept where z >= threshold: in the top k (ties at the k-th value all kept) and
    positive. z may be taken before or after the ReLU (the ReLU commutes with taking the k-th
    largest, and the threshold is > 0 either way); before is faster, since a ReLU'd row's many
    zeros make ties that slow the selection. k <= 0 or k >= m keeps every positive latent."""
    n, m = z.shape
    floor = tiny(z.dtype)
    if not 0 < k < m:
        return torch.full((n, 1), floor, dtype=z.dtype, device=z.device)
    with torch.profiler.record_function("laminar::topk"):
        scratch = ws.get("g_z", (n, m), z)  # free until dL/dz is computed
        if z.device.type == "cpu" and z.dtype in BITS:
            kth = kth_bits(z, k, scratch).clamp_(min=1).view(z.dtype)  # 1: the bits of `floor`
            return kth.unsqueeze(1)
        # elsewhere (CUDA) topk is fast; its values and indices live in the scratch buffer
        indices_at = -(-n * k * z.element_size() // 64) * 64  # after the values, aligned
        out = (ws.get("g_z", (n, k), z), ws.get("g_z", (n, k), z, torch.long, at=indices_at))
        kth = torch.topk(z, k, dim=1, sorted=False, out=out).values.amin(dim=1, keepdim=True)
        return kth.clamp_(min=floor)


def keep_mask(z: torch.Tensor, k: int, ws: Workspace) -> torch.Tensor:
    """(N, m) integer mask of z's width: all bits set where a latent survives the ReLU and the
    top-k (see `threshold`), else 0. `masked(t, mask)` then applies the ReLU and top-k to z and
    passes dL/dz through both, one bitwise AND each: in bf16 a float multiply by a 0/1 mask is
    4x slower here (it converts every element), and AND leaves kept values bit for bit."""
    n, m = z.shape
    bits = BITS[z.dtype]
    # compared as integer bits: the same order as the floats for a threshold > 0 (negatives
    # read as negative integers), and 20x faster here than a float compare into integers
    limit = threshold(z, k, ws).view(bits)
    mask = torch.ge(z.view(bits), limit, out=ws.get("mask", (n, m), z, bits))
    return mask.neg_()  # 1 -> all bits set


def masked(t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """t with every entry where `mask` is 0 set to +0.0, in place."""
    t.view(mask.dtype).bitwise_and_(mask)
    return t
