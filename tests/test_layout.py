"""Column-major wide Linear weights (layout.py): the same model and training, other strides."""

from __future__ import annotations

import copy
import io
from functools import partial
from pathlib import Path

import torch
from torch import nn

from trainkit import layout
from trainkit.experiment import build

from .conftest import compose_config, small_overrides
from .test_optim_step import train as train_net


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128),
                         nn.ReLU(), nn.Linear(128, 10))  # fmt: skip


train = partial(train_net, features=784, classes=10)  # the MLP's input and classes


def test_only_wide_layers_are_transposed_and_their_values_stay() -> None:
    net = mlp()
    before = copy.deepcopy(net.state_dict())
    parameters = list(net.parameters())
    assert layout.transpose_wide_linears(net) == ["1"]  # 784->256; not 256->128, not the head
    assert net[1].weight.stride() == (1, 256) and net[1].weight.shape == (256, 784)
    assert net[3].weight.is_contiguous() and net[5].weight.is_contiguous()
    assert all(a is b for a, b in zip(parameters, net.parameters(), strict=True))  # same objects
    for name, value in net.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_training_column_major_matches_row_major_and_the_lean_step_is_exact() -> None:
    """The lean step updates the column-major weights through their row-major transposes: the
    same result as optimizer.step() bit for bit, and as a row-major model up to rounding."""
    results = {}
    for name, transposed, lean in [("rows", False, False), ("step", True, False),
                                   ("lean", True, True)]:  # fmt: skip
        net = mlp()
        if transposed:
            layout.transpose_wide_linears(net)
        optimizer = torch.optim.Adam(net.parameters(), lr=0.01, fused=True)
        train(net, optimizer, steps=6, lean=lean)
        assert optimizer.state[net[1].weight]["exp_avg"].stride() == net[1].weight.stride()
        results[name] = net.state_dict()
    moved = (results["rows"]["1.weight"] - mlp()[1].weight.detach()).abs().max()
    assert moved > 0.03  # 6 steps of lr 0.01 moved the weights
    for key, value in results["rows"].items():
        assert torch.equal(results["lean"][key], results["step"][key]), key
        # Another summation order rounds each gradient differently, and Adam divides by the
        # gradient's own scale, so a near-zero gradient's rounding can move a weight by up to
        # ~lr * 1e-3: compare to the distance the weights moved, not to a fixed 1e-5 (one
        # element of 200,704 was 1.95e-5 off on the Intel AMX CPU).
        torch.testing.assert_close(results["lean"][key], value, atol=float(moved) * 1e-3,
                                   rtol=1e-4)


def test_optimizer_state_saved_row_major_is_given_the_weights_layout() -> None:
    """torch's fused CPU Adam reads parameter, gradient and state as flat arrays: a state
    loaded in another layout than its weight (a checkpoint from another device) must be
    matched to it, or the update mixes up elements."""
    rows = mlp()
    optimizer = torch.optim.Adam(rows.parameters(), lr=0.01, fused=True)
    train(rows, optimizer, steps=3, lean=False)
    buffer = io.BytesIO()
    torch.save({"model": rows.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)

    columns = mlp()
    layout.transpose_wide_linears(columns)
    columns.load_state_dict(saved["model"])
    resumed = torch.optim.Adam(columns.parameters(), lr=0.01, fused=True)
    resumed.load_state_dict(saved["optimizer"])
    assert resumed.state[columns[1].weight]["exp_avg"].is_contiguous()  # as saved: row-major
    layout.match_state_to_params(resumed)
    for key in ("exp_avg", "exp_avg_sq"):
        state = resumed.state[columns[1].weight][key]
        assert state.stride() == (1, 256)
        assert torch.equal(state, optimizer.state[rows[1].weight][key])  # the same values

    train(rows, optimizer, steps=2, lean=False)
    train(columns, resumed, steps=2, lean=True)
    for name, value in rows.state_dict().items():
        torch.testing.assert_close(columns.state_dict()[name], value, atol=1e-5, rtol=1e-4)


def test_runs_store_wide_layers_column_major_unless_told_not_to(fmnist_slice: Path) -> None:
    base = small_overrides(fmnist_slice)  # MLP 784 -> 64 -> 10
    _, default = build(compose_config(base))
    _, plain = build(compose_config([*base, "trainer.transposed_linear=false"]))
    assert default.model.net.fc1.weight.stride() == (1, 64)
    assert default.model.net.head.weight.is_contiguous()
    assert plain.model.net.fc1.weight.is_contiguous()
