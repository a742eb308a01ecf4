"""The training loop: fit -> train_epoch -> evaluate, in plain code.

Everything that changes the math happens here, where it can be read: forward, loss, backward,
optimizer step, schedule step. Callbacks only watch (and may ask to stop).
Metrics are summed on the device and read back once per log interval and once per epoch:
`.item()` is a host/device sync point, so it never runs per step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from trainkit.callbacks import Callback
from trainkit.data import Data, Normalizer, Split, batches
from trainkit.schedule import current_momentum

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class FitState:
    """What callbacks may read. The loop writes it; callbacks only set `stop`."""

    epochs: int
    steps_per_epoch: int
    epoch: int = 0
    step: int = 0  # optimizer steps so far
    running_loss: float = float("nan")  # mean train loss so far this epoch, refreshed at the
    # epoch's first step and then every trainer.log_every_n_steps
    history: list[dict] = field(default_factory=list)  # one metrics dict per finished epoch
    best: dict | None = None  # the history row with the best monitored metric
    improved: bool = False  # this epoch set a new best
    stop: bool = False


def train_epoch(
    model: nn.Module,
    train: Split,
    normalize: Normalizer,
    loss_fn: LossFn,
    optimizer: Optimizer,
    step_scheduler: LRScheduler | None,
    trainer: DictConfig,
    generator: torch.Generator,
    state: FitState,
    callbacks: Sequence[Callback],
) -> dict[str, float]:
    """One pass over `train` in a fresh random order; `step_scheduler` steps after every batch."""
    model.train()
    device = train.labels.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for i, (images, labels) in enumerate(batches(train, trainer.batch_size, generator)):
        if i == state.steps_per_epoch:  # trainer.max_steps_per_epoch
            break
        logits = model(normalize(images))
        loss = loss_fn(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step_scheduler is not None:
            step_scheduler.step()

        state.step += 1
        loss_sum += loss.detach() * len(labels)
        correct += (logits.argmax(dim=1) == labels).sum()
        seen += len(labels)
        if i % trainer.log_every_n_steps == 0:
            state.running_loss = loss_sum.item() / seen  # a sync point: once per interval
        for cb in callbacks:
            cb.on_step_end(state)
    return {"loss": loss_sum.item() / seen, "acc": correct.item() / seen, "samples": seen}


@torch.inference_mode()
def evaluate(
    model: nn.Module, split: Split, normalize: Normalizer, loss_fn: LossFn, batch_size: int
) -> dict[str, float]:
    """Mean loss and accuracy over `split`, in eval mode (dropout off, batch-norm running stats)."""
    model.eval()
    device = split.labels.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for images, labels in batches(split, batch_size):
        logits = model(normalize(images))
        loss_sum += loss_fn(logits, labels) * len(labels)
        correct += (logits.argmax(dim=1) == labels).sum()
    return {"loss": loss_sum.item() / len(split), "acc": correct.item() / len(split)}


def steps_per_epoch(n_train: int, trainer: DictConfig) -> int:
    steps = -(-n_train // trainer.batch_size)  # the last, short batch counts
    if trainer.max_steps_per_epoch is not None:
        steps = min(steps, trainer.max_steps_per_epoch)
    return steps


def is_better(metrics: dict, best: dict | None, monitor: str) -> bool:
    if best is None or math.isnan(best[monitor]):
        return True
    if math.isnan(metrics[monitor]):
        return False
    if monitor.endswith("loss"):
        return metrics[monitor] < best[monitor]
    return metrics[monitor] > best[monitor]


def fit(
    model: nn.Module,
    data: Data,
    normalize: Normalizer,
    loss_fn: LossFn,
    optimizer: Optimizer,
    scheduler: LRScheduler | ReduceLROnPlateau | None,
    scheduler_interval: str,
    trainer: DictConfig,
    callbacks: Sequence[Callback],
) -> FitState:
    """Train for trainer.epochs, evaluating on validation after each epoch."""
    state = FitState(trainer.epochs, steps_per_epoch(len(data.train), trainer))
    # Its own generator, so the batch order depends on the seed alone, not on what else ran.
    generator = torch.Generator().manual_seed(trainer.seed)
    for cb in callbacks:
        cb.on_fit_start(state)

    for epoch in range(1, trainer.epochs + 1):
        state.epoch = epoch
        lr = optimizer.param_groups[0]["lr"]  # the lr and momentum this epoch starts with
        momentum = current_momentum(optimizer)
        for cb in callbacks:
            cb.on_epoch_start(state)
        start = time.perf_counter()
        per_step = scheduler if scheduler_interval == "step" else None
        train = train_epoch(
            model, data.train, normalize, loss_fn, optimizer, per_step, trainer, generator,
            state, callbacks,
        )  # fmt: skip
        train_time = time.perf_counter() - start
        val = evaluate(model, data.val, normalize, loss_fn, trainer.eval_batch_size)
        if scheduler is not None and scheduler_interval == "epoch":
            if isinstance(scheduler, ReduceLROnPlateau):
                scheduler.step(val["loss"])
            else:
                scheduler.step()

        metrics = {
            "epoch": epoch,
            "step": state.step,
            "lr": lr,
            "momentum": momentum,
            "train_loss": train["loss"],
            "train_acc": train["acc"],
            "val_loss": val["loss"],
            "val_acc": val["acc"],
            "train_time_s": train_time,
            "samples_per_s": train["samples"] / train_time,
            "epoch_time_s": time.perf_counter() - start,
        }
        state.history.append(metrics)
        state.improved = is_better(metrics, state.best, trainer.monitor)
        if state.improved:
            state.best = metrics
        for cb in callbacks:
            cb.on_epoch_end(state, metrics)
        if state.stop:
            break
    return state
