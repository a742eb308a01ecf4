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

from trainkit.augment import Augment
from trainkit.callbacks import Callback
from trainkit.data import Data, Normalizer, Split, batches
from trainkit.schedule import current_momentum

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class FitState:
    """What callbacks may read. The loop writes it; callbacks only set `stop` and say why."""

    epochs: int
    steps_per_epoch: int
    epoch: int = 0
    step: int = 0  # optimizer steps so far
    last_loss: torch.Tensor | None = None  # the last step's data loss, on the device (no sync)
    running_loss: float = float("nan")  # mean train loss so far this epoch, refreshed at the
    # epoch's first step and then every trainer.log_every_n_steps
    history: list[dict] = field(default_factory=list)  # one metrics dict per finished epoch
    best: dict | None = None  # the history row with the best monitored metric
    improved: bool = False  # this epoch set a new best
    stop: bool = False
    stop_reason: str | None = None


def weight_tensors(model: nn.Module) -> list[nn.Parameter]:
    """Trainable weight matrices and kernels: what weight decay and the L1/L2 penalties act on.
    Biases and normalization scales/shifts (fewer than 2 dims) are spared: decaying them only
    hurts the fit."""
    return [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]


@dataclass
class Training:
    """Everything that decides the math of a training step, built once by experiment.py."""

    model: nn.Module
    loss_fn: LossFn
    optimizer: Optimizer
    scheduler: LRScheduler | ReduceLROnPlateau | None
    scheduler_interval: str  # "step": after every optimizer step; "epoch": after validation
    normalize: Normalizer
    augment: Augment | None  # training batches only
    reg: DictConfig  # the regularization group
    trainer: DictConfig  # the trainer group

    def __post_init__(self) -> None:
        self.penalized = weight_tensors(self.model)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]


def train_epoch(
    t: Training,
    train: Split,
    generator: torch.Generator,
    state: FitState,
    callbacks: Sequence[Callback],
) -> dict[str, float]:
    """One pass over `train` in a fresh random order. Returns the epoch's mean data loss,
    accuracy and sample count, plus the mean L1/L2 penalties and pre-clip gradient norm when
    those are on."""
    model, reg = t.model, t.reg
    model.train()
    keep_frozen_norms_in_eval(model)
    device = train.labels.device
    zero = torch.zeros((), device=device)
    sums = {"loss": zero.clone(), "l1": zero.clone(), "l2": zero.clone(), "grad_norm": zero.clone()}
    correct = torch.zeros((), device=device, dtype=torch.long)
    nonfinite_at = torch.full((), -1, device=device)  # first step with a NaN/Inf loss, on device
    seen = steps = 0
    for i, (images, labels) in enumerate(batches(train, t.trainer.batch_size, generator)):
        if i == state.steps_per_epoch:  # trainer.max_steps_per_epoch
            break
        x = t.augment(images) if t.augment is not None else images
        logits = model(t.normalize(x))
        data_loss = t.loss_fn(logits, labels)
        loss = data_loss
        if reg.l1 > 0:
            l1 = reg.l1 * sum(p.abs().sum() for p in t.penalized)
            loss = loss + l1
            sums["l1"] += l1.detach()
        if reg.l2 > 0:
            l2 = reg.l2 / 2 * sum(p.pow(2).sum() for p in t.penalized)
            loss = loss + l2
            sums["l2"] += l2.detach()
        t.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if reg.clip_grad_norm is not None:  # returns the total norm before clipping
            sums["grad_norm"] += nn.utils.clip_grad_norm_(t.trainable, reg.clip_grad_norm)
        if reg.clip_grad_value is not None:
            nn.utils.clip_grad_value_(t.trainable, reg.clip_grad_value)
        t.optimizer.step()
        if t.scheduler is not None and t.scheduler_interval == "step":
            t.scheduler.step()

        state.step += 1
        steps += 1
        bad = ~torch.isfinite(loss.detach()) & (nonfinite_at < 0)
        nonfinite_at = torch.where(bad, state.step, nonfinite_at)
        state.last_loss = data_loss.detach()
        sums["loss"] += data_loss.detach() * len(labels)
        correct += (logits.argmax(dim=1) == labels).sum()
        seen += len(labels)
        if i % t.trainer.log_every_n_steps == 0:
            state.running_loss = sums["loss"].item() / seen  # a sync point: once per interval
            stop_if_diverged(nonfinite_at, t.optimizer, state)
        for cb in callbacks:
            cb.on_step_end(state)
        if state.stop:  # a callback (lr-find) asked to end mid-epoch
            break
    stop_if_diverged(nonfinite_at, t.optimizer, state)
    out = {"loss": sums["loss"].item() / seen, "acc": correct.item() / seen, "samples": seen}
    on = {"l1": reg.l1 > 0, "l2": reg.l2 > 0, "grad_norm": reg.clip_grad_norm is not None}
    out |= {key: sums[key].item() / steps for key, enabled in on.items() if enabled}
    return out


