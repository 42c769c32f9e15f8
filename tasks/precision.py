"""torch's float32 matmul precision, held per block: TF32 only where a block asks for it.

`--precision tf32` lets CUDA use TF32 tensor cores for the SAE's float32 matmuls; everything
else laminar computes in float32 (extraction, fp32 trainings, metrics, latent cards) must stay
exact. The setting is one for the whole process, and laminar runs blocks in several threads (the
thread runner's pool beside the flow thread, a Dask worker's threads), so the gate below holds
it for each block instead of letting one thread's setting leak into another's."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch


class _PrecisionGate:
    """The setting for every block that asks for one: blocks that want the same setting run
    together, a block that wants the other waits until the last of them ends (a TF32 training
    in one thread would otherwise put another thread's matmuls in TF32 too)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._setting: str | None = None  # held by _count blocks, None when no block runs
        self._count = 0
        self._held = threading.local()  # this thread's setting and nesting depth

    @contextlib.contextmanager
    def hold(self, setting: str) -> Iterator[None]:
        mine: tuple[str, int] = getattr(self._held, "value", ("", 0))
        if mine[1] and mine[0] != setting:  # waiting on itself would never end
            raise RuntimeError(f"matmul precision {setting!r} asked inside {mine[0]!r}")
        with self._cond:
            if not mine[1]:
                self._cond.wait_for(lambda: self._count == 0 or self._setting == setting)
                if self._count == 0:
                    torch.set_float32_matmul_precision(setting)
                    self._setting = setting
            self._count += 1
        self._held.value = (setting, mine[1] + 1)
        try:
            yield
        finally:
            self._held.value = (setting, mine[1])
            with self._cond:
                self._count -= 1
                if self._count == 0:
                    torch.set_float32_matmul_precision("highest")  # torch's default
                    self._setting = None
                    self._cond.notify_all()


_GATE = _PrecisionGate()


def matmul_precision(precision: str) -> contextlib.AbstractContextManager[None]:
    """Float32 matmuls in this block at `precision`: 'tf32' lets CUDA use TF32 tensor cores,
    anything else is exact ('highest'). Blocks of the other setting in other threads wait (see
    _PrecisionGate), so TF32 never reaches matmuls that did not ask for it."""
    return _GATE.hold("high" if precision == "tf32" else "highest")
