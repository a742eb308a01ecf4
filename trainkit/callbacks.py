"""Callbacks watch the loop at a few named events, in list order; they never change gradients.

Events: on_fit_start, on_epoch_start, on_step_end (every step: keep it cheap, no syncs),
on_epoch_end (with that epoch's metrics), on_fit_end (with the run's summary).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch.optim import Optimizer
from torch.utils.tensorboard import SummaryWriter

from trainkit import checkpoint
from trainkit.schedule import current_momentum

if TYPE_CHECKING:
    from trainkit.loop import FitState


class Callback:
    """No-op defaults; a callback overrides the events it cares about."""

    def on_fit_start(self, state: FitState) -> None: ...
    def on_epoch_start(self, state: FitState) -> None: ...
    def on_step_end(self, state: FitState) -> None: ...
    def on_epoch_end(self, state: FitState, metrics: dict) -> None: ...
    def on_fit_end(self, state: FitState, summary: dict) -> None: ...


class TensorBoardLogger(Callback):
    """Epoch curves under loss/*, acc/* and lr (x axis: epoch), train and val on one chart."""

    def __init__(
        self, run_dir: Path, config_yaml: str, optimizer: Optimizer, every_n_steps: int
    ) -> None:
        self.writer = SummaryWriter(log_dir=str(run_dir))
        self.config_yaml = config_yaml
        self.optimizer = optimizer
        self.every_n_steps = every_n_steps

    def on_fit_start(self, state: FitState) -> None:
        # TensorBoard charts one tag each; the custom-scalars layout overlays train and val.
        self.writer.add_custom_scalars(
            {
                "curves": {
                    "loss": ["Multiline", ["loss/train", "loss/val"]],
                    "accuracy": ["Multiline", ["acc/train", "acc/val"]],
                }
            }
        )
        self.writer.add_text("config", f"```yaml\n{self.config_yaml}\n```", 0)

    def on_step_end(self, state: FitState) -> None:
        # Per-step schedules change within an epoch: sample them on the optimizer-step axis.
        if state.step % self.every_n_steps == 0:
            self.writer.add_scalar("schedule/lr", self.optimizer.param_groups[0]["lr"], state.step)
            momentum = current_momentum(self.optimizer)
            if not math.isnan(momentum):
                self.writer.add_scalar("schedule/momentum", momentum, state.step)

    def on_epoch_end(self, state: FitState, metrics: dict) -> None:
        epoch = metrics["epoch"]
        for split in ("train", "val"):
            self.writer.add_scalar(f"loss/{split}", metrics[f"{split}_loss"], epoch)
            self.writer.add_scalar(f"acc/{split}", metrics[f"{split}_acc"], epoch)
        self.writer.add_scalar("lr", metrics["lr"], epoch)
        if not math.isnan(metrics["momentum"]):
            self.writer.add_scalar("momentum", metrics["momentum"], epoch)
        self.writer.add_scalar("perf/samples_per_s", metrics["samples_per_s"], epoch)
        self.writer.flush()

    def on_fit_end(self, state: FitState, summary: dict) -> None:
        self.writer.add_scalar("loss/test", summary["test"]["loss"], state.epoch)
        self.writer.add_scalar("acc/test", summary["test"]["acc"], state.epoch)
        self.writer.close()


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
    """checkpoints/last.pt after every epoch and best.pt when the monitored metric improves."""

    def __init__(self, folder: Path, snapshot: Any, config: dict) -> None:
        self.folder = folder
        self.snapshot = snapshot  # () -> dict of model/optimizer/scheduler/RNG state
        self.config = config

    def on_epoch_end(self, state: FitState, metrics: dict) -> None:
        ckpt = {
            **self.snapshot(),
            "epoch": state.epoch,
            "step": state.step,
            "metrics": metrics,
            "config": self.config,
        }
        checkpoint.save_atomic(ckpt, self.folder / "last.pt")
        if state.improved:
            checkpoint.save_atomic(ckpt, self.folder / "best.pt")


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value