class Diverged(Exception):
    """The loss became NaN or infinite: training cannot go on."""

    def __init__(self, message: str, state: FitState) -> None:
        super().__init__(message)
        self.state = state


def stop_if_diverged(nonfinite_at: torch.Tensor, optimizer: Optimizer, state: FitState) -> None:
    step = int(nonfinite_at.item())
    if step >= 0:
        group = optimizer.param_groups[0]
        lr = group.get("initial_lr", group["lr"])  # as configured, before any schedule
        raise Diverged(
            f"the loss became NaN/Inf at step {step} (lr {lr:.3g}); likely causes: the learning "
            "rate is too high, the initial weights too large, or gradients unclipped: try "
            f"lr={lr / 10:.3g}, regularization.clip_grad_norm=1.0, or init=he_normal",
            state,
        )


def keep_frozen_norms_in_eval(model: nn.Module) -> None:
    """A frozen batch-norm layer keeps its running statistics: train mode would update them."""
    for module in model.modules():
        is_norm = isinstance(module, nn.modules.batchnorm._BatchNorm)
        if is_norm and not any(p.requires_grad for p in module.parameters()):
            module.eval()


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


@torch.inference_mode()
def confusion_matrix(
    model: nn.Module, split: Split, normalize: Normalizer, num_classes: int, batch_size: int
) -> torch.Tensor:
    """[true, predicted] counts over `split`."""
    model.eval()
    counts = torch.zeros(num_classes * num_classes, dtype=torch.long, device=split.labels.device)
    for images, labels in batches(split, batch_size):
        predicted = model(normalize(images)).argmax(dim=1)
        counts += torch.bincount(labels * num_classes + predicted, minlength=num_classes**2)
    return counts.view(num_classes, num_classes)


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


def fit(t: Training, data: Data, callbacks: Sequence[Callback]) -> FitState:
    """Train for trainer.epochs (or until a callback stops it), validating after each epoch."""
    trainer = t.trainer
    state = FitState(trainer.epochs, steps_per_epoch(len(data.train), trainer))
    # Its own generator, so the batch order depends on the seed alone, not on what else ran.
    generator = torch.Generator().manual_seed(trainer.seed)
    for cb in callbacks:
        cb.on_fit_start(state)

    for epoch in range(1, trainer.epochs + 1):
        state.epoch = epoch
        lr = t.optimizer.param_groups[0]["lr"]  # the lr and momentum this epoch starts with
        momentum = current_momentum(t.optimizer)
        for cb in callbacks:
            cb.on_epoch_start(state)
        start = time.perf_counter()
        train = train_epoch(t, data.train, generator, state, callbacks)
        train_time = time.perf_counter() - start
        val = evaluate(t.model, data.val, t.normalize, t.loss_fn, trainer.eval_batch_size)
        if t.scheduler is not None and t.scheduler_interval == "epoch":
            if isinstance(t.scheduler, ReduceLROnPlateau):
                t.scheduler.step(val["loss"])
            else:
                t.scheduler.step()

        metrics = {
            "epoch": epoch,
            "step": state.step,
            "lr": lr,
            "momentum": momentum,
            "train_loss": train["loss"],
            "train_acc": train["acc"],
            "val_loss": val["loss"],
            "val_acc": val["acc"],
            **{key: train[key] for key in ("l1", "l2", "grad_norm") if key in train},
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
