"""Progress inside each layer, told as it goes.

- `EpochReporter`: called by the training loop after every epoch; logs epoch k of n, the loss
  and the layer's time left at most every `every` seconds, and writes the epochs done to a small
  file the flow reads (whatever process or Dask worker trains the layer) for its progress bar
  and artifact. The loss is read back from the device only when a line is due, so a GPU run is
  not synchronised on every step.
- `Ticker`: the same throttled lines for extraction's chunks.
The work ahead, before a run starts, is tasks.costs."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.host import logger

FILE_EVERY_S = 0.5  # write the epochs-done file at most this often


def human_time(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def read_epochs(path: Path) -> int:
    """Epochs done, from a progress file (0 if it is missing or half-written)."""
    try:
        return int(json.loads(path.read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


class EpochReporter:
    """Told after each epoch; see the module docstring. `clock` is for tests."""

    def __init__(
        self,
        label: str,
        epochs: int,
        every: float,
        path: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        log: Callable[..., Any] | None = None,
    ) -> None:
        self.label, self.epochs, self.every, self.path, self.clock = (
            label,
            epochs,
            every,
            path,
            clock,
        )
        self.log = log or logger().info
        self.start = self.last_line = self.last_file = clock()

    def __call__(self, epoch: int, loss: Any) -> None:
        now = self.clock()
        if self.path is not None and (now - self.last_file >= FILE_EVERY_S or epoch == self.epochs):
            self.last_file = now
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"epoch": epoch, "epochs": self.epochs}))
            tmp.replace(self.path)
        if self.every < 0 or now - self.last_line < self.every or epoch == self.epochs:
            return
        self.last_line = now
        value = float(loss)  # the only read-back from the device: once per line
        self.log(
            "%s: epoch %d/%d, loss %.5g, %s",
            self.label,
            epoch,
            self.epochs,
            value,
            self.pace(epoch, now),
        )

    def pace(self, epoch: int, now: float) -> str:
        """'0.25 epochs/s, about 64 s left for this layer'; unknown while no time has passed."""
        elapsed = now - self.start
        if elapsed <= 0 or epoch <= 0:
            return "rate unknown yet (no time measured)"
        rate = epoch / elapsed
        left = human_time((self.epochs - epoch) / rate)
        return f"{rate:.2f} epochs/s, about {left} left for this layer"


class Ticker:
    """Throttled 'done/total with time left' lines, e.g. for extraction's chunks."""

    def __init__(
        self, what: str, total: int, every: float, clock: Callable[[], float] = time.monotonic
    ):
        self.what, self.total, self.every, self.clock = what, total, every, clock
        self.start = self.last = clock()

    def __call__(self, done: int) -> None:
        now = self.clock()
        if self.every < 0 or now - self.last < self.every or not 0 < done < self.total:
            return
        self.last = now
        left = (self.total - done) * (now - self.start) / max(done, 1)
        logger().info(
            "%s: %d/%d done, about %s left", self.what, done, self.total, human_time(left)
        )


def overall(done_layers: int, partial_epochs: int, total_layers: int, epochs: int) -> float:
    """Percent of all SAE epochs done: finished layers count whole, running ones by epoch."""
    total = total_layers * epochs
    return 100.0 * min(total, done_layers * epochs + partial_epochs) / total if total else 100.0
