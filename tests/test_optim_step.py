"""The lean Adam step (optim_step.py) leaves exactly what optimizer.step() leaves."""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from trainkit import layout, optim_step
from trainkit.experiment import param_groups
from trainkit.optim_step import LeanAdamStep, step_function

from .conftest import compose_config, small_overrides


@pytest.fixture
def lean_updates(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per param group the lean path updated: a fallback to optimizer.step() adds none."""
    calls: list[int] = []
    real = optim_step.update
    assert optim_step.lean_step_works()  # checked (through `real`) before counting starts

    def counted(group: dict, params: list, states: list) -> None:
        calls.append(len(params))
        real(group, params, states)

    monkeypatch.setattr(optim_step, "update", counted)
    return calls


def two_layer_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def train(
    net: nn.Module, optimizer: torch.optim.Optimizer, steps: int, lean: bool, lean_step=None,
    features: int = 6, classes: int = 3,
) -> None:  # fmt: skip
    """`steps` steps on random batches of 8 (the same ones every call) under a cosine schedule,
    through optimizer.step() or, `lean`, the lean step."""
    # Half a cosine: the lr changes every step and never reaches 0, even over two calls
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=2 * steps)
    step = (lean_step or step_function(optimizer)) if lean else optimizer.step  # after the
    # schedule wrapped optimizer.step
    data = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(8, features, generator=data)
        y = torch.randint(0, classes, (8,), generator=data)
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        step()
        schedule.step()


@pytest.mark.parametrize(
    ("optimizer_class", "weight_decay", "maximize"),
    [(torch.optim.Adam, 0.0, False), (torch.optim.Adam, 0.01, False),
     (torch.optim.AdamW, 0.05, False), (torch.optim.Adam, 0.0, True)],
)  # fmt: skip
def test_lean_step_gives_the_same_weights_and_state_as_optimizer_step(
    optimizer_class: type, weight_decay: float, maximize: bool, lean_updates: list[int]
) -> None:
    results = []
    for lean in (False, True):
        net = two_layer_net()
        groups = param_groups(net, weight_decay)  # two groups with weight decay, as trainkit
        optimizer = optimizer_class(groups, lr=0.01, weight_decay=weight_decay, fused=True,
                                    maximize=maximize)  # fmt: skip
        assert isinstance(step_function(optimizer), LeanAdamStep)
        train(net, optimizer, steps=7, lean=lean)
        results.append((net.state_dict(), optimizer.state_dict()))
    assert len(lean_updates) == 6 * len(groups)  # all steps but the first took the lean path
    (weights, state), (lean_weights, lean_state) = results
    assert weights["0.weight"].ne(two_layer_net().state_dict()["0.weight"]).all()  # it trained
    for name, value in weights.items():
        assert torch.equal(value, lean_weights[name]), name
    for index, saved in state["state"].items():
        assert float(saved["step"]) == 7.0
        for key, value in saved.items():
            assert torch.equal(value, lean_state["state"][index][key]), (index, key)
    assert state["param_groups"] == lean_state["param_groups"]


def test_lean_step_reads_the_state_a_resumed_optimizer_loaded(lean_updates: list[int]) -> None:
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
    assert not torch.equal(results[1]["0.weight"], saved[0]["0.weight"])  # it trained on
    assert float(optimizer.state_dict()["state"][0]["step"]) == 5.0
    assert len(lean_updates) == 2 + 1  # 3 steps then 2, the first of each by optimizer.step


def test_a_group_no_longer_fused_steps_through_optimizer_step(lean_updates: list[int]) -> None:
    net = two_layer_net()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01, fused=True)
    step = step_function(optimizer)
    train(net, optimizer, steps=2, lean=True, lean_step=step)
    assert len(lean_updates) == 1
    saved = optimizer.state_dict()
    saved["param_groups"][0]["fused"] = False  # e.g. a checkpoint of another setting
    optimizer.load_state_dict(saved)
    before = net[0].weight.detach().clone()
    train(net, optimizer, steps=2, lean=True, lean_step=step)
    assert len(lean_updates) == 1  # both steps by optimizer.step, which still trained
    assert not torch.equal(before, net[0].weight)
    assert float(optimizer.state[net[0].weight]["step"]) == 4.0


def test_training_steps_take_the_lean_path(fmnist_slice: Path, lean_updates: list[int]) -> None:
    from trainkit.experiment import build
    from trainkit.loop import fit

    cfg = compose_config([*small_overrides(fmnist_slice), "epochs=2", "batch_size=100"])
    dataset, training = build(cfg)
    assert training.optimizer.param_groups[0]["fused"]  # trainkit's default: fused Adam
    fit(training, dataset, [])
    steps = len(dataset.train) // 100  # per epoch; the fit's first through optimizer.step
    assert len(lean_updates) == 2 * steps - 1


def test_lean_step_skips_parameters_without_gradients_as_adam_does(
    lean_updates: list[int],
) -> None:
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
    assert lean_updates == [4, 4]  # the lean path ran, on the net's 4 tensors only
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
    """Through optimizer.step as it is at each call: wrapped by a scheduler made afterwards,
    which then sees the optimizer step before it (no "lr_scheduler.step() before
    optimizer.step()" warning)."""
    net = two_layer_net()
    optimizer = make(net.parameters())
    step = step_function(optimizer)
    assert not isinstance(step, LeanAdamStep)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5**s)
    before = copy.deepcopy(net.state_dict())
    net(torch.randn(2, 6)).sum().backward()
    step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        schedule.step()
    assert not torch.equal(net.state_dict()["0.weight"], before["0.weight"])


def test_the_lean_step_goes_through_a_scheduler_made_after_it() -> None:
    net = two_layer_net()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01, fused=True)
    step = step_function(optimizer)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5**s)
    for _ in range(2):
        optimizer.zero_grad()
        net(torch.randn(2, 6)).sum().backward()
        step()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            schedule.step()
    assert optimizer.param_groups[0]["lr"] == 0.01 * 0.25


