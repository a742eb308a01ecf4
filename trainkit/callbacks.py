"""Callbacks watch the loop at a few named events, in list order; they never change gradients.

Events: on_fit_start, on_epoch_start, on_step_end (every step: keep it cheap, no syncs),
on_epoch_end (with that epoch's metrics), on_fit_end (with the run's summary).
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn
from torch.optim import Optimizer
from torch.utils.tensorboard import SummaryWriter

from trainkit import checkpoint, hparams, runtime
from trainkit.schedule import current_momentum

if TYPE_CHECKING:
    from trainkit.loop import FitState


class Callback:
    """No-op defaults; a callback overrides the events it cares about. One that keeps state
    across epochs returns it from `state_dict` so that checkpoints carry it into a resumed run."""

    def on_fit_start(self, state: FitState) -> None: ...
    def on_epoch_start(self, state: FitState) -> None: ...
    def on_step_end(self, state: FitState) -> None: ...
    def on_epoch_end(self, state: FitState, metrics: dict) -> None: ...
    def on_fit_end(self, state: FitState, summary: dict) -> None: ...
    def state_dict(self) -> dict | None:
        return None

    def load_state_dict(self, saved: dict, state: FitState) -> None: ...


class TensorBoardLogger(Callback):
    """Epoch curves under loss/*, acc/* and lr (x axis: epoch), train and val on one chart;
    the run's hparams and its outcome for the HPARAMS tab (hparams.py)."""

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
        self.resumed = resumed  # the layout, config and hparams are in the run's first file
        self.config_yaml = config_yaml
        self.optimizer = optimizer
        self.every_n_steps = every_n_steps
        self.hparams = run_hparams
        self.monitor = monitor

    def on_fit_start(self, state: FitState) -> None:
        if self.resumed:
            return
        swept = hparams.swept_keys(Path(self.writer.log_dir))
        hparams.write_start(self.writer, self.hparams, self.monitor, swept)
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
        for key, tag in [("l1", "loss/l1"), ("l2", "loss/l2"), ("grad_norm", "grad_norm/preclip")]:
            if key in metrics:  # only when that regularizer is on
                self.writer.add_scalar(tag, metrics[key], epoch)
        self.writer.flush()

    def on_fit_end(self, state: FitState, summary: dict) -> None:
        self.writer.add_text("stop_reason", summary["stop_reason"], state.epoch)
        diagnosis = summary["diagnosis"]
        advice = "\n".join(f"- {a}" for a in diagnosis["advice"])
        evidence = "\n".join(f"- {k}: {v:.4g}" for k, v in diagnosis["evidence"].items())
        self.writer.add_text(
            "verdict",
            f"**{diagnosis['verdict']}**\n\n{evidence}\n\nworth trying:\n{advice}",
            state.epoch,
        )
        if math.isfinite(summary["test"]["acc"]):
            self.writer.add_scalar("loss/test", summary["test"]["loss"], state.epoch)
            self.writer.add_scalar("acc/test", summary["test"]["acc"], state.epoch)
        if summary["best"] is not None:
            best = summary["best"][self.monitor]
            self.writer.add_scalar(f"best/{self.monitor}", best, summary["best"]["epoch"])
        self.close(summary["status"])

    def close(self, status: str) -> None:
        """End the HPARAMS session with how the run ended, and flush everything to disk."""
        hparams.write_end(self.writer, status)
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
    """checkpoints/last.pt at the start (epoch 0, so a run that diverges in its first epoch
    still leaves one) and after every epoch; best.pt when the monitored metric improves;
    epoch_<n>.pt every trainer.checkpoint_every_n_epochs. Each holds all a run needs to go on
    exactly (resume.py): model, optimizer, scheduler, every RNG, the loop's state with the batch
    order, the other callbacks' state, and the resolved config. Keep it last among the
    callbacks, so that it saves what the others did this epoch."""

    def __init__(
        self, folder: Path, snapshot: Any, config: dict, every_n_epochs: int | None,
        resumed: bool = False,
    ) -> None:  # fmt: skip
        self.folder = folder
        self.snapshot = snapshot  # () -> dict of model/optimizer/scheduler state
        self.config = config
        self.every_n_epochs = every_n_epochs
        self.resumed = resumed
        self.others: list[Callback] = []

    def watch(self, callbacks: list[Callback]) -> None:
        self.others = [cb for cb in callbacks if cb is not self]

    def checkpoint(self, state: FitState, metrics: dict | None) -> dict:
        states = {type(cb).__name__: cb.state_dict() for cb in self.others}
        return {
            **self.snapshot(),
            "rng": runtime.rng_state(),
            "fit": state.state_dict(),
            "callbacks": {name: value for name, value in states.items() if value is not None},
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

    def on_epoch_end(self, state: FitState, metrics: dict) -> None:
        names = ["last.pt", "best.pt"] if state.improved else ["last.pt"]
        if self.every_n_epochs and state.epoch % self.every_n_epochs == 0:
            names.append(f"epoch_{state.epoch}.pt")
        self.save(state, metrics, names)


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by more than `min_delta` for `patience` epochs;
    with `restore_best`, end with the weights of the best epoch (a copy kept on the device)."""

    def __init__(self, cfg: Any, model: nn.Module) -> None:
        self.cfg = cfg
        self.mode = cfg.mode or ("max" if cfg.monitor.endswith("acc") else "min")
        self.model = model
        self.best = math.nan
        self.best_epoch = 0
        self.best_weights: dict | None = None
        self.bad_epochs = 0

    def improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if math.isnan(self.best):
            return True
        if self.mode == "min":
            return value < self.best - self.cfg.min_delta
        return value > self.best + self.cfg.min_delta

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
            self.model.load_state_dict(self.best_weights)
            reason = state.stop_reason or f"completed {state.epochs} epochs"
            state.stop_reason = f"{reason}; restored the weights of epoch {self.best_epoch}"

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "best_weights": self.best_weights}  # fmt: skip

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
