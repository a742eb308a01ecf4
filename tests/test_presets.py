"""The speed presets of conf/experiment/ as Hydra composes them. The 90-second preset is built
on the 5-minute one, so a setting of the one can leak into the other (its augmentation comes
from its own augment group, none): these catch that, and test-time views that a preset's
model never trained on."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from trainkit.augment import IMAGE_ONLY, TestTimeViews
from trainkit.experiment import build, run

from .conftest import SLICE_TEST, compose_config
from .test_train import assert_test_acc_counts_the_test_set


def preset_config(preset: str, fmnist_root: Path, *extra: str) -> list[str]:
    return [f"experiment={preset}", f"data.root={fmnist_root}", "data.download=false", *extra]


PRESETS = ["fmnist_speedrun", "fmnist_speedrun_90s", "fmnist_accuracy"]


@pytest.mark.parametrize(
    ("preset", "hflip", "translate", "erase", "views"),
    [
        ("fmnist_speedrun", 0.5, 1, 0.0, TestTimeViews(hflip=True, shift=1)),
        ("fmnist_speedrun_90s", 0.0, 0, 0.0, IMAGE_ONLY),
        ("fmnist_accuracy", 0.5, 2, 0.5, TestTimeViews(hflip=True, shift=1)),
    ],
)
def test_each_speed_preset_trains_with_its_own_augmentation_and_test_time_views(
    preset: str, hflip: float, translate: int, erase: float, views: TestTimeViews,
    fmnist_slice: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    _, training = build(compose_config(preset_config(preset, fmnist_slice)))
    if hflip or translate:
        aug = training.augment
        assert aug is not None
        assert (aug.hflip, aug.translate, aug.erase) == (hflip, translate, erase)
    else:
        assert training.augment is None  # nothing drawn per step
    assert training.tta == views
    assert "warning" not in capsys.readouterr().out  # views within what training showed


def test_the_accuracy_preset_is_the_speedrun_recipe_on_a_wider_cnn(fmnist_slice: Path) -> None:
    speedrun = compose_config(preset_config("fmnist_speedrun", fmnist_slice))
    accuracy = compose_config(preset_config("fmnist_accuracy", fmnist_slice))
    assert list(accuracy.model.channels) == [32, 64, 128]
    assert (accuracy.trainer.epochs, accuracy.trainer.precision) == (30, "auto")
    for key in ["optimizer", "scheduler", "loss", "data"]:
        assert accuracy[key] == speedrun[key], key


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.slow
def test_each_speed_preset_runs_from_start_to_test_score(
    preset: str, fmnist_slice: Path, tmp_path: Path
) -> None:
    # The slice's 1200 images less 200 for validation: 4 batches of the presets' 256.
    overrides = preset_config(preset, fmnist_slice, "data.val_size=200", "epochs=1",
                              "trainer.max_steps_per_epoch=2")  # fmt: skip
    summary = run(compose_config(overrides), tmp_path)
    with (tmp_path / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(row["step"]) for row in rows] == [2]
    assert json.loads((tmp_path / "summary.json").read_text())["test"] == summary.test
    assert summary.dataset["test"] == SLICE_TEST  # scored over the whole test slice
    assert_test_acc_counts_the_test_set(summary.as_dict())
