"""The metrics a run reports per epoch, each with the direction in which it improves: what the
checkpoint's best epoch, early stopping, a sweep's ranking, Optuna's direction and the config's
validation all read, so that "better" is written once."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool

    @property
    def mode(self) -> str:
        """Early stopping's and ReduceLROnPlateau's word for the direction."""
        return "max" if self.higher_is_better else "min"

    @property
    def direction(self) -> str:
        """Optuna's word for it: a trial returns the best value of the run's monitor."""
        return "maximize" if self.higher_is_better else "minimize"

    def better(self, value: float, than: float, by: float = 0.0) -> bool:
        """`value` improves on `than` by more than `by`; NaN never improves, and anything
        improves on NaN (no value yet)."""
        if math.isnan(value):
            return False
        if math.isnan(than):
            return True
        return value > than + by if self.higher_is_better else value < than - by

    def sort_key(self, value: float) -> float:
        """Sorting by it puts the best first."""
        return -value if self.higher_is_better else value

    def worst(self) -> float:
        """What a failed sweep job reports, so that an optimizer steers away from it."""
        return -math.inf if self.higher_is_better else math.inf


METRICS = {
    m.name: m
    for m in (
        Metric("val_acc", higher_is_better=True),
        Metric("val_loss", higher_is_better=False),
        Metric("train_acc", higher_is_better=True),
        Metric("train_loss", higher_is_better=False),
    )
}
MONITORABLE = ("val_acc", "val_loss")  # what trainer.monitor may name: the held-out metrics


def metric(name: str) -> Metric:
    """The metric called `name`; a KeyError names the choices."""
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"{name}: choose one of {', '.join(METRICS)}") from None
