"""The other jobs: lr-find, init-report, learning-curve, and the pictures a run leaves."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trainkit.experiment import run
from trainkit.init_report import init_report
from trainkit.learning_curve import learning_curve
from trainkit.lr_finder import lr_find

from .conftest import SLICE_TEST, compose_config, small_overrides
from .test_cli import trainkit


def slice_data(root: Path) -> list[str]:
    return [f"data.root={root}", "data.val_size=200", "data.download=false"]


@pytest.mark.slow
def test_lr_find_on_the_default_cnn_suggests_an_lr_that_trains_well(
    fmnist_slice: Path, tmp_path: Path
) -> None:
    result = lr_find(compose_config(slice_data(fmnist_slice)), tmp_path / "find")
    suggested = result["suggested_lr"]
    # Adam trains this CNN well at 1e-3 (0.91 test accuracy in 3 epochs on the full set).
    assert 1e-4 <= suggested <= 1e-2
    assert suggested == pytest.approx(result["min_loss_lr"] / 10)
    with (tmp_path / "find" / "lr_find.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == result["steps"] and 50 < len(rows) <= 200
    lrs = [float(r["lr"]) for r in rows]
    assert lrs == sorted(lrs) and lrs[0] == pytest.approx(1e-7)
    assert (tmp_path / "find" / "lr_find.png").stat().st_size > 10_000
    # Check it: the suggested lr trains the CNN on the slice well above chance.
    overrides = [*slice_data(fmnist_slice), f"lr={suggested}", "epochs=3"]
    summary = run(compose_config(overrides), tmp_path / "check")
    assert summary.best["val_acc"] > 0.7


def test_init_report_on_a_deep_tanh_mlp(fmnist_slice: Path, tmp_path: Path) -> None:
    cfg = compose_config([*slice_data(fmnist_slice), "model=mlp", "model.activation=tanh",
                          "model.hidden=[256,256,256,256,256,256,256,256]"])  # fmt: skip
    report = init_report(cfg, tmp_path, schemes=["xavier_normal", "normal"])
    xavier, small = report["xavier_normal"], report["normal"]
    assert len(xavier) == 9
    for row in xavier:  # the measured std follows Glorot's variance propagation
        assert row["act_std"] == pytest.approx(row["act_pred"], rel=0.25), row["layer"]
        assert row["grad_std"] == pytest.approx(row["grad_pred"], rel=0.25), row["layer"]
    assert xavier[-2]["act_std"] > 0.2 * xavier[1]["act_std"]  # holds up through depth
    assert small[-2]["act_std"] < 1e-3 * small[0]["act_std"]  # N(0, 0.01^2) collapses
    saved = json.loads((tmp_path / "init_report.json").read_text())
    assert saved["normal"][3]["act_std"] == pytest.approx(small[3]["act_std"])


def test_learning_curve_gives_every_size_the_same_optimizer_steps(
    fmnist_slice: Path, tmp_path: Path
) -> None:
    """Planted bug caught: epochs kept fixed (3, 9 and 30 steps: data mixed with training
    length)."""
    cfg = compose_config(small_overrides(fmnist_slice) + ["epochs=3"])
    result = learning_curve(cfg, tmp_path, sizes=["100", "300", "1000"])
    points = result["points"]
    assert [p["train_size"] for p in points] == [100, 300, 1000]
    # batch 100: the largest size takes 10 steps an epoch, 30 in 3 epochs; so does every size
    assert [p["steps"] for p in points] == [30, 30, 30]
    assert [p["epochs"] for p in points] == [30, 10, 3]
    assert points[-1]["val_loss"] < points[0]["val_loss"]  # more data, better generalization
    assert result["verdict"].startswith(("more data would help", "val loss has flattened"))
    assert result["verdict"].endswith(
        "every size trained about 30 optimizer steps (epochs: 30 for 100, 10 for 300, 3 for 1,000)"
    )
    with (tmp_path / "learning_curve.csv").open() as f:
        assert [int(r["steps"]) for r in csv.DictReader(f)] == [30, 30, 30]
    assert (tmp_path / "learning_curve.png").is_file()
    assert sorted(p.name for p in tmp_path.glob("train_size=*")) == [
        "train_size=100", "train_size=1000", "train_size=300"
    ]  # fmt: skip


def test_learning_curve_with_fixed_epochs_or_a_step_budget(
    fmnist_slice: Path, tmp_path: Path
) -> None:
    cfg = compose_config(small_overrides(fmnist_slice) + ["epochs=2"])
    fixed = learning_curve(cfg, tmp_path / "a", sizes=["100", "300"], keep=["epochs"])
    assert [(p["epochs"], p["steps"]) for p in fixed["points"]] == [(2, 2), (2, 6)]
    assert fixed["verdict"].endswith(
        "every size trained 2 epochs (2 to 6 steps): the small sizes trained less, so the curve "
        "mixes data with training length"
    )
    budget = learning_curve(cfg, tmp_path / "b", sizes=["100", "300"], steps=["7"])
    assert [(p["epochs"], p["steps"]) for p in budget["points"]] == [(7, 7), (2, 6)]


def test_a_run_leaves_curves_png_confusion_matrix_and_augmented_samples(
    fmnist_slice: Path, tmp_path: Path
) -> None:
    overrides = [*small_overrides(fmnist_slice), "augment=standard", "diagnostics.pictures=true"]
    summary = run(compose_config(overrides), tmp_path)
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    matrix = summary.confusion_matrix
    counts = matrix["counts"]
    assert matrix["classes"][0] == "T-shirt/top" and len(counts) == 10
    assert sum(map(sum, counts)) == SLICE_TEST
    correct = sum(counts[i][i] for i in range(10))
    assert correct / SLICE_TEST == pytest.approx(summary.test["acc"])
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    assert {"test/confusion_matrix", "inputs/augmented", "inputs/originals"} <= set(
        events.Tags()["images"]
    )


def test_pictures_do_not_change_the_training(fmnist_slice: Path, tmp_path: Path) -> None:
    base = [*small_overrides(fmnist_slice), "augment=standard", "epochs=1"]
    with_pictures = run(compose_config([*base, "diagnostics.pictures=true"]), tmp_path / "a")
    without = run(compose_config([*base, "diagnostics.pictures=false"]), tmp_path / "b")
    assert with_pictures.final["val_loss"] == without.final["val_loss"]


@pytest.mark.slow
def test_subcommands_run_from_the_command_line(fmnist_slice: Path, tmp_path: Path) -> None:
    args = ["init-report", "model=mlp", "model.hidden=[32,32]", "schemes=he_normal,default",
            *slice_data(fmnist_slice)]  # fmt: skip
    result = trainkit(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (out,) = (tmp_path / "outputs" / "init-report").glob("*/*")
    assert set(json.loads((out / "init_report.json").read_text())) == {"he_normal", "default"}
    named = trainkit(*args, "hydra.run.dir=report", cwd=tmp_path)  # a folder of one's choice
    assert named.returncode == 0 and (tmp_path / "report" / "init_report.json").is_file()
    again = trainkit(*args, "hydra.run.dir=report", cwd=tmp_path)  # never written over
    assert again.returncode == 2 and "report already holds a run" in again.stderr
    bad = trainkit("lr-find", "optimizer.lrr=1", cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr == (
        "trainkit lr-find: error: optimizer.lrr: no such key; did you mean optimizer.lr?\n"
    )


@pytest.mark.slow
def test_init_report_predictions_hold_for_strided_convolutions(
    fmnist_slice: Path, tmp_path: Path
) -> None:
    cfg = compose_config([*slice_data(fmnist_slice), "model=resnet"])
    rows = init_report(cfg, tmp_path, schemes=["he_normal"])["he_normal"]
    strided = [r for r in rows if r["layer"] in ("stages.1.0.conv1", "stages.2.0.conv1")]
    assert len(strided) == 2
    for row in rows:
        assert row["act_std"] == pytest.approx(row["act_pred"], rel=0.25), row["layer"]
        assert row["grad_std"] == pytest.approx(row["grad_pred"], rel=0.25), row["layer"]


def test_evaluate_rebuilds_the_model_from_the_checkpoint_and_scores_it(
    fmnist_slice: Path, tmp_path: Path
) -> None:
    from trainkit.evaluation import evaluate_checkpoint

    overrides = [*small_overrides(fmnist_slice, "cnn"), "epochs=1", "augment=flip",
                 "augment.tta_hflip=true"]  # fmt: skip
    summary = run(compose_config(overrides), tmp_path / "run")
    # Only data location and device come from this config: the model is the checkpoint's.
    here = compose_config([f"data.root={fmnist_slice}", "data.download=false"])
    result = evaluate_checkpoint(here, tmp_path / "eval", ckpt=[str(tmp_path / "run")])
    assert result["checkpoint"].endswith("checkpoints/last.pt") and result["split"] == "test"
    assert result["acc"] == pytest.approx(summary.test["acc"])
    assert result["loss"] == pytest.approx(summary.test["loss"], rel=1e-5)
    assert result["confusion_matrix"]["counts"] == summary.confusion_matrix["counts"]
    val = evaluate_checkpoint(here, tmp_path / "eval", ckpt=[str(tmp_path / "run")], split=["val"])
    assert val["samples"] == 200 and val["acc"] == pytest.approx(summary.best["val_acc"])
    # as the run scored them: the test set with test-time mirroring, val with the image alone
    assert val["loss"] == pytest.approx(summary.best["val_loss"], rel=1e-5)


# The MLP on 100 images at lr=1e-2: val accuracy peaks at epoch 4 of 6, and the best epoch's
# weights score 0.615 on the test slice against the final weights' 0.65.
PEAKS_EARLY = ["data.train_size=100", "batch_size=20", "epochs=6", "model.hidden=[256]",
               "lr=1e-2"]  # fmt: skip


@pytest.mark.parametrize("early_stopping", [False, True])
def test_evaluate_gives_exactly_the_runs_own_test_score(
    early_stopping: bool, fmnist_slice: Path, tmp_path: Path
) -> None:
    """By default the weights the run's test used: the final ones, or with early stopping the
    best epoch's it restored (last.pt is saved after). Planted bugs caught: best.pt by default
    (0.615, not 0.65), the command's data.root (none: the system's 10,000 test images) in place
    of the run's."""
    from trainkit.evaluation import evaluate_checkpoint

    stopping = ["regularization=early_stopping", "regularization.early_stopping.monitor=val_acc"]
    overrides = [*small_overrides(fmnist_slice), *PEAKS_EARLY]
    overrides += stopping if early_stopping else []
    summary = run(compose_config(overrides), tmp_path / "run")
    here = compose_config(["data.download=false"])  # no data.root: the run's own
    final = evaluate_checkpoint(here, tmp_path / "a", ckpt=[str(tmp_path / "run")])
    assert final["samples"] == SLICE_TEST
    assert final["acc"] == summary.test["acc"]  # exactly: the same predictions
    assert final["loss"] == pytest.approx(summary.test["loss"], rel=1e-6)
    assert final["weights"] == "final weights, as the run's own test score"
    best = evaluate_checkpoint(here, tmp_path / "b", ckpt=[str(tmp_path / "run")],
                               weights=["best"])  # fmt: skip
    assert best["checkpoint"].endswith("checkpoints/best.pt")
    assert best["epoch"] == summary.best["epoch"] == 4
    if early_stopping:  # the run's test used the restored best weights
        assert summary.stop_reason.endswith("restored the weights of epoch 4")
        assert best["acc"] == summary.test["acc"]
    else:
        assert (best["acc"], summary.test["acc"]) == (0.615, 0.65)
    saved = json.loads((tmp_path / "a" / "evaluation.json").read_text())
    assert saved["acc"] == summary.test["acc"] and saved["checkpoint"].endswith("last.pt")


