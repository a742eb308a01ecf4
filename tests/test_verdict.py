"""The end-of-run verdict: its rules on hand-made curves, advice that is a real override (it
composes after the run's own command, validates, builds, and changes something), and real runs
with too high a learning rate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from trainkit.config import CONF_DIR, expand_aliases, register_schemas, validate
from trainkit.errors import UserError
from trainkit.experiment import check_builds, dry_build, run
from trainkit.verdict import HINTS, advise, compose, judge, lower_lr, plain, run_overrides

from .conftest import compose_config, small_overrides

RULES = OmegaConf.create({"overfit_gap": 0.05, "overfit_rise": 0.1, "underfit_acc": 0.8,
                          "plateau_epochs": 3, "plateau_delta": 0.01})  # fmt: skip
CHANCE = math.log(10)


def rows(*curve: tuple[float, float, float, float]) -> list[dict]:
    keys = ("train_loss", "val_loss", "train_acc", "val_acc")
    return [{"epoch": i, **dict(zip(keys, r, strict=True))} for i, r in enumerate(curve, 1)]


@pytest.mark.parametrize(
    ("curve", "verdict"),
    [
        (rows((0.5, 0.5, 0.85, 0.85), (0.3, 0.35, 0.9, 0.88), (0.2, 0.3, 0.93, 0.9)), "good fit"),
        (rows((0.5, 0.5, 0.85, 0.85), (0.1, 0.4, 0.97, 0.86), (0.05, 0.6, 0.99, 0.85)), "overfit"),
        (rows((2.0, 2.0, 0.3, 0.3), (1.9, 1.9, 0.35, 0.34)), "underfit"),
        (rows((0.5, 0.5, 0.85, 0.85), (0.9, 1.0, 0.6, 0.6)), "diverged"),
        (rows(*[(0.3, 0.3, 0.9, 0.89)] * 4), "plateaued"),
    ],
)
def test_verdict_rules(curve: list[dict], verdict: str) -> None:
    assert judge(curve, RULES, initial_loss=2.3, chance=CHANCE, num_classes=10)[0] == verdict


def test_a_loss_that_spiked_above_its_start_and_recovered_is_too_high_an_lr() -> None:
    """Adam at lr=0.1 on the CNN: epoch 1's mean train loss 20.2 against 2.3 at step 1, then
    0.92, 0.63: it was called underfit and told to raise the lr."""
    curve = rows((20.2, 1.27, 0.25, 0.55), (0.92, 0.75, 0.67, 0.74), (0.63, 0.60, 0.77, 0.78))
    assert judge(curve, RULES)[0] == "underfit"  # neither the start nor chance known
    verdict, evidence = judge(curve, RULES, chance=CHANCE, num_classes=10)  # chance: ln 10
    assert verdict == "lr too high"
    assert evidence["peak_train_loss"] == 20.2 and evidence["peak_epoch"] == 1
    assert judge(curve, RULES, initial_loss=14.0, chance=CHANCE)[0] == "underfit"  # 20.2 < 21


def test_a_val_loss_above_chance_at_chance_accuracy_is_too_high_an_lr() -> None:
    """Confidently wrong: the train loss fell a little, but val loss ended above ln 10 with
    val accuracy at chance; a run that merely learns slowly stays below its start."""
    wrong = rows((2.5, 2.9, 0.10, 0.10), (2.4, 3.1, 0.12, 0.11))
    known = {"initial_loss": 2.33, "chance": CHANCE, "num_classes": 10}
    assert judge(wrong, RULES, **known)[0] == "lr too high"
    assert judge(wrong, RULES, initial_loss=2.33)[0] == "underfit"  # chance unknown
    slow = rows((2.32, 2.31, 0.10, 0.11), (2.30, 2.30, 0.12, 0.12))  # lr=1e-7
    assert judge(slow, RULES, **known)[0] == "underfit"


# Base commands: the default CNN, the MLP, the ResNet, and a one-cycle SGD CNN with dropout
BASES = {
    "cnn": [],
    "mlp": ["model=mlp"],
    "resnet": ["model=resnet", "model.widths=[8,16]"],  # small: its dry build runs a forward
    "onecycle": ["scheduler=onecycle", "optimizer=sgd", "lr=0.1", "model.dropout=0.2"],
}
VERDICTS = ["diverged", "lr too high", "overfit", "underfit", "plateaued", "good fit"]
FALLING = rows((2.0, 2.0, 0.3, 0.3), (1.5, 1.6, 0.5, 0.5))


@pytest.fixture
def hydra_context() -> object:
    """One Hydra context for many compositions (each compose_config starts Hydra again)."""
    register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("base", BASES)
@pytest.mark.slow
def test_each_suggestion_composes_after_the_run_validates_builds_and_changes_something(
    base: str, hydra_context: object
) -> None:
    """Planted bugs caught: advice not checked (the ResNet has no model.dropout; the CNN's
    `hidden` is an int), advice the run already follows (regularization.l2=0 when it is 0)."""
    overrides = expand_aliases(BASES[base])
    cfg = compose(overrides)
    given: dict[str, list[str]] = {}
    for verdict in VERDICTS:
        advice = advise(verdict, FALLING, cfg, overrides, check_builds)
        # Without the command line (a run started from Python) the same checks hold
        without = advise(verdict, FALLING, cfg, None, check_builds)
        assert [a for a in without if a != "model=cnn"] == [a for a in advice if a != "model=cnn"]
        given[verdict] = [a for a in advice if a not in HINTS.get(verdict, [])]
        assert given[verdict], verdict
        assert all("<" not in a and "=" not in h for a in advice for h in HINTS.get(verdict, []))
    for suggestion in {s for found in given.values() for s in found}:
        new = compose([*overrides, *expand_aliases([suggestion])])  # the command, then it
        assert validate(new) == [], suggestion
        dry_build(new)
        assert plain(new) != plain(cfg), f"{suggestion}: the run does it already"
    expected = {
        "cnn": ["model.hidden=256", "model.channels=[64,128]", "epochs=10", "lr=0.003"],
        "mlp": ["model.hidden=[512,256]", "model=cnn", "epochs=10", "lr=0.003"],
        "resnet": ["model.widths=[16,32]", "epochs=10", "lr=0.003"],
        "onecycle": ["model.hidden=256", "model.channels=[64,128]", "epochs=10", "lr=0.3",
                     "model.dropout=0"],
    }  # fmt: skip
    assert given["underfit"] == expected[base]
    assert ("model.dropout=0.3" in given["overfit"]) == (base != "resnet")
    assert ("scheduler=onecycle" in given["plateaued"]) == (base != "onecycle")
    lower = "lr=0.033" if base == "onecycle" else "lr=0.00033"  # a third: 0.1 (SGD), 1e-3
    assert given["lr too high"][0] == lower and given["plateaued"][-1] == lower


def test_a_plateau_at_an_annealed_schedules_end_is_told_to_go_further_not_slower() -> None:
    """The accuracy preset's run (one-cycle, lr 3e-3 down to 1.7e-5 at its end) plateaued and
    was told `scheduler=plateau; lr=0.001`: the flat end is the schedule's, by design."""
    command = ["scheduler=onecycle", "model.hidden=64"]
    cfg = compose_config(command)
    flat = rows(*[(0.3, 0.3, 0.9, 0.89)] * 4)
    annealed = [{**row, "lr": lr} for row, lr in zip(flat, [3e-3, 1e-3, 1e-4, 2e-5], strict=True)]
    assert advise("plateaued", annealed, cfg, command) == [
        "model.hidden=128", "model.channels=[64,128]", "epochs=10",
    ]  # fmt: skip
    held = [{**row, "lr": 1e-3} for row in flat]  # a constant lr: a schedule worth changing
    assert advise("plateaued", held, cfg, command) == ["scheduler=plateau", "lr=0.00033"]
    assert advise("plateaued", flat, cfg, command) == ["scheduler=plateau", "lr=0.00033"]


