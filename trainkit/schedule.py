"""Learning-rate schedules. A name selects our logic because each needs runtime totals
(steps per epoch, number of epochs) that the YAML cannot know."""

from __future__ import annotations

from omegaconf import DictConfig
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, StepLR

from trainkit.errors import UserError


def build_scheduler(
    cfg: DictConfig, optimizer: Optimizer, steps_per_epoch: int, epochs: int
) -> LRScheduler | None:
    """The schedule for `optimizer`, stepped every `cfg.interval` (step or epoch) by the loop."""
    total = steps_per_epoch * epochs if cfg.interval == "step" else epochs
    if cfg.name == "none":
        return None
    if cfg.name == "step":
        return StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.name == "cosine":
        return CosineAnnealingLR(optimizer, T_max=total, eta_min=cfg.eta_min)
    raise UserError(f"scheduler.name={cfg.name}: choose none, step or cosine")
