"""Each loss equals its value computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from trainkit.losses import build_loss

from .conftest import compose_config

LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]])
LABELS = torch.tensor([0, 1])


def loss_of(*overrides: str) -> float:
    return build_loss(compose_config(list(overrides)).loss)(LOGITS, LABELS).item()


def test_cross_entropy_is_minus_log_softmax_of_the_true_class() -> None:
    row0 = -2.0 + math.log(math.exp(2.0) + math.exp(0.5) + math.exp(-1.0))
    row1 = -0.0 + math.log(1 + 1 + math.exp(3.0))
    assert loss_of("loss=cross_entropy") == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_label_smoothing_mixes_in_the_uniform_target() -> None:
    eps, c = 0.1, 3
    total = 0.0
    for logits, y in zip(LOGITS.tolist(), LABELS.tolist(), strict=True):
        log_z = math.log(sum(math.exp(v) for v in logits))
        log_p = [v - log_z for v in logits]
        target = [(1 - eps) * (j == y) + eps / c for j in range(c)]
        total += -sum(t * lp for t, lp in zip(target, log_p, strict=True))
    value = loss_of("loss=cross_entropy", "loss.label_smoothing=0.1")
    assert value == pytest.approx(total / 2, rel=1e-6)


def test_mse_compares_softmax_probabilities_with_one_hot() -> None:
    total = 0.0
    for logits, y in zip(LOGITS.tolist(), LABELS.tolist(), strict=True):
        z = sum(math.exp(v) for v in logits)
        total += sum((math.exp(v) / z - (j == y)) ** 2 for j, v in enumerate(logits))
    assert loss_of("loss=mse") == pytest.approx(total / 6, rel=1e-6)  # mean over 2 x 3


def test_mse_on_logits() -> None:
    expected = ((2 - 1) ** 2 + 0.5**2 + 1**2 + 0**2 + (0 - 1) ** 2 + 3**2) / 6
    assert loss_of("loss=mse", "loss.outputs=logits") == pytest.approx(expected, rel=1e-6)


def test_hinge_sums_margin_violations_of_wrong_classes_over_the_class_count() -> None:
    # Row 0 (y=0, x_y=2): max(0, 1-2+0.5)=0, max(0, 1-2-1)=0.  -> 0
    # Row 1 (y=1, x_y=0): max(0, 1-0+0)=1, max(0, 1-0+3)=4.   -> 5
    assert loss_of("loss=hinge") == pytest.approx((0 / 3 + 5 / 3) / 2, rel=1e-6)
    # Squared hinge: row 1 -> 1 + 16 = 17.
    assert loss_of("loss=hinge", "loss.p=2") == pytest.approx((17 / 3) / 2, rel=1e-6)


@pytest.mark.parametrize("name", ["cross_entropy", "mse", "hinge"])
def test_a_config_saved_before_loss_targets_builds_the_same_loss(name: str) -> None:
    new = compose_config([f"loss={name}"]).loss
    old = {k: v for k, v in OmegaConf.to_container(new).items() if not k.startswith("_")}
    legacy = build_loss(OmegaConf.create({"name": name, **old}))
    assert legacy(LOGITS, LABELS).item() == build_loss(new)(LOGITS, LABELS).item()
