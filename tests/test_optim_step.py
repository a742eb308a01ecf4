"""The lean Adam step (optim_step.py) leaves exactly what optimizer.step() leaves."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from trainkit.experiment import param_groups
from trainkit.optim_step import LeanAdamStep, step_function


def two_layer_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def train(
    net: nn.Module, optimizer: torch.optim.Optimizer, steps: int, lean: bool, lean_step=None
) -> None:  # fmt: skip
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    step = (lean_step or step_function(optimizer)) if lean else optimizer.step  # after the
    # schedule wrapped optimizer.step
    data = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(8, 6, generator=data), torch.randint(0, 3, (8,), generator=data)
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        step()
        schedule.step()


@pytest.mark.parametrize(
    ("optimizer_class", "weight_decay"),
    [(torch.optim.Adam, 0.0), (torch.optim.Adam, 0.01), (torch.optim.AdamW, 0.05)],
)
def test_lean_step_gives_the_same_weights_and_state_as_optimizer_step(
    optimizer_class: type, weight_decay: float
) -> None:
    results = []
    for lean in (False, True):
        net = two_layer_net()
        groups = param_groups(net, weight_decay)  # two groups with weight decay, as trainkit
        optimizer = optimizer_class(groups, lr=0.01, weight_decay=weight_decay, fused=True)
        assert isinstance(step_function(optimizer), LeanAdamStep)
        train(net, optimizer, steps=7, lean=lean)
        results.append((net.state_dict(), optimizer.state_dict()))
    (weights, state), (lean_weights, lean_state) = results
    assert weights["0.weight"].ne(two_layer_net().state_dict()["0.weight"]).all()  # it trained
    for name, value in weights.items():
        assert torch.equal(value, lean_weights[name]), name
    for index, saved in state["state"].items():
        assert float(saved["step"]) == 7.0
        for key, value in saved.items():
            assert torch.equal(value, lean_state["state"][index][key]), (index, key)
    assert state["param_groups"] == lean_state["param_groups"]


def test_lean_step_reads_the_state_a_resumed_optimizer_loaded() -> None:
    net = two_layer_net()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01, fused=True)
    train(net, optimizer, steps=3, lean=True)
    saved = copy.deepcopy((net.state_dict(), optimizer.state_dict()))
    lean_step = step_function(optimizer)  # made before the loads: it must not keep old state

    results = []
    for lean in (False, True):
        saved_net, saved_optimizer = copy.deepcopy(saved)  # as torch.load gives them
        net.load_state_dict(saved_net)
        optimizer.load_state_dict(saved_optimizer)  # new state tensors
        train(net, optimizer, steps=2, lean=lean, lean_step=lean_step)
        results.append({k: v.clone() for k, v in net.state_dict().items()})
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])
    assert float(optimizer.state_dict()["state"][0]["step"]) == 5.0


def test_lean_step_skips_parameters_without_gradients_as_adam_does() -> None:
    net = two_layer_net()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01, fused=True)
    step = step_function(optimizer)
    unused = nn.Parameter(torch.ones(4))
    optimizer.add_param_group({"params": [unused]})
    for _ in range(3):
        optimizer.zero_grad()
        net(torch.randn(2, 6)).sum().backward()
        step()
    assert torch.equal(unused.detach(), torch.ones(4))
    assert unused not in optimizer.state
    assert float(optimizer.state[net[0].weight]["step"]) == 3.0


def test_step_hooks_still_run() -> None:
    net = two_layer_net()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01, fused=True)
    calls = []
    optimizer.register_step_post_hook(lambda *_: calls.append(1))
    train(net, optimizer, steps=4, lean=True)
    assert len(calls) == 4


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1),
        lambda ps: torch.optim.Adam(ps, fused=False),
        lambda ps: torch.optim.Adam(ps, fused=True, amsgrad=True),
        lambda ps: torch.optim.RMSprop(ps),
    ],
    ids=["sgd", "adam-foreach", "adam-amsgrad", "rmsprop"],
)
def test_other_optimizers_step_with_their_own_step(make) -> None:  # noqa: ANN001
    optimizer = make(two_layer_net().parameters())
    assert step_function(optimizer) == optimizer.step
