"""The optimisation loop every study's models train with: AdamW, an optional one-cycle learning
rate schedule, the mixed-precision gradient scaler of the job's precision, epochs of batches
with a progress bar and a logged mean loss. What differs between models stays with the caller:
how batches are drawn (each study seeds its own generator, so a seed gives the same batches on
any device), the loss of a batch, and what happens after each step (e.g. a momentum teacher)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

import torch
from tqdm import tqdm

from tissuekd.compute import CPU, Compute

log = logging.getLogger(__name__)
MIN_SCHEDULE = 20  # OneCycleLR needs a warm-up of at least 2 steps (10% of 20); tiny runs just stop early


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator, limit: int | None = None
                     ) -> Iterator[torch.Tensor]:
    """Row indices 0..n-1 in the order of one permutation drawn from `generator`, the first
    `limit` of them (all when None), in batches of `batch_size`."""
    return iter(torch.randperm(n, generator=generator)[:limit].split(batch_size))


def optimise(
    params: Iterable[torch.nn.Parameter] | list[dict],
    epochs: int,
    batches: Callable[[int], Iterable],
    loss_of: Callable[[object], torch.Tensor | None],
    *,
    lr: float,
    weight_decay: float,
    compute: Compute = CPU,
    total_steps: int | None = None,
    after_step: Callable[[int], None] | None = None,
    desc: str = "train",
    progress: bool = False,
) -> None:
    """Train by AdamW on `params` for `epochs` passes.

    Parameters
    ----------
    params : iterable of torch.nn.Parameter, or list of dict
        What the optimiser updates, or parameter groups ({"params", "lr"}: each group's own
        learning rate, and the schedule's peak for it).
    epochs : int
        Passes; `batches(epoch)` is called once at the start of each.
    batches : callable
        epoch -> the batches of that epoch (anything `loss_of` takes).
    loss_of : callable
        batch -> its loss (a scalar tensor), or None to skip the batch (no step taken).
    lr, weight_decay : float
        AdamW's learning rate (the schedule's peak when `total_steps` is given) and weight decay.
    compute : Compute, default CPU
        Its gradient scaler (fp16) is used; the loss is computed by `loss_of` under its autocast.
    total_steps : int or None
        Planned steps of a one-cycle schedule (10% warm-up); None: constant learning rate.
    after_step : callable or None
        Called with the number of steps taken so far, after each step (momentum updates).
    desc : str, default "train"
        Progress bar and log label.
    progress : bool, default False
        Show a progress bar over epochs.
    """
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = None
    if total_steps is not None:
        peaks = [group["lr"] for group in opt.param_groups]
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peaks, total_steps=max(total_steps, MIN_SCHEDULE),
                                                    pct_start=0.1)
    scaler = compute.grad_scaler()
    step = 0
    for epoch in tqdm(range(epochs), desc=desc, disable=not progress, mininterval=5):
        total, count = 0.0, 0
        for batch in batches(epoch):
            loss = loss_of(batch)
            if loss is None:
                continue
            if not torch.isfinite(loss):  # every later step would be NaN too: stop, not a model of NaNs
                raise FloatingPointError(f"{desc}: the loss is {loss.item()} at epoch {epoch + 1}, step {step + 1} "
                                         "(non-finite inputs, or a learning rate too high?)")
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            if sched is not None:
                sched.step()
            step += 1
            if after_step is not None:
                after_step(step)
            total, count = total + loss.item(), count + 1
        log.info("%s epoch %d/%d mean loss %.4f", desc, epoch + 1, epochs, total / max(count, 1))
