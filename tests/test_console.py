"""What a person sees in a terminal: the progress bar's columns, the one-line result of a sweep
job, and counts that stay integers. (A whole run's console output: test_cli.py.)"""

from __future__ import annotations

import io
import re
import time

import pytest
from omegaconf import OmegaConf
from rich.console import Console

from trainkit import console
from trainkit.config import validate
from trainkit.loop import FitState
from trainkit.summary import Summary

from .conftest import compose_config


def test_the_bar_shows_the_loss_from_the_first_step_samples_per_second_and_eta(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    screen = io.StringIO()
    monkeypatch.setattr(console, "console", Console(file=screen, force_terminal=True, width=160))
    printer = console.ProgressPrinter(batch_size=100)
    state = FitState(epochs=3, steps_per_epoch=8, epoch=1)
    printer.on_epoch_start(state)
    for step in range(1, 9):
        state.step = step
        if step in (1, 5):  # the loop's sync points: the epoch's first step, then every n
            state.running_loss = 2.345678 if step == 1 else 1.5
        printer.on_step_end(state)
        time.sleep(0.02)
    printer.progress.refresh()
    frame = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())  # colours, cursor moves
    assert "epoch 1/3" in frame and "8/8" in frame
    assert "loss 1.5000" in frame and "nan" not in frame
    assert "samples/s" in frame and "eta" in frame
    # About 50 steps/s of 100 samples: rich's estimate, so only its order of magnitude
    speed = float(frame.rsplit(" samples/s", 1)[0].split()[-1].replace(",", ""))
    assert 1_000 < speed < 10_000
    printer.on_epoch_end(state, {
        "epoch": 1, "train_loss": 1.5, "train_acc": 0.5, "val_loss": 1.4, "val_acc": 0.55,
        "lr": 0.01, "epoch_time_s": 0.2, "samples_per_s": 4000.0,
    })  # fmt: skip
    assert screen.getvalue().rstrip().endswith("4,000 samples/s")


def test_a_sweep_job_ends_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = io.StringIO()
    monkeypatch.setattr(console, "console", Console(file=screen, width=200))
    monkeypatch.setattr(console, "compact", True)
    row = {"epoch": 2, "train_loss": 0.5, "train_acc": 0.8, "val_loss": 0.6, "val_acc": 0.75}
    console.print_summary(Summary.from_dict({
        "final": row, "best": row, "test": {"loss": 0.61, "acc": 0.7412},
        "stop_reason": "completed 1 epoch", "wall_time_s": 3.21, "train_samples_per_s": 1234.0,
        "device": "cpu", "run_dir": "outputs/x", "status": "completed",
        "diagnosis": {"verdict": "good fit", "evidence": {}, "advice": []},
    }))  # fmt: skip
    assert screen.getvalue().splitlines() == [
        "test acc 0.7412 (loss 0.6100), best val acc 0.7500 at epoch 2; verdict: good fit; "
        "completed 1 epoch in 3.2s, 1,234 train samples/s on cpu"
    ]


def test_counts_stay_integers_and_sizes_must_be_numbers() -> None:
    cfg = compose_config(["data.train_size=2000", "data.val_size=0.1"])
    assert "train_size: 2000\n" in OmegaConf.to_yaml(cfg.data)  # not 2000.0
    assert "val_size: 0.1\n" in OmegaConf.to_yaml(cfg.data)
    default = compose_config([])
    assert "val_size: 5000\n" in OmegaConf.to_yaml(default.data)
    errors = validate(compose_config(["data.train_size=abc"]))
    assert errors == ["data.train_size must be a count (> 1), a fraction (<= 1), or null for all"]


def test_a_fit_stopped_mid_epoch_leaves_no_bar_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal or a NaN ends the fit inside an epoch: on_fit_end takes the live bar down, so
    the lines printed after it (saved ..., how to go on) are the last on screen. Planted bug:
    without on_fit_end the bar stays live and redraws after them."""
    from trainkit.loop import INTERRUPTED, Outcome

    screen = io.StringIO()
    monkeypatch.setattr(console, "console", Console(file=screen, force_terminal=True, width=160))
    printer = console.ProgressPrinter(batch_size=100)
    state = FitState(epochs=3, steps_per_epoch=8, epoch=1)
    printer.on_epoch_start(state)
    state.step = 3
    printer.on_step_end(state)
    live = printer.progress
    assert live is not None and live.live.is_started
    printer.on_fit_end(state, Outcome(INTERRUPTED, state))
    assert printer.progress is None and not live.live.is_started
