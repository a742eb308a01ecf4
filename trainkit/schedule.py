"""Learning-rate schedules. A name selects our logic because each needs runtime totals
(steps per epoch, number of epochs) that the YAML cannot know.

The loop steps a schedule after every optimizer step (`interval: step`) or after every epoch's
validation (`interval: epoch`); `plateau` is stepped with the validation loss.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig
from torch.optim import Optimizer
from torch.optim import lr_scheduler as sched

from trainkit.errors import UserError

NAMES = ("none", "step", "multistep", "exponential", "cosine", "warmup_cosine", "onecycle",
         "plateau")  # fmt: skip


def build_scheduler(
    cfg: DictConfig, optimizer: Optimizer, steps_per_epoch: int, epochs: int
) -> sched.LRScheduler | sched.ReduceLROnPlateau | None:
    """The schedule for `optimizer`; its horizon counts `cfg.interval`s over the whole run."""
    total = steps_per_epoch * epochs if cfg.interval == "step" else epochs
    name = cfg.name
    if name == "none":
        return None
    if name == "step":
        return sched.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if name == "multistep":
        return sched.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma)
    if name == "exponential":
        return sched.ExponentialLR(optimizer, gamma=cfg.gamma)
    if name == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=total, eta_min=cfg.eta_min)
    if name == "warmup_cosine":
        warmup = max(1, math.ceil(cfg.warmup_fraction * total))
        return sched.SequentialLR(
            optimizer,
            [
                sched.LinearLR(optimizer, cfg.warmup_start_factor, 1.0, total_iters=warmup),
                sched.CosineAnnealingLR(
                    optimizer, T_max=max(1, total - warmup), eta_min=cfg.eta_min
                ),
            ],
            milestones=[warmup],
        )
    if name == "onecycle":
        defaults = optimizer.defaults
        if cfg.cycle_momentum and "momentum" not in defaults and "betas" not in defaults:
            raise UserError(
                f"scheduler=onecycle cycles momentum, which {type(optimizer).__name__} has not: "
                "set scheduler.cycle_momentum=false or use an optimizer with momentum or betas"
            )
        return sched.OneCycleLR(
            optimizer,
            max_lr=[group["lr"] for group in optimizer.param_groups],
            total_steps=total,
            pct_start=cfg.pct_start,
            anneal_strategy=cfg.anneal_strategy,
            cycle_momentum=cfg.cycle_momentum,
            base_momentum=cfg.base_momentum,
            max_momentum=cfg.max_momentum,
            div_factor=cfg.div_factor,
            final_div_factor=cfg.final_div_factor,
        )
    if name == "plateau":
        return sched.ReduceLROnPlateau(
            optimizer,
            mode="min",
            factor=cfg.factor,
            patience=cfg.patience,
            threshold=cfg.threshold,
            cooldown=cfg.cooldown,
            min_lr=cfg.min_lr,
        )
    raise UserError(f"scheduler.name={name}: choose one of {', '.join(NAMES)}")


def current_momentum(optimizer: Optimizer) -> float:
    """SGD's momentum or Adam's beta1 of the first param group; NaN for optimizers without."""
    group = optimizer.param_groups[0]
    if "betas" in group:
        return float(group["betas"][0])
    return float(group.get("momentum", math.nan))
