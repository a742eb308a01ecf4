"""`trainkit lr-find [overrides]`: the learning-rate range test (Smith 2017).

Trains with the real training step (loop.train_epoch, same model, data, loss, optimizer and
regularization as `trainkit` would use) while the lr grows exponentially from `start_lr` to
`end_lr` over `num_steps` steps, and records the loss at every step. It stops early once the
smoothed loss exceeds 4x its minimum (divergence) or turns NaN.

Suggestion rule: a tenth of the lr at which the smoothed loss is lowest. The minimum sits at
the edge of instability; a tenth of it is still fast and safely below the edge.
Writes lr_find.csv, lr_find.png and TensorBoard scalars into the output folder.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib
import torch
from omegaconf import DictConfig, open_dict
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.tensorboard import SummaryWriter

from trainkit import console
from trainkit.errors import UserError
from trainkit.experiment import build
from trainkit.loop import Callback, Diverged, FitState, train_epoch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after choosing the file-only backend)

# 0.9 smoothing averages ~10 steps: enough to tame batch noise, without the lag of a longer
# average, which shifts the minimum towards larger lrs (far, with 0.98).
START_LR, END_LR, NUM_STEPS, SMOOTHING, DIVERGE_FACTOR = 1e-7, 10.0, 200, 0.9, 4.0


class RangeRecorder(Callback):
    """Records (lr used, loss) each step; asks to stop when the smoothed loss diverges."""

    def __init__(self, optimizer: torch.optim.Optimizer, num_steps: int) -> None:
        self.optimizer = optimizer
        self.num_steps = num_steps
        self.lr_used = optimizer.param_groups[0]["lr"]
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.average = 0.0

    def on_step_end(self, state: FitState) -> None:
        loss = state.last_loss.item()  # one sync per step: fine for a 100-step test
        self.lrs.append(self.lr_used)
        self.losses.append(loss)
        self.average = SMOOTHING * self.average + (1 - SMOOTHING) * loss
        smooth = self.average / (1 - SMOOTHING ** len(self.losses))  # bias-corrected EMA
        self.smoothed.append(smooth)
        self.lr_used = self.optimizer.param_groups[0]["lr"]  # the next step's lr
        diverged = not math.isfinite(smooth) or smooth > DIVERGE_FACTOR * min(self.smoothed)
        if diverged or len(self.losses) >= self.num_steps:
            state.stop = True


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float, float]:
    """(suggested lr, lr at the smoothed-loss minimum)."""
    finite = [(s, lr) for s, lr in zip(smoothed, lrs, strict=True) if math.isfinite(s)]
    best_lr = min(finite)[1]
    return best_lr / 10, best_lr


def lr_find(cfg: DictConfig, out_dir: Path) -> dict:
    """Run the range test as the config says; write the curve; return the suggestion."""
    with open_dict(cfg):
        cfg.optimizer.lr = START_LR
        cfg.scheduler = {"interval": "step"}  # no _target_: a constant lr (the finder's own)
        cfg.regularization.early_stopping.enabled = False
    dataset, training = build(cfg)
    ratio = END_LR / START_LR
    training.scheduler = LambdaLR(
        training.optimizer, lambda s: ratio ** (min(s, NUM_STEPS) / NUM_STEPS)
    )
    training.scheduler_interval = "step"
    recorder = RangeRecorder(training.optimizer, NUM_STEPS)
    steps = min(NUM_STEPS, -(-len(dataset.train) // cfg.trainer.batch_size))
    state = FitState(epochs=math.ceil(NUM_STEPS / steps), steps_per_epoch=steps)
    generator = torch.Generator().manual_seed(cfg.trainer.seed)
    while not state.stop:
        try:
            train_epoch(training, dataset.train, generator, state, [recorder])
            state.progress = None  # the next pass is a new epoch
        except Diverged:
            break  # the loss blew up: the end of the range test, not an error
    if not any(math.isfinite(s) for s in recorder.smoothed):
        raise UserError(
            f"lr-find: the loss was NaN/Inf from its first step at lr={START_LR:g}: the model or "
            "its init diverges before any lr matters; check init= and the model settings"
        )
    suggested, best = suggest(recorder.lrs, recorder.smoothed)
    write_outputs(out_dir, recorder, suggested, best)
    console.console.print(
        f"lr-find: lowest smoothed loss at lr={best:.2g}; suggested [bold]lr={suggested:.2g}[/] "
        f"(a tenth of it). {len(recorder.losses)} steps; curve in {out_dir}/lr_find.png"
    )
    return {"suggested_lr": suggested, "min_loss_lr": best, "steps": len(recorder.losses)}


def write_outputs(out_dir: Path, rec: RangeRecorder, suggested: float, best: float) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "lr_find.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "lr", "loss", "smoothed_loss"])
        for i, row in enumerate(zip(rec.lrs, rec.losses, rec.smoothed, strict=True), start=1):
            writer.writerow([i, *(f"{v:.6g}" for v in row)])
    tb = SummaryWriter(log_dir=str(out_dir))
    for i, (lr, loss) in enumerate(zip(rec.lrs, rec.smoothed, strict=True), start=1):
        tb.add_scalar("lr_find/smoothed_loss", loss, i)
        tb.add_scalar("lr_find/lr", lr, i)
    tb.add_text("lr_find/suggestion", f"lr={suggested:.2g} (lowest smoothed loss at {best:.2g})")
    tb.close()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(rec.lrs, rec.losses, alpha=0.3, label="loss")
    ax.plot(rec.lrs, rec.smoothed, label="smoothed loss")
    ax.axvline(suggested, color="green", linestyle="--", label=f"suggested lr={suggested:.2g}")
    ax.axvline(best, color="red", linestyle=":", label=f"lowest loss at {best:.2g}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss", title="lr range test")
    finite = [v for v in rec.smoothed if math.isfinite(v)]
    ax.set_ylim(min(finite) * 0.9, min(max(finite), 4 * min(finite)) * 1.1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "lr_find.png", dpi=100)
    plt.close(fig)
