"""The models, each a plain nn.Module built from its config group (`conf/model/*.yaml`).

Runtime facts (input shape, number of classes) are passed at the call site:
`instantiate(cfg.model, input_shape=data.input_shape, num_classes=data.num_classes)`.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from trainkit.errors import UserError, first_line

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
    """flatten -> [input dropout] -> per hidden width: Linear -> [batch norm] -> activation ->
    [dropout] -> Linear(num_classes). Layers are named fc1, bn1, act1, drop1, ..., head."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        hidden: list[int],
        activation: str = "relu",
        batch_norm: bool = False,
        dropout: float = 0.0,
        input_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: dict[str, nn.Module] = {"flatten": nn.Flatten()}
        if input_dropout > 0:
            layers["input_drop"] = nn.Dropout(input_dropout)
        width = math.prod(input_shape)
        for i, h in enumerate(hidden, start=1):
            # Bias is redundant right before batch norm, which re-centres each unit.
            layers[f"fc{i}"] = nn.Linear(width, h, bias=not batch_norm)
            if batch_norm:
                layers[f"bn{i}"] = nn.BatchNorm1d(h)
            layers[f"act{i}"] = _activation(activation)
            if dropout > 0:
                layers[f"drop{i}"] = nn.Dropout(dropout)
            width = h
        layers["head"] = nn.Linear(width, num_classes)
        self.net = nn.Sequential(OrderedDict(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# Non-decreasing activations commute with max-pooling: act(max(a, b)) = max(act(a), act(b)).
COMMUTE_WITH_MAX = {"relu", "leaky_relu", "tanh", "sigmoid"}  # not gelu: it dips below zero


class CNN(nn.Module):
    """[input dropout] -> per entry of `channels`: conv -> [batch norm] -> activation -> 2x2
    max-pool -> [dropout]; then flatten -> Linear(hidden) -> activation -> [dropout] -> head.
    With an activation that commutes with max-pooling, the pool runs first: the same function,
    with the activation (and its backward) on a quarter of the values (a faster step on CPU).

    `pool_first`: conv -> max-pool -> [batch norm] -> activation, a different model (batch
    norm's statistics are those of the pooled values) whose batch norm runs on a quarter of
    the values: a faster step on CPU."""

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
        input_dropout: float = 0.0,
        pool_first: bool = False,
    ) -> None:
        super().__init__()
        in_ch, height, width = input_shape
        layers: dict[str, nn.Module] = {}
        if input_dropout > 0:
            layers["input_drop"] = nn.Dropout(input_dropout)
        for i, out_ch in enumerate(channels, start=1):
            conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding="same", bias=not batch_norm)
            layers[f"conv{i}"] = conv
            if pool_first:
                layers[f"pool{i}"] = nn.MaxPool2d(2)
            if batch_norm:
                layers[f"bn{i}"] = nn.BatchNorm2d(out_ch)
            if pool_first:
                layers[f"act{i}"] = _activation(activation)
            elif activation in COMMUTE_WITH_MAX:  # the same function on 4x fewer values
                layers[f"pool{i}"] = nn.MaxPool2d(2)
                layers[f"act{i}"] = _activation(activation)
            else:
                layers[f"act{i}"] = _activation(activation)
                layers[f"pool{i}"] = nn.MaxPool2d(2)
            if dropout > 0:
                layers[f"drop{i}"] = nn.Dropout(dropout)
            in_ch, height, width = out_ch, height // 2, width // 2
        if height < 1 or width < 1:
            raise UserError(
                f"model.channels has {len(channels)} pooling stages, too many for "
                f"{input_shape[1]}x{input_shape[2]} images: use at most "
                f"{min(input_shape[1:]).bit_length() - 1}"
            )
        self.features = nn.Sequential(OrderedDict(layers))
        classifier: dict[str, nn.Module] = {
            "flatten": nn.Flatten(),
            "fc": nn.Linear(in_ch * height * width, hidden),
            "act": _activation(activation),
        }
        if dropout > 0:
            classifier["drop"] = nn.Dropout(dropout)
        classifier["head"] = nn.Linear(hidden, num_classes)
        self.classifier = nn.Sequential(OrderedDict(classifier))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> act -> conv3x3 -> BN, (+ shortcut when residual) -> act.

    The shortcut has no parameters ("option A" of He et al. 2016: subsample by the stride and
    zero-pad the new channels), so `residual: false` gives a plain twin with exactly the same
    layers and parameters: the only difference is the skip connection.
    """

    def __init__(
        self, in_ch: int, out_ch: int, stride: int, residual: bool, act: str, batch_norm: bool
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=not batch_norm)
        self.bn1 = nn.BatchNorm2d(out_ch) if batch_norm else nn.Identity()
        self.act1 = _activation(act)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=not batch_norm)
        self.bn2 = nn.BatchNorm2d(out_ch) if batch_norm else nn.Identity()
        self.act2 = _activation(act)
        self.residual, self.stride, self.extra_channels = residual, stride, out_ch - in_ch

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels > 0:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        if self.residual:
            out = out + self.shortcut(x)
        return self.act2(out)


class ResNet(nn.Module):
    """A small ResNet for 28x28/32x32 images (He et al. 2016, CIFAR variant): a 3x3 stem, one
    stage per width with `blocks` BasicBlocks each (stride 2 entering every stage after the
    first), global average pooling, and a linear head. widths [16, 32, 64] and blocks 3 is
    ResNet-20."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        widths: list[int],
        blocks: int = 2,
        residual: bool = True,
        activation: str = "relu",
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        stem = [nn.Conv2d(input_shape[0], widths[0], 3, 1, 1, bias=not batch_norm)]
        stem += [
            nn.BatchNorm2d(widths[0]) if batch_norm else nn.Identity(),
            _activation(activation),
        ]
        self.stem = nn.Sequential(*stem)
        stages, in_ch = [], widths[0]
        for i, width in enumerate(widths):
            stage = [
                BasicBlock(in_ch if b == 0 else width, width, 2 if i > 0 and b == 0 else 1,
                           residual, activation, batch_norm)
                for b in range(blocks)
            ]
            stages.append(nn.Sequential(*stage))
            in_ch = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.stages(self.stem(x))))


