"""The models, each a plain nn.Module built from its config group (`conf/model/*.yaml`).

Runtime facts (input shape, number of classes) are passed at the call site:
`instantiate(cfg.model, input_shape=data.input_shape, num_classes=data.num_classes)`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from trainkit.errors import UserError

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise UserError(f"model.activation={name}: choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class MLP(nn.Module):
    """flatten -> [Linear -> activation -> dropout] per hidden width -> Linear(num_classes)."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        hidden: list[int],
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), _activation(activation)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """Per entry of `channels`: conv -> [batch norm] -> activation -> max-pool; 2-layer head."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        channels: list[int],
        kernel_size: int = 3,
        hidden: int = 128,
        activation: str = "relu",
        batch_norm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        in_ch = input_shape[0]
        layers: list[nn.Module] = []
        for out_ch in channels:
            # Bias is redundant right before batch norm, which re-centres each channel.
            conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding="same", bias=not batch_norm)
            layers.append(conv)
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_ch))
            layers += [_activation(activation), nn.MaxPool2d(2)]
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        height, width = input_shape[1] >> len(channels), input_shape[2] >> len(channels)
        if height < 1 or width < 1:
            raise UserError(
                f"model.channels has {len(channels)} pooling stages, too many for "
                f"{input_shape[1]}x{input_shape[2]} images: use at most "
                f"{min(input_shape[1:]).bit_length() - 1}"
            )
        head: list[nn.Module] = [
            nn.Flatten(),
            nn.Linear(in_ch * height * width, hidden),
            _activation(activation),
        ]
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(hidden, num_classes))
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


_activation = activation  # the constructors' `activation` argument shadows the function
