"""Callbacks watch the loop at a few named events, in list order; they never change gradients.

Events: on_fit_start, on_epoch_start, on_step_end (every step: keep it cheap, no syncs),
on_epoch_end (with that epoch's metrics), on_fit_end (with the run's summary).
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any

from torch import nn
from torch.optim import Optimizer
from torch.utils.tensorboard import SummaryWriter

from trainkit import checkpoint, hparams, runtime
from trainkit.hparams import HEADLINE
from trainkit.loop import INTERRUPTED, Callback, FitState, Outcome
from trainkit.metrics import Metric, metric
from trainkit.run_dirs import SPLIT_RUNS
from trainkit.schedule import current_momentum
from trainkit.summary import Summary

# SPLIT_RUNS: TensorBoard runs in a run's folder (Keras's convention), the same tags in each,
# so TensorBoard draws train, validation and test of one metric on one chart, one per run.


def sample_every(configured: int, steps_per_epoch: int) -> int:
    """Steps between two samples of a per-step signal: the configured period, or a quarter of an
    epoch when that is shorter, so that every run, however short, shows at least four points per
    epoch (a 16-step epoch: every 4 steps) while a long one costs no more than configured."""
    return max(1, min(configured, steps_per_epoch // 4))


def is_sampled(step: int, every: int) -> bool:
    """Step 1 (the start of every curve) and each multiple of `every`."""
    return step == 1 or step % every == 0


class TensorBoardLogger(Callback):
    """The run's TensorBoard data, every point on the optimizer-step axis (an epoch's metrics at
    the step that ended it). Loss and accuracy under curves/, written by sibling writers in
    train/, validation/ and test/ (SPLIT_RUNS) so one chart overlays them; the lr under
    schedule/; one text entry per run (the verdict); the hparams and outcome for the HPARAMS
    tab (hparams.py). Per-layer diagnostics go to `writer` under diagnostics/ (diagnostics.py)."""

    def __init__(
        self,
        run_dir: Path,
        config_yaml: str,
        optimizer: Optimizer,
        every_n_steps: int,
        run_hparams: dict,
        monitor: str,
        resumed: bool = False,
    ) -> None:
        self.writer = SummaryWriter(log_dir=str(run_dir))
        self.splits = {
            split: SummaryWriter(log_dir=str(run_dir / name)) for split, name in SPLIT_RUNS.items()
        }
        self.resumed = resumed  # the hparams records are in the run's first file
        self.config_yaml = config_yaml
        self.optimizer = optimizer
        self.every_n_steps = every_n_steps
        self.every = every_n_steps
        self.hparams = run_hparams
        self.monitor = monitor

    def on_fit_start(self, state: FitState) -> None:
        self.every = sample_every(self.every_n_steps, state.steps_per_epoch)
        if self.resumed:
            return
        run_dir = Path(self.writer.log_dir)
        hparams.write_start(self.writer, self.hparams, self.monitor, run_dir)

    # The lr (and momentum) each sampled step used: read before that step, as the schedule
    # moves it on right after a step (per step) or an epoch (per epoch).
    def on_epoch_start(self, state: FitState) -> None:
        if state.progress is None and is_sampled(state.step + 1, self.every):  # a fresh epoch
            self.write_schedule(state.step + 1)

    def on_step_end(self, state: FitState) -> None:
        last_of_epoch = state.step % state.steps_per_epoch == 0  # on_epoch_start writes then
        if not last_of_epoch and is_sampled(state.step + 1, self.every):
            self.write_schedule(state.step + 1)

    def write_schedule(self, step: int) -> None:
        self.writer.add_scalar("schedule/lr", self.optimizer.param_groups[0]["lr"], step)
        momentum = current_momentum(self.optimizer)
        if not math.isnan(momentum):
            self.writer.add_scalar("schedule/momentum", momentum, step)

    def on_epoch_end(self, state: FitState, metrics: dict) -> None:
        step = metrics["step"]
        for split in ("train", "val"):
            self.write_split(split, metrics[f"{split}_loss"], metrics[f"{split}_acc"], step)
        for key in ("l1", "l2"):  # only when that penalty is on
            if key in metrics:
                self.splits["train"].add_scalar(f"{HEADLINE}/loss_{key}", metrics[key], step)
        if "grad_norm" in metrics:  # clipping on: the epoch's mean norm before clipping
            self.writer.add_scalar("diagnostics/grad_norm/preclip", metrics["grad_norm"], step)
        self.writer.add_scalar("perf/samples_per_s", metrics["samples_per_s"], step)
        # A curve (the best so far at each epoch), not a lone point: the HPARAMS tab reads it.
        best = state.best if state.best is not None else metrics
        self.writer.add_scalar(hparams.best_tag(self.monitor), best[self.monitor], step)
        for writer in (self.writer, *self.splits.values()):
            writer.flush()

    def write_split(self, split: str, loss: float, acc: float, step: int) -> None:
        writer = self.splits[split]
        writer.add_scalar(f"{HEADLINE}/loss", loss, step)
        writer.add_scalar(f"{HEADLINE}/accuracy", acc, step)

    def finish(self, summary: Summary, step: int) -> None:
        """After the fit: the test score (one point at the run's last step, on the chart beside
        train and validation), the verdict's text, and the HPARAMS session's end."""
        if math.isfinite(summary.test["acc"]):
            self.write_split("test", summary.test["loss"], summary.test["acc"], step)
        self.writer.add_text("verdict", verdict_text(summary, self.config_yaml), step)
        self.close(summary.status)

    def close(self, status: str) -> None:
        """End the HPARAMS session with how the run ended, and flush everything to disk."""
        hparams.write_end(self.writer, status)
        for writer in (self.writer, *self.splits.values()):
            writer.close()


def verdict_text(summary: Summary, config_yaml: str) -> str:
    """The run's one TEXT entry, the verdict first: the evidence, what to try, how the run
    ended, its test score and warnings, then the config."""
    diagnosis = summary.diagnosis
    evidence = "\n".join(f"- {k}: {v:.4g}" for k, v in diagnosis["evidence"].items())
    advice = "\n".join(f"- {a}" for a in diagnosis["advice"])
    lines = [f"**{diagnosis['verdict']}**", evidence, f"worth trying:\n{advice}",
             f"stopped: {summary.stop_reason}"]
    test = summary.test
    if math.isfinite(test["acc"]):
        lines.append(f"test: accuracy {test['acc']:.4f}, loss {test['loss']:.4f}")
    if summary.alerts:
        lines.append("warnings: " + ", ".join(summary.alerts) + " (see warnings/)")
    lines.append(f"config:\n\n```yaml\n{config_yaml}\n```")
    return "\n\n".join(lines)


class CSVLogger(Callback):
    """metrics.csv: one row per epoch, written as each epoch ends, readable without TensorBoard."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_epoch_end(self, state: FitState, metrics: dict) -> None:
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(metrics))
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(v) for k, v in metrics.items()})