def test_lower_lr_is_a_tenth_but_at_most_ten_times_the_optimizers_default() -> None:
    """Planted bug caught: without the cap, lr=1e6 is advised lr=1e+05."""
    for lr, optimizer, tenth, third in [("0.1", "adam", "0.01", "0.01"),
                                        ("1e6", "adam", "0.01", "0.01"),
                                        ("3e-3", "adam", "0.0003", "0.001"),
                                        ("0.1", "sgd", "0.01", "0.033")]:  # fmt: skip
        cfg = compose_config([f"optimizer={optimizer}", f"lr={lr}"])
        assert (lower_lr(cfg, 10), lower_lr(cfg, 3)) == (tenth, third), (lr, optimizer)


def test_adam_at_lr_0_1_is_too_high_and_at_1e6_diverged_with_a_lower_lr_advised(
    fmnist_slice: Path, tmp_path: Path
) -> None:
    """The small CNN on the slice: Adam at lr=0.1 (epoch 1 mean train loss 5.57 against 2.35
    at step 1) was called underfit and told to raise the lr; at lr=1e6 the run fails."""
    base = [*small_overrides(fmnist_slice, "cnn"), "diagnostics.advice=true"]
    high = run(compose_config([*base, "lr=0.1"]), tmp_path / "high").diagnosis
    assert high["verdict"] == "lr too high"
    assert high["evidence"]["peak_train_loss"] > 1.5 * high["evidence"]["initial_loss"]
    assert high["advice"] == ["lr=0.01", "scheduler=warmup_cosine",
                              "regularization.clip_grad_norm=1.0"]  # fmt: skip
    with pytest.raises(UserError, match="diverged"):
        run(compose_config([*base, "lr=1e6", "epochs=1"]), tmp_path / "huge")
    huge = json.loads((tmp_path / "huge" / "summary.json").read_text())["diagnosis"]
    assert huge["verdict"] == "diverged"
    assert huge["advice"][0] == "lr=0.01"


def test_a_resumed_run_reads_its_command_line_from_its_folder(tmp_path: Path) -> None:
    assert run_overrides(tmp_path) is None  # not known: advice is checked against the config
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- model=mlp\n- optimizer.lr=0.1\n")
    assert run_overrides(tmp_path) == ["model=mlp", "optimizer.lr=0.1"]