def conv_net(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).to(
        dtype
    )


@pytest.mark.parametrize("case", ["channels_last", "two_dtypes"])
def test_lean_step_on_permuted_layouts_and_mixed_dtypes_matches_optimizer_step(
    case: str, lean_updates: list[int]
) -> None:
    """Channels-last conv weights are updated through their row-major permutation; a group
    mixing dtypes is updated with one kernel call per dtype."""
    data = torch.Generator().manual_seed(2)
    batches = [(torch.randn(8, 2, 6, 6, generator=data), torch.randint(0, 3, (8,), generator=data))
               for _ in range(5)]  # fmt: skip
    results = []
    for lean in (False, True):
        net = conv_net()
        if case == "channels_last":
            net = net.to(memory_format=torch.channels_last)
            assert not net[0].weight.is_contiguous()
        else:
            net[3].double()  # the head's weight and bias in float64
        optimizer = torch.optim.Adam(net.parameters(), lr=0.01, fused=True)
        step = step_function(optimizer) if lean else optimizer.step
        for x, y in batches:
            optimizer.zero_grad()
            out = net[3](net[2](net[1](net[0](x))).to(net[3].weight.dtype))
            nn.functional.cross_entropy(out, y).backward()
            step()
        results.append(net.state_dict())
    assert len(lean_updates) == 4
    for name, value in results[0].items():
        assert torch.equal(value, results[1][name]), name
    assert not torch.equal(results[0]["0.weight"], conv_net().state_dict()["0.weight"])


def test_step_counts_advance_together_and_apart_as_gradients_come() -> None:
    """The step counts become views of one tensor, advanced by one add, yet each parameter's
    count is its own: the head, frozen for two steps, ends two steps behind, as with
    optimizer.step()."""
    counts = []
    for lean in (False, True):
        net = two_layer_net()
        optimizer = torch.optim.Adam(net.parameters(), lr=0.01, fused=True)
        step = step_function(optimizer) if lean else optimizer.step
        for i in range(8):
            net[2].requires_grad_(i not in (3, 4))
            optimizer.zero_grad()
            net(torch.randn(2, 6)).sum().backward()
            step()
        counts.append([float(optimizer.state[p]["step"]) for p in net.parameters()])
        storages = {s["step"].untyped_storage().data_ptr() for s in optimizer.state.values()}
        assert len(storages) == (1 if lean else 4)
    assert counts[0] == counts[1] == [8.0, 8.0, 6.0, 6.0]


def test_a_step_with_no_gradients_does_nothing_as_optimizer_step() -> None:
    net = two_layer_net()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01, fused=True)
    step = step_function(optimizer)
    train(net, optimizer, steps=2, lean=True, lean_step=step)
    before = copy.deepcopy(optimizer.state_dict())
    optimizer.zero_grad()
    step()  # no gradients at all
    for index, saved in before["state"].items():
        for key, value in saved.items():
            assert torch.equal(value, optimizer.state_dict()["state"][index][key]), (index, key)