@pytest.mark.slow
def test_evaluate_from_the_command_line_says_what_is_wrong(tmp_path: Path) -> None:
    result = trainkit("evaluate", f"ckpt={tmp_path}/nothing.pt", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        f"trainkit evaluate: error: checkpoint {tmp_path}/nothing.pt does not exist: "
        "check the path\n"
    )


def test_tool_arguments_are_checked_with_one_line(tmp_path: Path) -> None:
    from trainkit.errors import UserError

    cfg = compose_config([])
    with pytest.raises(UserError, match=r"^schemes: bogus unknown; choose from constant, "):
        init_report(cfg, tmp_path, schemes=["he_normal", "bogus"])
    with pytest.raises(UserError, match=r"^sizes=abc: give counts or fractions"):
        learning_curve(cfg, tmp_path, sizes=["abc"])
    with pytest.raises(UserError, match=r"^sizes must be > 0"):
        learning_curve(cfg, tmp_path, sizes=["0", "100"])
    with pytest.raises(UserError, match=r"^keep=size: choose steps \(the same optimizer"):
        learning_curve(cfg, tmp_path, keep=["size"])
    with pytest.raises(UserError, match=r"^steps= sets the budget of keep=steps"):
        learning_curve(cfg, tmp_path, keep=["epochs"], steps=["100"])
    with pytest.raises(UserError, match=r"^steps=0: give a whole number of optimizer steps"):
        learning_curve(cfg, tmp_path, steps=["0"])
    from trainkit.evaluation import evaluate_checkpoint

    with pytest.raises(UserError, match=r"^weights=first: choose last \(the run's final"):
        evaluate_checkpoint(cfg, tmp_path, ckpt=[str(tmp_path)], weights=["first"])
    with pytest.raises(UserError, match=r"^ckpt=.*: no checkpoints/best.pt there"):
        evaluate_checkpoint(cfg, tmp_path, ckpt=[str(tmp_path)], weights=["best"])
