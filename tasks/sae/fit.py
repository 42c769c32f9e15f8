"""Training: the one epoch loop every SAE of laminar goes through, full batch or minibatches.

An epoch is a sequence of (step, rows) pairs; each step writes its batch's gradient and returns
its loss, and Adam steps after it. The epoch's loss is the row-weighted mean of its batches'
losses, each taken before that batch's update: with one batch of all N rows (the course's full
batch), exactly that batch's loss."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from tasks.sae import course

Step = Callable[[], torch.Tensor]  # one batch: its loss, with the gradient written


@dataclass
class TrainResult:
    sae: course.TiedSAE
    losses: list[float]  # loss of each epoch (see the module docstring)


def run_epochs(
    model: course.TiedSAE,
    opt: torch.optim.Optimizer,
    epochs: int,
    epoch: Callable[[], Iterable[tuple[Step, int]]],
    n_rows: int,
    on_epoch: Callable[[int, torch.Tensor], None] | None = None,
) -> TrainResult:
    """`epochs` passes of `epoch()` over n_rows rows, an Adam step after each batch.
    `on_epoch(k, loss)` is told after epoch k with the loss still on the device (reading it is
    the caller's choice): no sync per step."""
    device = model.weight.device
    losses = torch.empty(epochs, device=device)
    for index in range(epochs):
        total = torch.zeros((), dtype=torch.float64, device=device)
        for step, rows in epoch():
            # exact for one batch: a float32 loss times N < 2^29 is exact in float64
            total += step().double() * rows
            opt.step()
        losses[index] = total / n_rows
        if on_epoch is not None:
            on_epoch(index + 1, losses[index])
    return TrainResult(model, losses.tolist())


def train(
    x: torch.Tensor,
    *,
    expansion: int,
    topk_frac: float,
    epochs: int,
    lr: float,
    l1: float,
    seed: int,
    precision: str = "fp32",
    on_epoch: Callable[[int, torch.Tensor], None] | None = None,
) -> TrainResult:
    """The course's training: a fresh seeded SAE, `epochs` full-batch Adam steps on x (N, d)."""
    model, opt = course.fresh(x.shape[1], expansion, topk_frac, lr, seed, x.device, precision)
    step = course.step_fn(x, precision, course.Workspace())
    batch = [(lambda: step(model, l1), len(x))]
    return run_epochs(model, opt, epochs, lambda: batch, len(x), on_epoch)
