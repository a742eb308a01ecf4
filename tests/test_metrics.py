"""One Metric type says which way each metric improves, for every part that ranks or compares."""

from __future__ import annotations

import math

import pytest
from omegaconf import OmegaConf
from torch import nn

from trainkit.callbacks import EarlyStopping
from trainkit.cli import check_sweeper
from trainkit.loop import is_better
from trainkit.metrics import METRICS, metric
from trainkit.sweep import rank


@pytest.mark.parametrize(
    ("name", "better", "worse", "mode", "direction"),
    [("val_acc", 0.9, 0.8, "max", "maximize"), ("val_loss", 0.3, 0.4, "min", "minimize"),
     ("train_acc", 0.5, 0.4, "max", "maximize"), ("train_loss", 1.0, 2.0, "min", "minimize")],
)  # fmt: skip
def test_each_metric_knows_its_direction(
    name: str, better: float, worse: float, mode: str, direction: str
) -> None:
    m = metric(name)
    assert (m.mode, m.direction) == (mode, direction)
    assert m.better(better, worse) and not m.better(worse, better)
    assert not m.better(better, better)  # equal is not better
    assert not m.better(better, worse, by=abs(better - worse) * 2)  # not by more than `by`
    assert m.better(worse, math.nan) and not m.better(math.nan, worse)
    assert sorted([worse, better], key=m.sort_key) == [better, worse]
    assert m.better(better, m.worst()) and m.better(worse, m.worst())


def test_an_unknown_metric_names_the_choices() -> None:
    with pytest.raises(KeyError, match="val_acc, val_loss, train_acc, train_loss"):
        metric("val_f1")


def test_the_loop_early_stopping_sweeps_and_optuna_agree() -> None:
    assert is_better({"val_loss": 0.3}, {"val_loss": 0.4}, "val_loss")
    assert not is_better({"val_acc": 0.3}, {"val_acc": 0.4}, "val_acc")
    assert is_better({"val_acc": math.nan}, None, "val_acc")  # the first epoch sets the best
    for name, m in METRICS.items():
        stop = OmegaConf.create({"monitor": name, "mode": None, "min_delta": 0.0})
        assert EarlyStopping(stop, nn.Linear(1, 1)).mode == m.mode
        sweeper = {"_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
                   "direction": m.direction}  # fmt: skip
        cfg = OmegaConf.create({"hydra": {"sweeper": sweeper}, "trainer": {"monitor": name}})
        assert check_sweeper(cfg) == []
        sweeper["direction"] = "minimize" if m.higher_is_better else "maximize"
        cfg = OmegaConf.create({"hydra": {"sweeper": sweeper}, "trainer": {"monitor": name}})
        assert check_sweeper(cfg) == [
            f"hydra.sweeper.direction={sweeper['direction']}, but each trial returns its best "
            f"{name} (higher is better for accuracy, lower for loss): use "
            f"hydra.sweeper.direction={m.direction}"
        ]


class FakeJob:
    def __init__(self, num: int, value: float, ok: bool = True) -> None:
        self.num, self.value, self.ok = num, value, ok

    def best(self, metric: str) -> float:
        return self.value


def test_a_sweep_ranks_best_first_and_failed_jobs_last() -> None:
    jobs = [FakeJob(0, 0.5), FakeJob(1, 0.9), FakeJob(2, 0.99, ok=False), FakeJob(3, 0.7)]
    assert [j.num for j in rank(jobs, "val_acc")] == [1, 3, 0, 2]
    assert [j.num for j in rank(jobs, "val_loss")] == [0, 3, 1, 2]