def test_the_kernel_gets_every_tensor_row_major(monkeypatch: pytest.MonkeyPatch) -> None:
    """Column-major weights reach torch's fused kernel as their row-major transposes (it ran
    2x slower on the column-major tensors), and channels-last conv weights permuted."""
    seen: list[torch.Tensor] = []
    real = torch._fused_adam_

    def kernel(*lists, **kwargs) -> None:  # noqa: ANN002, ANN003
        seen.extend(t for tensors in lists[:4] for t in tensors)
        real(*lists, **kwargs)

    net = conv_net().to(memory_format=torch.channels_last)
    assert layout.transpose_wide_linears(net) == []  # 64 -> 3 is not wide: by hand
    net[3].weight.data = net[3].weight.data.t().contiguous().t()
    assert not net[0].weight.is_contiguous() and not net[3].weight.is_contiguous()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01, fused=True)
    step = step_function(optimizer)
    for i in range(3):
        if i == 1:  # the first step is optimizer.step()'s (LeanAdamStep)
            monkeypatch.setattr(torch, "_fused_adam_", kernel)
        optimizer.zero_grad()
        net(torch.randn(4, 2, 6, 6)).sum().backward()
        step()
    assert len(seen) == 2 * 4 * 4  # the two lean steps: 4 lists of 4 tensors each
    assert all(t.is_contiguous() for t in seen)


@pytest.fixture
def fresh_check() -> object:
    """lean_step_works is checked once per process: forget the answer around the test."""
    optim_step.lean_step_works.cache_clear()
    yield
    optim_step.lean_step_works.cache_clear()


def trained_weights(optimizer_class: type) -> dict:
    net = two_layer_net()
    optimizer = optimizer_class(param_groups(net, 0.01), lr=0.01, weight_decay=0.01, fused=True)
    train(net, optimizer, steps=5, lean=True)  # through step_function, as the loop steps
    return net.state_dict()


@pytest.mark.parametrize("optimizer_class", [torch.optim.Adam, torch.optim.AdamW])
@pytest.mark.parametrize("adamw", [False, True], ids=["adam-kernel", "adamw-kernel"])
def test_a_torch_without_the_private_kernels_falls_back_to_the_same_weights(
    optimizer_class: type, adamw: bool, fresh_check: None, monkeypatch: pytest.MonkeyPatch,
    lean_updates: list[int],
) -> None:  # fmt: skip
    fast = trained_weights(optimizer_class)
    assert len(lean_updates) == 4 * 2  # the fast path ran: 4 lean steps, 2 param groups
    monkeypatch.setitem(optim_step.FUSED_KERNELS, adamw, "_fused_adam_v2_")  # renamed
    optim_step.lean_step_works.cache_clear()
    assert not optim_step.lean_step_works()
    checked = len(lean_updates)  # the check's own lean steps
    net = two_layer_net()
    assert not isinstance(step_function(torch.optim.Adam(net.parameters(), fused=True)),
                          LeanAdamStep)  # fmt: skip
    fallback = trained_weights(optimizer_class)
    assert len(lean_updates) == checked  # no lean step in training
    for name, value in fast.items():
        assert torch.equal(value, fallback[name]), name


def test_a_lean_step_that_differs_from_optimizer_step_is_not_used(
    fresh_check: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A torch whose kernel takes other arguments or means them differently: off by one ulp."""
    real = optim_step.update

    def off(group: dict, params: list, states: list) -> None:
        real(group, params, states)
        params[0].data = torch.nextafter(params[0].data, torch.full_like(params[0], math.inf))

    monkeypatch.setattr(optim_step, "update", off)
    assert not optim_step.lean_step_works()
    monkeypatch.setattr(optim_step, "update", real)
    optim_step.lean_step_works.cache_clear()
    assert optim_step.lean_step_works()


def test_a_group_without_the_decoupled_weight_decay_key_steps_through_optimizer_step() -> None:
    """torch before 2.6 says AdamW by class, not by this key: the lean step cannot tell which
    kernel to call, so it leaves such a group to optimizer.step()."""
    optimizer = torch.optim.AdamW(two_layer_net().parameters(), fused=True)
    del optimizer.param_groups[0]["decoupled_weight_decay"]
    assert not isinstance(step_function(optimizer), LeanAdamStep)
