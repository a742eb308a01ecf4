"""Each initializer against its formula, measured on a large layer; the bias and batch-norm rule."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from trainkit.init import initialize
from trainkit.models import MLP

from .conftest import compose_config

FAN_IN, FAN_OUT = 800, 400  # a large layer: 320,000 weights, so std estimates are tight


def expected_std(name: str) -> float:
    """The formulas, written out here independently of trainkit.init."""
    return {
        "uniform": 0.05 / math.sqrt(3),  # U[-a, a]: a / sqrt(3), conf scale 0.05
        "normal": 0.01,  # conf scale
        "xavier_uniform": math.sqrt(2 / (FAN_IN + FAN_OUT)),
        "xavier_normal": math.sqrt(2 / (FAN_IN + FAN_OUT)),
        "he_uniform": math.sqrt(2) / math.sqrt(FAN_IN),
        "he_normal": math.sqrt(2) / math.sqrt(FAN_IN),
        "uniform_fan_in": 1 / math.sqrt(3 * FAN_IN),
        "lecun_normal": 1 / math.sqrt(FAN_IN),
        "orthogonal": 1 / math.sqrt(max(FAN_IN, FAN_OUT)),
        "default": 1 / math.sqrt(3 * FAN_IN),  # PyTorch's U[-1/sqrt(fan_in), 1/sqrt(fan_in)]
    }[name]


@pytest.mark.parametrize(
    "name",
    ["uniform", "normal", "xavier_uniform", "xavier_normal", "he_uniform", "he_normal",
     "uniform_fan_in", "lecun_normal", "orthogonal", "default"],
)  # fmt: skip
def test_empirical_std_matches_the_formula_within_5_percent(name: str) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(FAN_IN, FAN_OUT)
    initialize(layer, compose_config([f"init={name}"]).init)
    std = layer.weight.std().item()
    assert std == pytest.approx(expected_std(name), rel=0.05)
    assert abs(layer.weight.mean().item()) < 0.05 * expected_std(name)
    if name != "default":
        assert torch.count_nonzero(layer.bias) == 0  # the bias rule


def test_he_on_conv_uses_in_channels_times_kernel_area_as_fan_in() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 128, 3)
    initialize(conv, compose_config(["init=he_normal"]).init)
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.05)


def test_orthogonal_rows_are_orthonormal() -> None:
    layer = nn.Linear(FAN_IN, FAN_OUT)
    initialize(layer, compose_config(["init=orthogonal"]).init)
    gram = layer.weight @ layer.weight.T
    torch.testing.assert_close(gram, torch.eye(FAN_OUT), atol=1e-4, rtol=0)


def test_zeros_and_constant_make_every_hidden_unit_identical() -> None:
    for override, value in [("init=zeros", 0.0), ("init=constant", 0.01)]:
        model = MLP((1, 28, 28), 10, hidden=[32, 16])
        initialize(model, compose_config([override]).init)
        first = model.net[1]  # after Flatten
        assert torch.all(first.weight == value) and torch.all(first.bias == 0)
        # Identical units: same activations for any input, and the same gradient.
        x = torch.randn(8, 1, 28, 28)
        model(x).logsumexp(dim=1).sum().backward()
        hidden = model.net[:3](x)  # flatten, linear, relu
        assert torch.allclose(hidden, hidden[:, :1].expand_as(hidden))
        grad = first.weight.grad
        assert torch.allclose(grad, grad[:1].expand_as(grad))


def test_batch_norm_keeps_scale_one_and_shift_zero() -> None:
    bn_model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    with torch.no_grad():
        bn_model[1].weight.fill_(3.0)
    initialize(bn_model, compose_config(["init=he_normal"]).init)
    assert torch.all(bn_model[1].weight == 3.0)  # untouched: the init applies to Linear/Conv only
    fresh = nn.BatchNorm2d(4)
    initialize(fresh, compose_config(["init=xavier_uniform"]).init)
    assert torch.all(fresh.weight == 1) and torch.all(fresh.bias == 0)


def test_default_leaves_pytorch_initialization_alone() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(10, 5)
    before = layer.weight.clone(), layer.bias.clone()
    initialize(layer, compose_config(["init=default"]).init)
    assert torch.equal(layer.weight, before[0]) and torch.equal(layer.bias, before[1])


@pytest.mark.parametrize("name", ["he_normal", "constant", "uniform", "default"])
def test_a_config_saved_before_init_targets_initializes_alike(name: str) -> None:
    """Checkpoints written before initializers had a _target_ name them: {name: he_normal}."""
    new = compose_config([f"init={name}"]).init
    old = {k: v for k, v in OmegaConf.to_container(new).items() if not k.startswith("_")}
    layers = []
    for cfg in (new, OmegaConf.create({"name": name, **old})):
        torch.manual_seed(0)
        layers.append(nn.Linear(30, 20))
        initialize(layers[-1], cfg)
    assert torch.equal(layers[0].weight, layers[1].weight)


def test_a_scheme_of_your_own_is_one_yaml(tmp_path) -> None:
    (tmp_path / "init").mkdir()
    (tmp_path / "init" / "small_trunc.yaml").write_text(
        "_target_: torch.nn.init.trunc_normal_\n_partial_: true\nstd: 0.02\na: -0.04\nb: 0.04\n"
    )
    cfg = compose_config([f"hydra.searchpath=[file://{tmp_path}]", "init=small_trunc"])
    layer = nn.Linear(FAN_IN, FAN_OUT)
    initialize(layer, cfg.init)
    assert layer.weight.abs().max().item() <= 0.04
    assert layer.weight.std().item() == pytest.approx(0.0176, rel=0.05)  # N(0, 0.02) cut at 2 std
    assert torch.equal(layer.bias, torch.zeros(FAN_OUT))
