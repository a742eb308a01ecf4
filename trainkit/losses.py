"""Losses on (logits [N, C], integer labels [N]) -> a scalar mean over the batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from trainkit.config import from_legacy_name
from trainkit.errors import UserError, instantiation_reason


class MSELoss(nn.Module):
    """Squared error between the softmax probabilities (or the raw logits, with
    `outputs: logits`) and the one-hot target, averaged over classes and samples."""

    def __init__(self, outputs: str = "probabilities") -> None:
        super().__init__()
        if outputs not in ("probabilities", "logits"):
            raise UserError(f"loss.outputs={outputs}: choose probabilities or logits")
        self.outputs = outputs

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        outputs = logits.softmax(dim=1) if self.outputs == "probabilities" else logits
        target = F.one_hot(labels, num_classes=logits.shape[1]).to(outputs.dtype)
        return F.mse_loss(outputs, target)


# Configs saved before losses were built by _target_ name them: what each name was.
LEGACY = {
    "cross_entropy": "torch.nn.CrossEntropyLoss",
    "mse": "trainkit.losses.MSELoss",
    "hinge": "torch.nn.MultiMarginLoss",  # Weston-Watkins: sum over wrong classes / classes
}


def legacy(cfg: DictConfig) -> DictConfig:
    """A loss config from before `_target_` (a checkpoint's): {name: hinge, ...}."""
    return from_legacy_name(cfg, "loss", LEGACY)


def build_loss(cfg: DictConfig) -> nn.Module:
    """The loss its `_target_` names (conf/loss/*.yaml, or a YAML of yours), called as
    loss(logits [N, C], labels [N]) -> the batch mean."""
    cfg = legacy(cfg)
    try:
        loss = instantiate(cfg)
    except InstantiationException as e:
        if isinstance(e.__cause__, UserError):
            raise e.__cause__ from None
        reason = instantiation_reason(e)
        raise UserError(f"loss._target_={cfg.get('_target_')}: {reason}") from None
    if not isinstance(loss, nn.Module):
        raise UserError(
            f"loss._target_={cfg._target_} gave a {type(loss).__name__}, not a torch nn.Module "
            "loss: name a module class called as loss(logits, labels)"
        )
    return loss
