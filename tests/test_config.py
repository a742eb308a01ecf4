"""The config tree: every group option composes, aliases resolve, validation catches ranges."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from trainkit.config import CONF_DIR, expand_aliases, shorten_aliases, validate

from .conftest import GROUP_OPTIONS, compose_config


def test_the_tree_has_one_group_per_concern() -> None:
    groups = {g for g, _ in GROUP_OPTIONS}
    assert {"data", "model", "optimizer", "scheduler", "trainer"} <= groups
    options = {(g, o) for g, o in GROUP_OPTIONS}
    for needed in [
        ("optimizer", "sgd"),
        ("optimizer", "momentum"),
        ("optimizer", "adam"),
        ("scheduler", "none"),
        ("scheduler", "step"),
        ("scheduler", "cosine"),
    ]:
        assert needed in options


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS)
def test_every_group_option_composes_and_validates(group: str, option: str) -> None:
    cfg = compose_config([f"{group}={option}"])
    assert validate(cfg) == []
    assert OmegaConf.is_missing(cfg, "model") is False


def test_lr_alias_overrides_the_optimizer_and_each_optimizer_has_its_own_default() -> None:
    assert compose_config(["optimizer=adam", "lr=1e-3"]).optimizer.lr == pytest.approx(1e-3)
    sgd = compose_config(["optimizer=sgd"])
    assert sgd.optimizer.lr == pytest.approx(0.1)
    assert compose_config(["optimizer=momentum"]).optimizer.momentum == pytest.approx(0.9)
    assert compose_config(["optimizer=sgd", "lr=0.02"]).optimizer.lr == pytest.approx(0.02)


def test_trainer_aliases_win_over_presets() -> None:
    fast = compose_config(["trainer=fast"])
    assert fast.trainer.epochs == 1
    cfg = compose_config(["trainer=fast", "epochs=3", "batch_size=32", "seed=7", "device=cpu"])
    t = cfg.trainer
    assert (t.epochs, t.batch_size, t.seed, t.device) == (3, 32, 7, "cpu")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lr=0", "lr=0.0: the learning rate must be > 0"),
        ("lr=-0.1", "lr=-0.1: the learning rate must be > 0"),
        ("batch_size=0", "batch_size=0: use a batch size >= 1"),
        ("epochs=0", "epochs=0: train for at least one epoch"),
        ("device=tpu", "device=tpu: choose auto, cpu, cuda or cuda:N"),
        ("data.val_size=0", "data.val_size must be a count (> 1, e.g. 5000) or a fraction"),
        ("data.val_size=1", "data.val_size must be a count (> 1, e.g. 5000) or a fraction"),
        ("seed=-1", "seed=-1: use a seed in 0..2**32-1"),
        ("optimizer.betas=[1.5,0.9]", "optimizer.betas=[1.5, 0.9]: give two values in [0, 1)"),
        ("optimizer.betas=[0.9]", "optimizer.betas=[0.9]: give two values in [0, 1)"),
        ("model.kernel_size=0", "model.kernel_size must be >= 1"),
        ("optimizer=momentum", None),
        ("optimizer.weight_decay=-1", "optimizer.weight_decay must be >= 0"),
        ("model.dropout=1.0", "model.dropout must be in [0, 1)"),
        ("augment.tta_shift=-1", "augment.tta_shift is a number of pixels: >= 0"),
        ("augment.erase=1.5", "augment.erase is a probability: 0..1"),
        ("augment.erase_area=[0.3,0.1]", "augment.erase_area is a range [low, high]"),
        ("augment.erase_area=[0.1,2]", "augment.erase_area is a range [low, high]"),
    ],
)
def test_validate_names_the_key_and_the_fix(override: str, message: str | None) -> None:
    errors = validate(compose_config([override]))
    if message is None:
        assert errors == []
    else:
        assert len(errors) == 1 and errors[0].startswith(message), errors


def test_aliases_expand_to_their_keys_and_shorten_back() -> None:
    assert expand_aliases(["lr=0.1,0.01", "epochs=3", "optimizer=sgd", "--cfg", "job"]) == [
        "optimizer.lr=0.1,0.01", "trainer.epochs=3", "optimizer=sgd", "--cfg", "job",
    ]  # fmt: skip
    dirname = "optimizer.lr=0.1,optimizer=sgd,trainer.epochs=3"
    assert shorten_aliases(dirname) == "lr=0.1,optimizer=sgd,epochs=3"


def test_validate_reports_every_problem_at_once() -> None:
    errors = validate(compose_config(["lr=-1", "batch_size=0", "epochs=0"]))
    assert len(errors) == 3


def test_every_yaml_has_a_comment_saying_what_it_is() -> None:
    for group, option in GROUP_OPTIONS:
        text = (Path(CONF_DIR) / group / f"{option}.yaml").read_text()
        assert text.startswith("#"), f"{group}/{option}.yaml should open with a comment"