class Checkpointer(Callback):
    """checkpoints/last.pt at the start (epoch 0, so a run that diverges in its first epoch
    still leaves one) and after every epoch; best.pt when the monitored metric improves;
    epoch_<n>.pt every trainer.checkpoint_every_n_epochs. Each holds all a run needs to go on
    exactly (resume.py): model, optimizer, scheduler, every RNG, the loop's state with the batch
    order, the other callbacks' state, and the resolved config. Keep it last among the
    callbacks, so that it saves what the others did this epoch."""

    def __init__(
        self, folder: Path, snapshot: Any, config: dict, every_n_epochs: int | None,
        resumed: bool = False,
    ) -> None:
        self.folder = folder
        self.snapshot = snapshot  # () -> dict of model/optimizer/scheduler state
        self.config = config
        self.every_n_epochs = every_n_epochs
        self.resumed = resumed
        self.others: list[Callback] = []
        self.saved: Path | None = None  # the checkpoint saved when a signal stopped the fit

    def watch(self, callbacks: list[Callback]) -> None:
        self.others = [cb for cb in callbacks if cb is not self]

    def checkpoint(self, state: FitState, metrics: dict | None) -> dict:
        states = callback_states(self.others)
        return {
            **self.snapshot(),
            "rng": runtime.rng_state(),
            "fit": state.state_dict(),
            "callbacks": states,
            "epoch": state.epoch,
            "step": state.step,
            "metrics": metrics,
            "config": self.config,
            "saved_at": time.time(),  # TensorBoard events after this are dropped on resume
        }

    def save(self, state: FitState, metrics: dict | None, names: list[str]) -> Path:
        ckpt = self.checkpoint(state, metrics)
        for name in names:
            checkpoint.save_atomic(ckpt, self.folder / name)
        return self.folder / names[0]

    def on_fit_start(self, state: FitState) -> None:
        if not self.resumed:
            self.save(state, None, ["last.pt"])

    def on_fit_end(self, state: FitState, outcome: Outcome) -> None:
        if outcome.kind == INTERRUPTED:  # where it stopped, to go on from
            self.saved = self.save(state, None, ["last.pt"])

    def on_epoch_end(self, state: FitState, metrics: dict) -> None:
        names = ["last.pt", "best.pt"] if state.improved else ["last.pt"]
        if self.every_n_epochs and state.epoch % self.every_n_epochs == 0:
            names.append(f"epoch_{state.epoch}.pt")
        self.save(state, metrics, names)


