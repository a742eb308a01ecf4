"""Weight initializers: `init=<scheme>` re-initializes every Linear and Conv weight of a model.

Each scheme is built like every other component: its `_target_` names a function that fills
a weight tensor in place (torch.nn.init's own, or trainkit's below where torch has none), with
`_partial_: true`: the call site gives it each weight. A scheme of yours is one YAML:

    # conf/init/my_scheme.yaml
    _target_: torch.nn.init.trunc_normal_
    _partial_: true
    std: 0.02

The rule for the other parameters, for every scheme but `default` (no `_target_`):
- biases of Linear and Conv layers are set to 0 (a bias needs no symmetry breaking);
- batch-norm scale and shift stay at PyTorch's 1 and 0, so each normalized unit starts as the
  identity.
`default` keeps PyTorch's own initialization: for Linear and Conv, weights and biases from
U[-1/sqrt(fan_in), 1/sqrt(fan_in)] (kaiming_uniform_ with a=sqrt(5)).
fan_in is inputs per output unit: in_features for Linear, in_channels * kernel area for Conv.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from trainkit.config import from_legacy_name
from trainkit.errors import UserError, first_line, instantiation_reason


def fan_in(weight: torch.Tensor) -> int:
    return weight[0].numel()


def uniform(w: torch.Tensor, scale: float) -> torch.Tensor:
    """U[-scale, scale], the same range for every layer."""
    return nn.init.uniform_(w, -scale, scale)


def normal(w: torch.Tensor, scale: float) -> torch.Tensor:
    """N(0, scale^2), the same for every layer."""
    return nn.init.normal_(w, 0.0, scale)


def constant(w: torch.Tensor, value: float) -> torch.Tensor:
    return nn.init.constant_(w, value)


def uniform_fan_in(w: torch.Tensor) -> torch.Tensor:
    """U[-1/sqrt(fan_in), 1/sqrt(fan_in)]."""
    bound = 1.0 / math.sqrt(fan_in(w))
    return nn.init.uniform_(w, -bound, bound)


def lecun_normal(w: torch.Tensor) -> torch.Tensor:
    """N(0, 1/fan_in)."""
    return nn.init.normal_(w, 0.0, 1.0 / math.sqrt(fan_in(w)))


# Configs saved before initializers were built by _target_ name them: what each name was.
LEGACY = {
    "zeros": "torch.nn.init.zeros_",
    "constant": "trainkit.init.constant",
    "uniform": "trainkit.init.uniform",
    "normal": "trainkit.init.normal",
    "xavier_uniform": "torch.nn.init.xavier_uniform_",
    "xavier_normal": "torch.nn.init.xavier_normal_",
    "he_uniform": "torch.nn.init.kaiming_uniform_",
    "he_normal": "torch.nn.init.kaiming_normal_",
    "uniform_fan_in": "trainkit.init.uniform_fan_in",
    "lecun_normal": "trainkit.init.lecun_normal",
    "orthogonal": "torch.nn.init.orthogonal_",
}

LAYERS_WITH_WEIGHTS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def legacy(cfg: DictConfig) -> DictConfig:
    """An init config from before `_target_` (a checkpoint's): {name: he_normal, ...}."""
    return from_legacy_name(cfg, "init", LEGACY, {"_partial_": True})


def build_fill(cfg: DictConfig) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The function that fills one weight tensor; None for PyTorch's own (init=default)."""
    cfg = legacy(cfg)
    if not cfg.get("_target_"):
        return None
    try:
        fill = instantiate(cfg, _partial_=True)
    except InstantiationException as e:
        raise UserError(f"init._target_={cfg._target_}: {instantiation_reason(e)}") from None
    if not callable(fill):
        raise UserError(f"init._target_={cfg._target_} is not a function that fills a tensor")
    return fill


@torch.no_grad()
def initialize(model: nn.Module, cfg: DictConfig) -> None:
    """Fill every Linear/Conv weight of `model` as `cfg` says; zero their biases."""
    fill = build_fill(cfg)
    if fill is None:
        return
    for module in model.modules():
        if isinstance(module, LAYERS_WITH_WEIGHTS):
            try:
                fill(module.weight)
            except (TypeError, ValueError, RuntimeError) as e:
                raise UserError(f"init._target_={legacy(cfg)._target_}: {first_line(e)}") from None
            if module.bias is not None:
                nn.init.zeros_(module.bias)
