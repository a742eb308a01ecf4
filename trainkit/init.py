"""Weight initializers: `init=<scheme>` re-initializes every Linear and Conv weight of a model.

The rule for the other parameters, for every scheme but `default`:
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
from omegaconf import DictConfig
from torch import nn

from trainkit.errors import UserError


def fan_in(weight: torch.Tensor) -> int:
    return weight[0].numel()


def _uniform_fan_in(w: torch.Tensor, cfg: DictConfig) -> torch.Tensor:
    bound = 1.0 / math.sqrt(fan_in(w))
    return nn.init.uniform_(w, -bound, bound)


def _lecun_normal(w: torch.Tensor, cfg: DictConfig) -> torch.Tensor:
    return nn.init.normal_(w, 0.0, 1.0 / math.sqrt(fan_in(w)))


SCHEMES: dict[str, Callable[[torch.Tensor, DictConfig], torch.Tensor] | None] = {
    "default": None,
    "zeros": lambda w, cfg: nn.init.zeros_(w),
    "constant": lambda w, cfg: nn.init.constant_(w, cfg.value),
    "uniform": lambda w, cfg: nn.init.uniform_(w, -cfg.scale, cfg.scale),
    "normal": lambda w, cfg: nn.init.normal_(w, 0.0, cfg.scale),
    "xavier_uniform": lambda w, cfg: nn.init.xavier_uniform_(w, gain=cfg.gain),
    "xavier_normal": lambda w, cfg: nn.init.xavier_normal_(w, gain=cfg.gain),
    "he_uniform": lambda w, cfg: nn.init.kaiming_uniform_(
        w, mode=cfg.mode, nonlinearity=cfg.nonlinearity
    ),
    "he_normal": lambda w, cfg: nn.init.kaiming_normal_(
        w, mode=cfg.mode, nonlinearity=cfg.nonlinearity
    ),
    "uniform_fan_in": _uniform_fan_in,
    "lecun_normal": _lecun_normal,
    "orthogonal": lambda w, cfg: nn.init.orthogonal_(w, gain=cfg.gain),
}

LAYERS_WITH_WEIGHTS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@torch.no_grad()
def initialize(model: nn.Module, cfg: DictConfig) -> None:
    """Apply the scheme `cfg.name` to every Linear/Conv weight of `model`; zero their biases."""
    if cfg.name not in SCHEMES:
        raise UserError(f"init.name={cfg.name}: choose one of {', '.join(SCHEMES)}")
    scheme = SCHEMES[cfg.name]
    if scheme is None:
        return
    for module in model.modules():
        if isinstance(module, LAYERS_WITH_WEIGHTS):
            scheme(module.weight, cfg)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