def callback_states(callbacks: list[Callback]) -> dict[str, dict]:
    """The state of each callback that keeps one, by its state_key; two under one key would
    overwrite each other in the checkpoint, so that is an error."""
    states: dict[str, dict] = {}
    for cb in callbacks:
        mine = cb.state_dict()
        if mine is None:
            continue
        if cb.state_key in states:
            raise ValueError(f"two callbacks keep state under {cb.state_key!r}: give one of "
                             "them its own state_key")
        states[cb.state_key] = mine
    return states


class EarlyStopping(Callback):
    """Ask to stop when `monitor` has not improved by more than `min_delta` for `patience`
    epochs; with `restore_best`, ask to end with the weights of the best epoch (a copy kept on
    the device), which fit restores."""

    def __init__(self, cfg: Any, model: nn.Module) -> None:
        self.cfg = cfg
        mode = cfg.mode or metric(cfg.monitor).mode
        self.metric = Metric(cfg.monitor, higher_is_better=mode == "max")
        self.model = model
        self.best = math.nan
        self.best_epoch = 0
        self.best_weights: dict | None = None
        self.bad_epochs = 0

    @property
    def mode(self) -> str:
        return self.metric.mode

    def improved(self, value: float) -> bool:
        return self.metric.better(value, self.best, by=self.cfg.min_delta)

    def on_epoch_end(self, state: FitState, metrics: dict) -> None:
        cfg = self.cfg
        if self.improved(metrics[cfg.monitor]):
            self.best, self.best_epoch, self.bad_epochs = metrics[cfg.monitor], state.epoch, 0
            if cfg.restore_best:
                self.best_weights = {
                    k: v.detach().clone() for k, v in self.model.state_dict().items()
                }
        else:
            self.bad_epochs += 1
        if self.bad_epochs >= cfg.patience:
            state.stop = True
            state.stop_reason = (
                f"early stopping after epoch {state.epoch}: {cfg.monitor} did not improve on "
                f"{self.best:.4g} (epoch {self.best_epoch}) by more than {cfg.min_delta} "
                f"for {cfg.patience} epochs"
            )
        last_epoch = state.stop or state.epoch == state.epochs
        if last_epoch and self.best_weights is not None and self.best_epoch != state.epoch:
            state.restore = (self.best_epoch, self.best_weights)  # fit puts them back

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "best_weights": self.best_weights}

    def load_state_dict(self, saved: dict, state: FitState) -> None:
        self.best, self.best_epoch, self.bad_epochs = (
            saved["best"],
            saved["best_epoch"],
            saved["bad_epochs"],
        )
        device = next(self.model.parameters()).device
        weights = saved["best_weights"]
        self.best_weights = {k: v.to(device) for k, v in weights.items()} if weights else None


def _fmt(value: Any) -> Any:
    # Full precision: a sweep's report and summary.json must agree to the last digit.
    return repr(value) if isinstance(value, float) else value
