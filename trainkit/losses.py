"""Losses on (logits [N, C], integer labels [N]) -> a scalar mean over the batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from trainkit.errors import UserError


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


def build_loss(cfg: DictConfig) -> nn.Module:
    if cfg.name == "cross_entropy":
        return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    if cfg.name == "mse":
        return MSELoss(cfg.outputs)
    if cfg.name == "hinge":
        # Multi-class (Weston-Watkins) hinge: sum over wrong classes j of
        # max(0, margin - x_y + x_j)^p, divided by the number of classes.
        return nn.MultiMarginLoss(p=cfg.p, margin=cfg.margin)
    raise UserError(f"loss.name={cfg.name}: choose cross_entropy, mse or hinge")
