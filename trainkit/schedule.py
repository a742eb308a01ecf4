"""Learning-rate schedules, built like every other component: `_target_` (+ `_partial_`), the
call site adding the optimizer. A schedule that needs the run's length takes `total`: the
number of `interval`s in the run, which the YAML cannot know (trainkit's cosine,
warmup_cosine and one_cycle below); torch's own classes (StepLR, ExponentialLR, ...) are
named directly. Add one with a YAML in your config dir:

    # conf/scheduler/my_step.yaml
    _target_: torch.optim.lr_scheduler.StepLR
    _partial_: true
    interval: epoch
    step_size: 2
    gamma: 0.5

The loop steps a schedule after every optimizer step (`interval: step`) or after every epoch's
validation (`interval: epoch`); ReduceLROnPlateau is stepped with the validation loss.
"""

from __future__ import annotations

import inspect
import math

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.optim import Optimizer
from torch.optim import lr_scheduler as sched

from trainkit.config import from_legacy_name
from trainkit.errors import UserError, instantiation_reason

Schedule = sched.LRScheduler | sched.ReduceLROnPlateau
NOT_ARGUMENTS = ("interval", "name")  # trainkit's, not the schedule's

# Checkpoints written before schedules were built by _target_ name them: what each name was.
LEGACY = {
    "step": "torch.optim.lr_scheduler.StepLR",
    "multistep": "torch.optim.lr_scheduler.MultiStepLR",
    "exponential": "torch.optim.lr_scheduler.ExponentialLR",
    "cosine": "trainkit.schedule.cosine",
    "warmup_cosine": "trainkit.schedule.warmup_cosine",
    "onecycle": "trainkit.schedule.one_cycle",
    "plateau": "torch.optim.lr_scheduler.ReduceLROnPlateau",
}


def build_scheduler(
    cfg: DictConfig, optimizer: Optimizer, steps_per_epoch: int, epochs: int
) -> Schedule | None:
    """The schedule for `optimizer` (None without a `_target_`: scheduler=none); its horizon
    counts `cfg.interval`s over the whole run."""
    cfg = legacy(cfg)
    target = cfg.get("_target_")
    if not target:
        return None
    interval = cfg.get("interval", "epoch")
    total = steps_per_epoch * epochs if interval == "step" else epochs
    args = OmegaConf.masked_copy(cfg, [k for k in cfg if k not in NOT_ARGUMENTS])
    try:
        factory = instantiate(args, _partial_=True)
        schedule = factory(optimizer, total=total) if takes_total(factory.func) else (
            factory(optimizer))
    except UserError:
        raise
    except (InstantiationException, TypeError, ValueError) as e:
        raise UserError(f"scheduler._target_={target}: {instantiation_reason(e)}") from None
    if not isinstance(schedule, Schedule):
        raise UserError(
            f"scheduler._target_={target} gave a {type(schedule).__name__}, not a torch "
            "LRScheduler: name a scheduler class (with _partial_: true)"
        )
    if isinstance(schedule, sched.ReduceLROnPlateau) and interval != "epoch":
        raise UserError("scheduler=plateau watches the validation loss, known once per epoch: "
                        "set scheduler.interval=epoch")
    return schedule


def takes_total(factory: object) -> bool:
    """The schedule wants the run's length (trainkit's cosine, warmup_cosine, one_cycle)."""
    try:
        return "total" in inspect.signature(factory).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):  # a builtin: no signature to read
        return False


def legacy(cfg: DictConfig) -> DictConfig:
    """A schedule config from before `_target_` (a checkpoint's): {name: step, ...}."""
    return from_legacy_name(cfg, "scheduler", LEGACY)


def cosine(optimizer: Optimizer, total: int, eta_min: float = 0.0) -> sched.LRScheduler:
    """Cosine annealing from lr to eta_min over the run."""
    return sched.CosineAnnealingLR(optimizer, T_max=total, eta_min=eta_min)


def warmup_cosine(
    optimizer: Optimizer, total: int, warmup_fraction: float = 0.05,
    warmup_start_factor: float = 0.01, eta_min: float = 0.0,
) -> sched.LRScheduler:
    """A linear ramp from warmup_start_factor x lr over warmup_fraction of the run, then
    cosine annealing to eta_min."""
    warmup = max(1, math.ceil(warmup_fraction * total))
    return sched.SequentialLR(
        optimizer,
        [
            sched.LinearLR(optimizer, warmup_start_factor, 1.0, total_iters=warmup),
            sched.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup), eta_min=eta_min),
        ],
        milestones=[warmup],
    )


def one_cycle(
    optimizer: Optimizer, total: int, pct_start: float = 0.3, div_factor: float = 25.0,
    final_div_factor: float = 1.0e4, anneal_strategy: str = "cos", cycle_momentum: bool = True,
    base_momentum: float = 0.85, max_momentum: float = 0.95,
) -> sched.LRScheduler:
    """torch's OneCycleLR peaking at the optimizer's own lr (per param group)."""
    defaults = optimizer.defaults
    if cycle_momentum and "momentum" not in defaults and "betas" not in defaults:
        raise UserError(
            f"scheduler=onecycle cycles momentum, which {type(optimizer).__name__} has not: "
            "set scheduler.cycle_momentum=false or use an optimizer with momentum or betas"
        )
    return sched.OneCycleLR(
        optimizer,
        max_lr=[group["lr"] for group in optimizer.param_groups],
        total_steps=total,
        pct_start=pct_start,
        anneal_strategy=anneal_strategy,
        cycle_momentum=cycle_momentum,
        base_momentum=base_momentum,
        max_momentum=max_momentum,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
    )


def current_momentum(optimizer: Optimizer) -> float:
    """SGD's momentum or Adam's beta1 of the first param group; NaN for optimizers without."""
    group = optimizer.param_groups[0]
    if "betas" in group:
        return float(group["betas"][0])
    return float(group.get("momentum", math.nan))
