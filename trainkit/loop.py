"""The training loop: fit -> train_epoch -> evaluate, in plain code.

Everything that changes the math happens here, where it can be read: forward, loss, backward,
optimizer step, schedule step. Callbacks only watch (and may ask to stop).
Metrics are summed on the device and read back once per log interval and once per epoch:
`.item()` is a host/device sync point, so it never runs per step.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from trainkit import distributed
from trainkit.augment import IMAGE_ONLY, Augment, TestTimeViews
from trainkit.checkpoint import fitting_its_config
from trainkit.data import Data, Normalizer, Split, batches, shuffled_batches
from trainkit.errors import UserError
from trainkit.metrics import metric
from trainkit.models import inference_copy
from trainkit.optim_step import step_function
from trainkit.schedule import current_momentum

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class EpochProgress:
    """How far the current epoch has got: what an interrupted epoch needs to go on exactly
    where it stopped (the same batches, in the same order, with the same running sums)."""

    order_rng: torch.Tensor  # the batch-order generator's state when the epoch began
    lr: float  # the lr and momentum the epoch began with (its metrics row reports them)
    momentum: float
    sums: dict[str, torch.Tensor]  # data loss (per sample), l1, l2, grad_norm; on the device
    correct: torch.Tensor
    nonfinite_at: torch.Tensor  # the first step with a NaN/Inf loss, or -1
    batches_done: int = 0
    seen: int = 0
    train_time_s: float = 0.0  # spent on this epoch before an interruption

    @classmethod
    def begin(cls, t: Training, generator: torch.Generator, device: torch.device) -> EpochProgress:
        zero = torch.zeros((), device=device)
        return cls(
            order_rng=generator.get_state(),
            lr=t.optimizer.param_groups[0]["lr"],
            momentum=current_momentum(t.optimizer),
            sums={key: zero.clone() for key in ("loss", "l1", "l2", "grad_norm")},
            correct=torch.zeros((), device=device, dtype=torch.long),
            nonfinite_at=torch.full((), -1, device=device),
        )

    def state_dict(self) -> dict:
        return dict(vars(self))

    def merge_ranks(self, everywhere: bool) -> None:
        """Under torchrun, at the same step on every rank: the data-loss sums, correct counts
        and sample counts since the last merge are summed onto rank 0, and the other ranks
        start again from zero, so rank 0 (which reports and checkpoints) holds the epoch's
        totals; `everywhere`: every rank keeps the totals (an epoch's end). The ranks also
        agree that a loss became NaN (at the latest of the steps where each rank first saw
        one). The other sums (penalties, gradient norm) are the same on every rank already."""
        if not distributed.enabled():
            return
        seen = torch.tensor(self.seen, device=self.correct.device)
        loss, correct, seen = distributed.all_sum(self.sums["loss"], self.correct, seen)
        (self.nonfinite_at,) = distributed.all_max(self.nonfinite_at)
        self.sums["loss"], self.correct, self.seen = loss, correct, int(seen)
        if not (everywhere or distributed.is_main()):
            self.forget_totals()

    def forget_totals(self) -> None:
        """Zero this rank's data-loss sum and counts: rank 0 holds the totals."""
        self.sums["loss"] = torch.zeros_like(self.sums["loss"])
        self.correct = torch.zeros_like(self.correct)
        self.seen = 0

    @classmethod
    def from_state_dict(cls, saved: dict, device: torch.device) -> EpochProgress:
        """From a checkpoint (loaded to the CPU): the running sums go back to the device."""
        return cls(**{
            **saved,
            "sums": {key: value.to(device) for key, value in saved["sums"].items()},
            "correct": saved["correct"].to(device),
            "nonfinite_at": saved["nonfinite_at"].to(device),
        })


@dataclass
class FitState:
    """What callbacks may read. The loop writes it; callbacks only set `stop` and say why."""

    epochs: int
    steps_per_epoch: int
    epoch: int = 0  # the epoch running, or the last one finished between epochs
    step: int = 0  # optimizer steps so far
    generator: torch.Generator = field(default_factory=torch.Generator)  # the batch order
    progress: EpochProgress | None = None  # the epoch running; None between epochs
    interrupted: int = 0  # the signal (SIGINT, SIGTERM) that asked to stop; 0 if none
    batch_indices: torch.Tensor | None = None  # the step's samples (their index in the split)
    last_loss: torch.Tensor | None = None  # the last step's data loss, on the device (no sync)
    running_loss: float = float("nan")  # mean train loss so far this epoch, refreshed at the
    # epoch's first step and then every trainer.log_every_n_steps
    history: list[dict] = field(default_factory=list)  # one metrics dict per finished epoch
    initial_loss: float = float("nan")  # the first step's data loss: what divergence is against
    best: dict | None = None  # the history row with the best monitored metric
    improved: bool = False  # this epoch set a new best
    stop: bool = False  # a callback asks to end after this epoch (or step: the lr finder)
    stop_reason: str | None = None
    restore: tuple[int, dict] | None = None  # a callback asks to end with (epoch, weights)

    def agree_to_stop(self, device: torch.device) -> int:
        """The signal to stop on, agreed between torchrun's ranks (each may have been told at a
        different step; all must stop at the same one). Alone: `interrupted` as it is."""
        if distributed.enabled():
            (agreed,) = distributed.all_max(torch.tensor(self.interrupted, device=device))
            self.interrupted = int(agreed)
        return self.interrupted

    def state_dict(self) -> dict:
        """What a checkpoint keeps to go on from here (last_loss, running_loss: display only)."""
        return {
            "epochs": self.epochs,
            "steps_per_epoch": self.steps_per_epoch,
            "epoch": self.epoch,
            "step": self.step,
            "generator": self.generator.get_state(),
            "progress": self.progress.state_dict() if self.progress is not None else None,
            "history": self.history,
            "best": self.best,
            "initial_loss": self.initial_loss,
        }

    @classmethod
    def from_state_dict(cls, saved: dict, device: torch.device) -> FitState:
        state = cls(saved["epochs"], saved["steps_per_epoch"], saved["epoch"], saved["step"])
        state.generator.set_state(saved["generator"])
        if saved["progress"] is not None:
            state.progress = EpochProgress.from_state_dict(saved["progress"], device)
        state.history, state.best = saved["history"], saved["best"]
        state.initial_loss = float(saved.get("initial_loss", math.nan))  # older checkpoints: none
        return state


class Callback:
    """No-op defaults; a callback overrides the events it cares about. One that keeps state
    across epochs returns it from `state_dict` so that checkpoints carry it into a resumed run,
    under its `state_key` (its class name unless it says otherwise: two callbacks of one class
    that both keep state need keys of their own)."""

    @property
    def state_key(self) -> str:
        return type(self).__name__

    def on_fit_start(self, state: FitState) -> None: ...
    def on_epoch_start(self, state: FitState) -> None: ...
    def on_step_end(self, state: FitState) -> None: ...
    def on_epoch_end(self, state: FitState, metrics: dict) -> None: ...
    def on_fit_end(self, state: FitState, outcome: Outcome) -> None: ...
    def state_dict(self) -> dict | None:
        return None

    def load_state_dict(self, saved: dict, state: FitState) -> None: ...


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
    autocast: torch.dtype | None = None  # trainer.precision's dtype for forward and loss
    scaler: torch.amp.GradScaler | None = None  # fp16: loss scaling keeps small gradients
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None  # compiled model, if asked
    tta: TestTimeViews = IMAGE_ONLY  # the test set's scores average the logits of these views

    def __post_init__(self) -> None:
        self.penalized = weight_tensors(self.model)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        # optim_step.py: fused Adam without optimizer.step()'s Python. One for the whole fit:
        # its first call is optimizer.step()'s, and it keeps the shared step counts.
        self.optimizer_step = step_function(self.optimizer)
        if self.forward is None:
            self.forward = self.model

    def precision_context(self, device: torch.device) -> AbstractContextManager:
        if self.autocast is None:
            return nullcontext()
        return torch.autocast(device.type, dtype=self.autocast)


class PendingSteps:
    """The losses, logits and labels of the steps not yet counted in the epoch's correct count
    and first NaN/Inf step, kept on the device as they came. Folding them in a few ops per
    interval instead of six small ops per step (isfinite, where, argmax, eq, sum, add) saves
    a measurable share of a small MLP step on the CPU. Both are integers, so where the folds
    fall (an interruption adds one) cannot change them: a resumed run counts exactly what an
    uninterrupted one does. No sync: the loop reads them back once per log interval."""

    capacity = 32  # steps held at most (a few MB of logits even with 1000 classes)

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.first_step = 0
        self.losses: list[torch.Tensor] = []  # the optimized loss (data loss + penalties)
        self.logits: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.losses)

    def add(self, step: int, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        if not self.losses:
            self.first_step = step
        self.losses.append(loss)
        self.logits.append(logits)
        self.labels.append(y)

    def fold_into(self, p: EpochProgress) -> None:
        """Add the held steps to p's correct count and first NaN/Inf step; forget them."""
        if not self.losses:
            return
        predicted = torch.cat(self.logits).argmax(dim=1)
        p.correct += (predicted == torch.cat(self.labels)).sum()
        bad = ~torch.isfinite(torch.stack(self.losses))
        end = self.first_step + len(self)  # the steps are in a row
        steps = torch.arange(self.first_step, end, device=bad.device)
        first_bad = torch.where(bad, steps, end).min()
        p.nonfinite_at = torch.where((p.nonfinite_at < 0) & bad.any(), first_bad, p.nonfinite_at)
        self.clear()


@dataclass(frozen=True)
class StepSpec:
    """What a training step does beyond forward and backward, resolved from the config once per
    epoch into plain values (the step runs thousands of times; a config lookup is a dict walk
    with type checks)."""

    l1: float  # regularization.l1: a penalty in the loss, or with `proximal` a shrink after
    l2: float
    proximal: list[tuple[dict, list[nn.Parameter]]] | None  # proximal L1: groups to shrink
    clip_norm: float | None
    clip_value: float | None
    step_scheduler: LRScheduler | None  # a per-step schedule; per-epoch ones step in fit
    log_every: int

    @classmethod
    def of(cls, t: Training) -> StepSpec:
        reg = t.reg
        proximal = proximal_groups(t) if reg.l1 > 0 and reg.l1_mode == "proximal" else None
        return cls(
            l1=reg.l1, l2=reg.l2, proximal=proximal,
            clip_norm=reg.clip_grad_norm, clip_value=reg.clip_grad_value,
            step_scheduler=t.scheduler if t.scheduler_interval == "step" else None,  # type: ignore[arg-type]
            log_every=t.trainer.log_every_n_steps,
        )


def train_step(
    t: Training, spec: StepSpec, images: torch.Tensor, labels: torch.Tensor,
    sums: dict[str, torch.Tensor], precision: AbstractContextManager,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch: the math of training, in order. Returns the data loss,
    the optimized loss (with penalties) and the logits, all still on the device (no sync)."""
    x = t.augment(images) if t.augment is not None else images
    with precision:
        logits = t.forward(t.normalize(x))
        data_loss = t.loss_fn(logits, labels)
    loss = data_loss
    if spec.l1 > 0 and spec.proximal is None:
        l1_loss = spec.l1 * sum(w.abs().sum() for w in t.penalized)
        loss = loss + l1_loss
        sums["l1"] += l1_loss.detach()
    if spec.l2 > 0:
        l2_loss = spec.l2 / 2 * sum(w.pow(2).sum() for w in t.penalized)
        loss = loss + l2_loss
        sums["l2"] += l2_loss.detach()
    for param in t.trainable:  # zero_grad(set_to_none=True), without its profiler record
        param.grad = None
    backward_and_step(t, spec, loss, sums)
    if spec.proximal is not None:  # logged as loss/l1 like the penalty: l1 * sum|w| after it
        sums["l1"] += soft_threshold(spec.proximal, spec.l1)
    if spec.step_scheduler is not None:
        spec.step_scheduler.step()
    return data_loss, loss, logits


def backward_and_step(t: Training, spec: StepSpec, loss: torch.Tensor, sums: dict) -> None:
    """Gradients of `loss`, clipped as asked, then the optimizer step. With fp16's loss scaling
    the gradients are unscaled before clipping, and a step whose gradients overflowed is
    skipped (the scaler's)."""
    clipping = spec.clip_norm is not None or spec.clip_value is not None
    if t.scaler is None:
        loss.backward()
    else:
        t.scaler.scale(loss).backward()
        if clipping:
            t.scaler.unscale_(t.optimizer)
    if spec.clip_norm is not None:  # returns the total norm before clipping
        sums["grad_norm"] += nn.utils.clip_grad_norm_(t.trainable, spec.clip_norm)
    if spec.clip_value is not None:
        nn.utils.clip_grad_value_(t.trainable, spec.clip_value)
    if t.scaler is None:
        t.optimizer_step()
    else:
        t.scaler.step(t.optimizer)
        t.scaler.update()


def train_epoch(
    t: Training,
    train: Split,
    generator: torch.Generator,
    state: FitState,
    callbacks: Sequence[Callback],
) -> dict[str, float] | None:
    """One pass over `train` in a fresh random order. Returns the epoch's mean data loss,
    accuracy and sample count, plus the mean L1/L2 penalties and pre-clip gradient norm when
    those are on; None when a signal stopped it part-way (state.progress says where).

    An epoch that was interrupted earlier (state.progress set) goes on from its next batch."""
    t.model.train()
    keep_frozen_norms_in_eval(t.model)
    device = train.labels.device
    if state.progress is None:
        state.progress = EpochProgress.begin(t, generator, device)
    else:  # the same order as before the interruption
        generator.set_state(state.progress.order_rng)
    p, spec, precision = state.progress, StepSpec.of(t), t.precision_context(device)
    # Alone, a signal stops the run after the step in flight; under torchrun, at the next
    # merge of the ranks' sums, where they agree on it.
    ranks, stop_signal, pending = distributed.enabled(), 0, PendingSteps()
    stream = shuffled_batches(train, t.trainer.batch_size, generator, start=p.batches_done)
    for i, (idx, images, labels) in enumerate(stream, start=p.batches_done):
        if i == state.steps_per_epoch:  # trainer.max_steps_per_epoch
            break
        if stop_signal or (state.interrupted and not ranks):
            pending.fold_into(p)  # the checkpoint keeps the sums so far
            return None
        if len(pending) == pending.capacity:  # bounds the logits held
            pending.fold_into(p)
        data_loss, loss, logits = train_step(t, spec, images, labels, p.sums, precision)
        count_step(state, pending, i, idx, labels, data_loss, loss, logits)
        if i % spec.log_every == 0:  # a sync point: once per interval
            stop_signal = sync(state, pending, t.optimizer, device, ranks)
        for cb in callbacks:
            cb.on_step_end(state)
        if state.stop:  # a callback (lr-find) asked to end mid-epoch
            break
    return epoch_means(t, state, pending)


def count_step(
    state: FitState, pending: PendingSteps, i: int, idx: torch.Tensor, labels: torch.Tensor,
    data_loss: torch.Tensor, loss: torch.Tensor, logits: torch.Tensor,
) -> None:
    """The step's numbers into the epoch's running sums, still on the device."""
    p = state.progress
    assert p is not None
    state.step += 1
    p.batches_done = i + 1
    state.last_loss = data_loss.detach()
    state.batch_indices = idx
    # Summed step by step (a float sum's rounding depends on its grouping), in one op.
    p.sums["loss"].add_(state.last_loss, alpha=len(labels))
    total = state.last_loss if loss is data_loss else loss.detach()
    pending.add(state.step, total, logits.detach(), labels)
    p.seen += len(labels)


def sync(
    state: FitState, pending: PendingSteps, optimizer: Optimizer, device: torch.device,
    ranks: bool,
) -> int:
    """Once per log interval, the loop's one host/device sync: fold the held steps into the
    counts, merge the ranks' sums, refresh the running loss, and stop if the loss diverged.
    Returns the signal the ranks agreed to stop on (0: none)."""
    p = state.progress
    assert p is not None
    pending.fold_into(p)
    stop_signal = 0
    if ranks:
        p.merge_ranks(everywhere=False)
        stop_signal = state.agree_to_stop(device)
    if p.seen:  # 0 on ranks other than 0 just after a merge
        state.running_loss = p.sums["loss"].item() / p.seen
    if state.step == 1:  # every rank: all decide alike whether the run diverged
        state.initial_loss = first_loss(state.running_loss, device)
    stop_if_diverged(p.nonfinite_at, optimizer, state)
    return stop_signal


def epoch_means(t: Training, state: FitState, pending: PendingSteps) -> dict[str, float]:
    p = state.progress
    assert p is not None
    pending.fold_into(p)
    p.merge_ranks(everywhere=True)
    stop_if_diverged(p.nonfinite_at, t.optimizer, state)
    steps = max(1, p.batches_done)
    out = {"loss": p.sums["loss"].item() / p.seen, "acc": p.correct.item() / p.seen,
           "samples": p.seen}
    reg = t.reg
    on = {"l1": reg.l1 > 0, "l2": reg.l2 > 0, "grad_norm": reg.clip_grad_norm is not None}
    out |= {key: p.sums[key].item() / steps for key, enabled in on.items() if enabled}
    return out


def proximal_groups(t: Training) -> list[tuple[dict, list[nn.Parameter]]]:
    """Each optimizer param group with the penalized weights (t.penalized) it holds."""
    penalized = {id(w) for w in t.penalized}
    groups = [(g, [p for p in g["params"] if id(p) in penalized]) for g in t.optimizer.param_groups]
    return [(g, ws) for g, ws in groups if ws]


@torch.no_grad()
def soft_threshold(groups: list[tuple[dict, list[nn.Parameter]]], l1: float) -> torch.Tensor:
    """The proximal step of l1 * sum|w|: w <- sign(w) * max(|w| - lr * l1, 0), with each
    group's lr now (after the schedule), so weights whose pull toward 0 outweighs their data
    gradient land exactly on 0. Returns l1 * sum|w| after the step (the penalty, to log)."""
    total = torch.zeros((), device=groups[0][1][0].device)
    for group, weights in groups:
        shrink = float(group["lr"]) * l1
        for w in weights:
            w.copy_(nn.functional.softshrink(w, shrink))
            total += w.abs().sum()
    return l1 * total


def first_loss(running_loss: float, device: torch.device) -> float:
    """The first step's loss as rank 0 knows it (it holds the merged sums), on every rank."""
    if not distributed.enabled():
        return running_loss
    mine = running_loss if distributed.is_main() else 0.0  # a sum: rank 0's value, in float64
    (agreed,) = distributed.all_sum(torch.tensor(mine, device=device, dtype=torch.float64))
    return float(agreed)


class Diverged(Exception):
    """The loss became NaN or infinite: training cannot go on."""

    def __init__(self, message: str, state: FitState) -> None:
        super().__init__(message)
        self.state = state


def stop_if_diverged(nonfinite_at: torch.Tensor, optimizer: Optimizer, state: FitState) -> None:
    step = int(nonfinite_at.item())
    if step >= 0:
        what = f"the loss became NaN/Inf at step {step}"
        raise Diverged(diverged_message(what, optimizer), state)


# A run whose training and validation losses both end above this many times where training
# started (or the loss of guessing uniformly, if higher) diverged: it ends worse than it began.
# Both: a run that overfits ends with a high val loss but a low train loss, and one that
# spiked and recovered with a high mean train loss over its last epoch but a low val loss.
DIVERGED_FACTOR = 1.5


def raise_if_ended_diverged(t: Training, data: Data, state: FitState) -> None:
    """The last epoch's losses against the first step's (or chance's, if higher): a run that
    ends far above where it started diverged, however finite its numbers."""
    if not state.history:
        return
    last = state.history[-1]
    labels = data.val.labels[:1000]
    uniform = torch.zeros(len(labels), data.num_classes, device=labels.device)
    with torch.no_grad():  # what predicting every class alike scores: chance
        chance = float(t.loss_fn(uniform, labels))
    start = max(state.initial_loss, chance) if math.isfinite(state.initial_loss) else chance
    ended = min(last["train_loss"], last["val_loss"])
    if ended > DIVERGED_FACTOR * start:
        what = (
            f"the run ended with training loss {last['train_loss']:.3g} and validation loss "
            f"{last['val_loss']:.3g}, both over {DIVERGED_FACTOR}x where training started "
            f"({start:.3g})"
        )
        raise Diverged(diverged_message(what, t.optimizer), state)


def diverged_message(what: str, optimizer: Optimizer) -> str:
    group = optimizer.param_groups[0]
    lr = group.get("initial_lr", group["lr"])  # as configured, before any schedule
    # What to try is the verdict's (verdict.py: validated overrides), added by the run.
    return (
        f"{what} (lr {lr:.3g}): the run diverged; likely causes: the learning rate is too "
        "high, the initial weights too large, or gradients unclipped"
    )


def keep_frozen_norms_in_eval(model: nn.Module) -> None:
    """A frozen batch-norm layer keeps its running statistics: train mode would update them."""
    for module in model.modules():
        is_norm = isinstance(module, nn.modules.batchnorm._BatchNorm)
        if is_norm and not any(p.requires_grad for p in module.parameters()):
            module.eval()


def predict(
    model: nn.Module, images: torch.Tensor, normalize: Normalizer,
    tta: TestTimeViews = IMAGE_ONLY,
) -> torch.Tensor:
    """Logits for a batch of stored images: with `tta`, the mean of its views' logits."""
    logits = [model(normalize(view)) for view in tta(images)]
    return logits[0] if len(logits) == 1 else torch.stack(logits).mean(dim=0)


@torch.inference_mode()
def evaluate(
    model: nn.Module, split: Split, normalize: Normalizer, loss_fn: LossFn, batch_size: int,
    tta: TestTimeViews = IMAGE_ONLY, num_classes: int | None = None,
) -> dict:
    """Mean loss and accuracy over `split`, in eval mode (dropout off, batch-norm running stats).
    With `num_classes`, also "confusion_matrix": [true, predicted] counts from the same
    predictions (a second pass would double the cost, large with many test-time views).
    Under torchrun each rank evaluates its share and the sums are all-reduced."""
    model = inference_copy(model)
    device = split.labels.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    cells = (num_classes or 0) ** 2
    counts = torch.zeros(cells, device=device, dtype=torch.long)
    for images, labels in batches(rank_share(split), batch_size):
        logits = predict(model, images, normalize, tta)
        predicted = logits.argmax(dim=1)
        loss_sum += loss_fn(logits, labels) * len(labels)
        correct += (predicted == labels).sum()
        if num_classes:
            counts += torch.bincount(labels * num_classes + predicted, minlength=cells)
    loss_sum, correct, counts = distributed.all_sum(loss_sum, correct, counts)
    result = {"loss": loss_sum.item() / len(split), "acc": correct.item() / len(split)}
    if num_classes:
        result["confusion_matrix"] = counts.view(num_classes, num_classes)
    return result


def rank_share(split: Split) -> Split:
    share = distributed.part(len(split))
    return Split(split.images[share], split.labels[share])


def steps_per_epoch(n_train: int, trainer: DictConfig) -> int:
    steps = distributed.global_batches(n_train, trainer.batch_size)
    if steps == 0:  # only under torchrun: fewer samples than ranks
        raise UserError(f"{n_train} training samples cannot be shared between "
                        f"{distributed.world_size()} processes: use more data (data.train_size) "
                        "or fewer processes")
    if trainer.max_steps_per_epoch is not None:
        steps = min(steps, trainer.max_steps_per_epoch)
    return steps


def is_better(metrics: dict, best: dict | None, monitor: str) -> bool:
    """The epoch's `metrics` improve on the `best` row so far (the first epoch always does)."""
    return best is None or metric(monitor).better(metrics[monitor], best[monitor])


# How a fit ends (Outcome.kind)
COMPLETED, EARLY_STOPPED = "completed", "early_stopped"
DIVERGED, INTERRUPTED = "diverged", "interrupted"


@dataclass
class Outcome:
    """How a fit ended: `kind` (COMPLETED, EARLY_STOPPED: a callback asked, DIVERGED,
    INTERRUPTED: a signal) and the fit's state, whose stop_reason says why in one line."""

    kind: str
    state: FitState

    @property
    def reason(self) -> str:
        return self.state.stop_reason or ""

    @property
    def status(self) -> str:
        """summary.json's word for it: a diverged run failed; an early-stopped one completed."""
        return {DIVERGED: "failed", INTERRUPTED: "interrupted"}.get(self.kind, "completed")


def fit(
    t: Training, data: Data, callbacks: Sequence[Callback], state: FitState | None = None,
    callback_states: dict | None = None,
) -> Outcome:
    """Train for trainer.epochs, validating after each epoch, until then or until a callback
    asks to stop (early stopping), a signal stops it, or the loss diverges. Given the `state`
    of an interrupted fit and its `callback_states` (a checkpoint's: resume.py), go on from
    where it was. The only caller of the callbacks: on_fit_start, then per epoch
    on_epoch_start, on_step_end per step, on_epoch_end, and on_fit_end with the outcome."""
    if state is None:
        state = FitState(t.trainer.epochs, steps_per_epoch(len(data.train), t.trainer))
        # Its own generator, so the batch order depends on the seed alone, not on what else ran.
        state.generator.manual_seed(t.trainer.seed)
    restore_callbacks(callbacks, callback_states or {}, state)
    for cb in callbacks:
        cb.on_fit_start(state)
    try:
        with stop_on_signals(state):
            run_epochs(t, data, callbacks, state)
        if not state.interrupted:
            raise_if_ended_diverged(t, data, state)
        outcome = ended(state)
    except Diverged as e:
        state.stop_reason = str(e)
        outcome = Outcome(DIVERGED, state)
    for cb in callbacks:
        cb.on_fit_end(state, outcome)
    return outcome


def restore_callbacks(callbacks: Sequence[Callback], saved: dict, state: FitState) -> None:
    """Each callback's state from a checkpoint (by its state_key), before the fit starts."""
    for cb in callbacks:
        if (mine := saved.get(cb.state_key)) is not None:
            with fitting_its_config():
                cb.load_state_dict(mine, state)


def ended(state: FitState) -> Outcome:
    if state.interrupted:
        name = signal.Signals(state.interrupted).name
        state.stop_reason = f"interrupted by {name} at epoch {state.epoch}, step {state.step}"
        return Outcome(INTERRUPTED, state)
    state.stop_reason = state.stop_reason or completed(state)
    return Outcome(EARLY_STOPPED if state.stop else COMPLETED, state)


def completed(state: FitState) -> str:
    n = len(state.history)
    return f"completed {n:,} epoch{'' if n == 1 else 's'}"


def run_epochs(t: Training, data: Data, callbacks: Sequence[Callback], state: FitState) -> None:
    first = state.epoch if state.progress is not None else state.epoch + 1
    device = data.train.labels.device
    for epoch in range(first, t.trainer.epochs + 1):
        if state.agree_to_stop(device):  # between epochs: the last checkpoint says it all
            return
        state.epoch = epoch
        for cb in callbacks:
            cb.on_epoch_start(state)
        metrics = train_and_validate(t, data, callbacks, state)
        if metrics is None:  # a signal stopped the epoch part-way
            return
        state.history.append(metrics)
        state.improved = is_better(metrics, state.best, t.trainer.monitor)
        if state.improved:
            state.best = metrics
        for cb in callbacks:
            cb.on_epoch_end(state, metrics)
            restore_if_asked(t.model, state)  # before the next callback (the checkpointer)
        if state.stop:
            return


def restore_if_asked(model: nn.Module, state: FitState) -> None:
    """A callback (early stopping) asked to end with the weights of an earlier epoch."""
    if state.restore is None:
        return
    epoch, weights = state.restore
    model.load_state_dict(weights)
    state.restore = None
    reason = state.stop_reason or completed(state)
    state.stop_reason = f"{reason}; restored the weights of epoch {epoch}"


def train_and_validate(
    t: Training, data: Data, callbacks: Sequence[Callback], state: FitState
) -> dict | None:
    """One epoch of training, then validation and the epoch's schedule step: the epoch's
    metrics row; None when a signal stopped it part-way."""
    start = time.perf_counter()
    train = train_epoch(t, data.train, state.generator, state, callbacks)
    progress = state.progress
    assert progress is not None
    if train is None:
        progress.train_time_s += time.perf_counter() - start
        return None
    train_time = progress.train_time_s + time.perf_counter() - start
    state.progress = None
    distributed.sync_buffers(t.model)  # one model to evaluate and checkpoint
    # The image alone: test-time views are for the test set (experiment.test_score); 10 views
    # in each validation would multiply its cost by 10.
    val = evaluate(t.model, data.val, t.normalize, t.loss_fn, t.trainer.eval_batch_size)
    if t.scheduler is not None and t.scheduler_interval == "epoch":
        if isinstance(t.scheduler, ReduceLROnPlateau):
            t.scheduler.step(val["loss"])
        else:
            t.scheduler.step()
    return {
        "epoch": state.epoch,
        "step": state.step,
        "lr": progress.lr,  # the lr and momentum this epoch started with
        "momentum": progress.momentum,
        "train_loss": train["loss"],
        "train_acc": train["acc"],
        "val_loss": val["loss"],
        "val_acc": val["acc"],
        **{key: train[key] for key in ("l1", "l2", "grad_norm") if key in train},
        "train_time_s": train_time,
        "samples_per_s": train["samples"] / train_time,
        "epoch_time_s": time.perf_counter() - start + progress.train_time_s,
    }


@contextmanager
def stop_on_signals(state: FitState) -> Iterator[None]:
    """The first SIGINT (Ctrl-C) or SIGTERM lets the step in flight finish and then stops the fit
    (state.interrupted); a second one stops at once (KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():  # handlers live there only
        yield
        return

    def handler(signum: int, frame: object) -> None:
        if state.interrupted:
            raise KeyboardInterrupt
        state.interrupted = signum
        if distributed.is_main():  # under torchrun every rank is told; one says so
            print(f"\n{signal.Signals(signum).name}: stopping after this step to save last.pt "
                  "(press Ctrl-C again to quit at once)", file=sys.stderr, flush=True)

    watched = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, handler) for signum in watched}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