TORCHVISION_FAMILIES = ("resnet", "resnext", "wide_resnet")  # share conv1 / maxpool / fc


class TorchvisionNet(nn.Module):
    """A torchvision ResNet-family architecture (`arch`), its head sized for our classes.

    `pretrained` loads torchvision's ImageNet weights (downloaded once into $TORCH_HOME, so a
    machine without a network needs them there already). `small_input_stem` swaps the 7x7/2
    stem and its max-pool for a 3x3/1 conv, the usual change for 28-32 px images (that conv is
    then freshly initialized). Grey images get a stem conv with one input channel: with
    pretrained weights it is initialized with their sum over RGB.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        arch: str = "resnet18",
        pretrained: bool = False,
        small_input_stem: bool = True,
    ) -> None:
        super().__init__()
        import torchvision.models

        if not arch.startswith(TORCHVISION_FAMILIES):
            raise UserError(
                f"model.arch={arch}: use a torchvision ResNet-family model, e.g. resnet18, "
                "resnet50, resnext50_32x4d, wide_resnet50_2"
            )
        weights = torchvision.models.get_model_weights(arch).DEFAULT if pretrained else None
        try:
            net = torchvision.models.get_model(arch, weights=weights)
        except Exception as e:  # no network, no cached file
            raise UserError(
                f"model.pretrained=true needs torchvision's {arch} weights, which could not be "
                f"loaded ({first_line(e)}): put {weights.url.rsplit('/', 1)[-1]} in "
                f"{torch.hub.get_dir()}/checkpoints, or set model.pretrained=false"
            ) from None
        in_ch, old = input_shape[0], net.conv1
        if small_input_stem:
            net.conv1 = nn.Conv2d(in_ch, old.out_channels, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        elif in_ch != old.in_channels:
            net.conv1 = nn.Conv2d(in_ch, old.out_channels, 7, 2, 3, bias=False)
            if pretrained and in_ch == 1:
                with torch.no_grad():
                    net.conv1.weight.copy_(old.weight.sum(dim=1, keepdim=True))
        net.fc = nn.Linear(net.fc.in_features, num_classes)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


_activation = activation  # the constructors' `activation` argument shadows the function


def inference_copy(model: nn.Module) -> nn.Module:
    """`model` for evaluation, in eval mode. Where a batch norm directly follows a conv or linear
    layer in a Sequential, an eval copy with the norm folded into that layer: the same function
    with one layer fewer to run (faster evaluation), without the original's forward hooks.
    With nothing to fold, the model itself."""
    if not any(_foldable_pairs(m) for m in model.modules()):
        return model.eval()
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        module._forward_hooks.clear()
        for first, second in _foldable_pairs(module):
            layer, norm = module._modules[first], module._modules[second]
            fuse = fuse_conv_bn_eval if isinstance(layer, nn.Conv2d) else fuse_linear_bn_eval
            module._modules[first] = fuse(layer, norm)
            module._modules[second] = nn.Identity()
    return folded


def _foldable_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """Names of (conv, BatchNorm2d) and (linear, BatchNorm1d) neighbours in a Sequential."""
    if not isinstance(module, nn.Sequential):
        return []
    children = list(module._modules.items())
    return [
        (first, second)
        for (first, layer), (second, norm) in zip(children, children[1:], strict=False)
        if getattr(norm, "track_running_stats", False)
        and (
            (isinstance(layer, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d))
            or (isinstance(layer, nn.Linear) and isinstance(norm, nn.BatchNorm1d))
        )
    ]
