"""Optimizers and schedules: param groups, and each schedule's lr against its closed form."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from trainkit.errors import UserError
from trainkit.experiment import build_optimizer
from trainkit.optim_step import LeanAdamStep, step_function
from trainkit.schedule import build_scheduler, current_momentum

from .conftest import compose_config

LR = 0.1


def optimizer_for(*overrides: str) -> torch.optim.Optimizer:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    return build_optimizer(compose_config([*overrides, f"lr={LR}"]).optimizer, model)


def lrs_over(steps: int, *overrides: str, steps_per_epoch: int = 10, epochs: int = 10) -> list:
    """The lr before each of `steps` scheduler steps."""
    cfg = compose_config(list(overrides))
    optimizer = optimizer_for("optimizer=momentum")
    scheduler = build_scheduler(cfg.scheduler, optimizer, steps_per_epoch, epochs)
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_biases_and_norm_parameters_get_no_weight_decay() -> None:
    optimizer = optimizer_for("optimizer=adamw")
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == pytest.approx(0.01) and no_decay["weight_decay"] == 0
    assert sorted(p.shape for p in decay["params"]) == [(2, 8), (8, 4)]
    assert len(no_decay["params"]) == 4  # two biases, batch-norm scale and shift


@pytest.mark.parametrize(
    ("option", "torch_class"),
    [("sgd", "SGD"), ("momentum", "SGD"), ("nesterov", "SGD"), ("adam", "Adam"),
     ("adamw", "AdamW"), ("rmsprop", "RMSprop"), ("adagrad", "Adagrad")],
)  # fmt: skip
def test_each_optimizer_is_torchs_own_with_the_lr_asked_for(option: str, torch_class: str) -> None:
    optimizer = optimizer_for(f"optimizer={option}")
    assert type(optimizer).__name__ == torch_class
    assert optimizer.param_groups[0]["lr"] == LR
    if option == "nesterov":
        assert optimizer.defaults["nesterov"] and optimizer.defaults["momentum"] == 0.9


def test_adamw_decay_is_decoupled_from_the_gradient_and_spares_biases() -> None:
    """trainkit's optimizer=adamw through the loop's own step (the lean fused one after the
    first): with zero gradients only the decay moves the weights, by lr * wd * w per step, and
    the biases (no-decay group) stay. Planted bugs caught: decay applied to every group, or
    the lean step calling Adam's kernel (L2 in the gradient: Adam's normalized step of lr)."""
    model = nn.Sequential(nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.fill_(2.0)
        model[0].bias.fill_(1.0)
    cfg = compose_config(["optimizer=adamw", "lr=0.1", "optimizer.weight_decay=0.5"])
    optimizer = build_optimizer(cfg.optimizer, model)
    step = step_function(optimizer)
    for _ in range(3):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        step()
    assert isinstance(step, LeanAdamStep)
    torch.testing.assert_close(model[0].weight.detach(), torch.full((2, 3), 2.0 * 0.95**3))
    assert torch.equal(model[0].bias.detach(), torch.ones(2))


def test_step_and_multistep_and_exponential_closed_forms() -> None:
    got = lrs_over(8, "scheduler=step", "scheduler.step_size=3", "scheduler.gamma=0.5")
    assert got == pytest.approx([LR * 0.5 ** (t // 3) for t in range(8)])
    got = lrs_over(8, "scheduler=multistep", "scheduler.milestones=[2,5]")
    assert got == pytest.approx([LR * 0.1 ** sum(t >= m for m in (2, 5)) for t in range(8)])
    got = lrs_over(6, "scheduler=exponential", "scheduler.gamma=0.8")
    assert got == pytest.approx([LR * 0.8**t for t in range(6)])


def test_cosine_closed_form_over_the_whole_run() -> None:
    total = 10 * 3
    got = lrs_over(total, "scheduler=cosine", "scheduler.eta_min=0.001", epochs=3)
    expected = [
        0.001 + (LR - 0.001) * (1 + math.cos(math.pi * t / total)) / 2 for t in range(total)
    ]
    assert got == pytest.approx(expected)


def test_warmup_cosine_ramps_linearly_then_anneals() -> None:
    total, warmup = 100, 10  # 10 epochs x 10 steps, warmup_fraction 0.1
    got = lrs_over(total, "scheduler=warmup_cosine", "scheduler.warmup_fraction=0.1")
    start = 0.01
    ramp = [LR * (start + (1 - start) * t / warmup) for t in range(warmup)]
    anneal = [
        LR * (1 + math.cos(math.pi * t / (total - warmup))) / 2 for t in range(total - warmup)
    ]
    assert got == pytest.approx(ramp + anneal)


def test_onecycle_moves_lr_up_then_down_and_momentum_the_other_way() -> None:
    cfg = compose_config(["scheduler=onecycle"])
    optimizer = optimizer_for("optimizer=momentum")
    scheduler = build_scheduler(cfg.scheduler, optimizer, 10, 10)
    lrs, moms = [], []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        moms.append(current_momentum(optimizer))
        optimizer.step()
        scheduler.step()
    peak = round(0.3 * 100) - 1  # torch's OneCycleLR reaches max_lr at pct_start * total - 1
    assert lrs[0] == pytest.approx(LR / 25) and moms[0] == pytest.approx(0.95)
    assert lrs[peak] == pytest.approx(LR) and moms[peak] == pytest.approx(0.85)
    assert max(lrs) == pytest.approx(LR) and lrs.index(max(lrs)) == peak
    assert lrs[-1] == pytest.approx(LR / 25 / 1e4, rel=0.05)
    assert moms[-1] == pytest.approx(0.95, abs=1e-4)


def test_onecycle_cycles_adams_beta1() -> None:
    cfg = compose_config(["scheduler=onecycle"])
    optimizer = optimizer_for("optimizer=adam")
    scheduler = build_scheduler(cfg.scheduler, optimizer, 10, 1)
    assert optimizer.param_groups[0]["betas"][0] == pytest.approx(0.95)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["betas"][0] < 0.95


def test_onecycle_without_momentum_says_what_to_change() -> None:
    cfg = compose_config(["scheduler=onecycle"])
    with pytest.raises(UserError, match="set scheduler.cycle_momentum=false"):
        build_scheduler(cfg.scheduler, optimizer_for("optimizer=adagrad"), 10, 1)


def test_plateau_cuts_the_lr_after_patience_epochs_without_improvement() -> None:
    cfg = compose_config(["scheduler=plateau", "scheduler.patience=2", "scheduler.factor=0.5"])
    optimizer = optimizer_for("optimizer=sgd")
    scheduler = build_scheduler(cfg.scheduler, optimizer, 10, 10)
    lrs = []
    for val_loss in [1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]:
        scheduler.step(val_loss)
        lrs.append(optimizer.param_groups[0]["lr"])
    # Best 0.9 at epoch 2; epochs 3, 4 are within patience; epoch 5 is the third bad one.
    assert lrs == pytest.approx([LR, LR, LR, LR, LR * 0.5, LR * 0.5, LR * 0.5, LR * 0.25])


def test_a_checkpoint_from_before_schedule_targets_builds_its_schedule() -> None:
    """Configs saved before schedules had a _target_ name them: {name: cosine, ...}."""
    old = OmegaConf.create({"name": "cosine", "interval": "step", "eta_min": 0.0})
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    schedule = build_scheduler(old, optimizer, 10, 3)
    assert isinstance(schedule, torch.optim.lr_scheduler.CosineAnnealingLR)
    assert schedule.T_max == 30
    assert build_scheduler(OmegaConf.create({"name": "none", "interval": "step"}), optimizer,
                           10, 3) is None  # fmt: skip
