"""Real training runs on a slice of Fashion-MNIST: every group option, the files a run writes,
the TensorBoard scalars read back with TensorBoard's own reader, schedules and seeding."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from trainkit.experiment import build_model, run

from .conftest import GROUP_OPTIONS, compose_config, small_overrides
from .tensorboard_events import events, scalar_tags, scalars, texts


def train(overrides: list[str], run_dir: Path) -> dict:
    """A run in this process; its summary as summary.json holds it."""
    return run(compose_config(overrides), run_dir).as_dict()


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    with (run_dir / "metrics.csv").open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS)
@pytest.mark.slow
def test_every_option_trains_two_steps(
    group: str, option: str, fmnist_slice: Path, cifar_root: Path, image_folder_root: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Options are discovered from conf/, so a new YAML is trained here without a new test."""
    if group == "model":
        overrides = small_overrides(fmnist_slice, option)
    elif group == "experiment":  # presets pick and size their CNN: a small one here
        overrides = [*small_overrides(fmnist_slice, "cnn"), f"{group}={option}"]
    elif group == "data":
        # data=torchvision is MNIST by default, in files named as Fashion-MNIST's
        root = {"cifar10": cifar_root, "image_folder": image_folder_root}.get(option, fmnist_slice)
        overrides = [*small_overrides(fmnist_slice), f"data={option}", f"data.root={root}"]
        if option == "image_folder":  # 60 pictures: small batches, for two steps
            overrides.append("batch_size=8")
    else:
        overrides = [*small_overrides(fmnist_slice), f"{group}={option}"]
    overrides += ["epochs=1", "trainer.max_steps_per_epoch=2", "data.val_size=20"]
    if option not in ("cifar10", "image_folder"):  # their generated files hold fewer
        overrides.append("data.test_size=100")  # the test set is not what is tested here
    summary = train(overrides, tmp_path)
    (row,) = read_metrics(tmp_path)
    assert row["step"] == 2 and summary["epochs_run"] == 1
    assert math.isfinite(row["train_loss"]) and math.isfinite(row["val_loss"])
    assert_test_acc_counts_the_test_set(summary)


def assert_test_acc_counts_the_test_set(summary: dict) -> None:
    """The test accuracy is the confusion matrix's diagonal over every test image scored."""
    counts = summary["confusion_matrix"]["counts"]
    scored = sum(map(sum, counts))
    assert scored == summary["dataset"]["test"]
    correct = sum(counts[i][i] for i in range(len(counts)))
    assert summary["test"]["acc"] == pytest.approx(correct / scored, abs=1e-9)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_each_model_learns_fashion_mnist(model: str, fmnist_slice: Path, tmp_path: Path) -> None:
    overrides = [*small_overrides(fmnist_slice, model), "epochs=4", "lr=3e-3"]
    summary = train(overrides, tmp_path)
    rows = read_metrics(tmp_path)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    # 1,000 training images, 4 epochs: well above chance (0.1) on held-out data.
    assert summary["best"]["val_acc"] > 0.65
    assert summary["test"]["acc"] > 0.65


def test_cifar10_trains_from_its_python_batches(cifar_root: Path, tmp_path: Path) -> None:
    overrides = [
        "data=cifar10",
        f"data.root={cifar_root}",
        "data.val_size=20",
        "data.download=false",
        "model=cnn",
        "model.channels=[8]",
        "epochs=4",
        "batch_size=20",
        "lr=3e-3",
    ]
    summary = train(overrides, tmp_path)
    assert summary["dataset"] == {
        "source": str(cifar_root / "cifar-10-batches-py"),
        "train": 180,
        "val": 20,
        "test": 30,
    }
    # The generated images carry their label in the red channel: the CNN can learn it.
    assert summary["best"]["val_acc"] >= 0.5


def test_run_writes_curves_summary_and_checkpoints(fmnist_slice: Path, tmp_path: Path) -> None:
    summary = train([*small_overrides(fmnist_slice), "epochs=3"], tmp_path)
    rows = read_metrics(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["step"] for r in rows] == [10, 20, 30]  # 1,000 samples / batch 100

    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["test"] == summary["test"]
    assert on_disk["final"]["val_acc"] == pytest.approx(rows[-1]["val_acc"], abs=1e-6)
    best = max(rows, key=lambda r: r["val_acc"])
    assert on_disk["best"]["epoch"] == best["epoch"]
    assert on_disk["train_samples_per_s"] > 0 and on_disk["wall_time_s"] > 0

    assert_tensorboard_layout(tmp_path, rows, summary)

    # Checkpoints load with weights_only and rebuild the model that scored the test accuracy.
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    best_ckpt = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert last["epoch"] == 3 and best_ckpt["epoch"] == best["epoch"]
    assert last["config"]["model"]["_target_"] == "trainkit.models.MLP"
    model = build_model(
        compose_config(["model=mlp", "model.hidden=[64]"]).model, (1, 28, 28), num_classes=10
    )
    model.load_state_dict(last["model"])
    assert {"optimizer", "scheduler", "rng", "fit", "callbacks", "metrics", "saved_at"} <= set(last)
    assert set(last["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert (
        last["fit"]["history"]
        == [{k: pytest.approx(v) for k, v in row.items()} for row in last["fit"]["history"]]
        and len(last["fit"]["history"]) == 3
    )


def assert_tensorboard_layout(run_dir: Path, rows: list[dict], summary: dict) -> None:
    """TensorBoard's own reader sees Keras's layout: train, validation and test runs beside the
    run's own, each with curves/loss and curves/accuracy (one chart per metric), every point on
    the optimizer-step axis, with the values of metrics.csv."""
    epoch_steps = [10, 20, 30]
    for split, column in (("train", "train"), ("validation", "val")):
        assert scalar_tags(run_dir / split) == {"curves/loss", "curves/accuracy"}
        for kind, key in (("loss", "loss"), ("accuracy", "acc")):
            points = scalars(run_dir / split, f"curves/{kind}")
            assert [step for step, _ in points] == epoch_steps  # the step each epoch ended
            expected = [r[f"{column}_{key}"] for r in rows]
            assert [v for _, v in points] == pytest.approx(expected, rel=1e-4)
    # The test score: one point at the last step, on the same charts.
    ((step, test_acc),) = scalars(run_dir / "test", "curves/accuracy")
    assert step == 30 and test_acc == pytest.approx(summary["test"]["acc"])
    best = scalars(run_dir, "summary/best_val_acc")  # the best so far, each epoch
    assert [step for step, _ in best] == epoch_steps
    expected = [max(r["val_acc"] for r in rows[: i + 1]) for i in range(3)]
    assert [v for _, v in best] == pytest.approx(expected, rel=1e-4)

    own = scalar_tags(run_dir)
    # Headline charts first: every other group sorts after curves/ (TensorBoard sorts by tag).
    groups = {tag.split("/")[0] for tag in own} | {"curves"}
    assert sorted(groups)[0] == "curves" and "diagnostics" in groups
    schedule = {t for t in own if t.endswith(("lr", "momentum"))}
    assert schedule == {"schedule/lr", "schedule/momentum"}  # each once (Adam's beta1)
    lr = scalars(run_dir, "schedule/lr")  # the lr each sampled step used: cosine, from 1e-3
    assert [step for step, _ in lr] == [1, *range(2, 31, 2)]  # step 1, then a quarter epoch
    assert lr[0][1] == pytest.approx(1e-3) and lr[-1][1] < lr[1][1] < lr[0][1]
    assert "custom_scalars__config__" not in events(run_dir).Tags()["tensors"]
    # TEXT: one entry, the verdict first.
    entries = texts(run_dir)
    assert list(entries) == ["verdict"] and len(entries["verdict"]) == 1
    assert entries["verdict"][0].startswith(f"**{summary['diagnosis']['verdict']}**")


def test_step_schedule_halves_the_lr_each_epoch(fmnist_slice: Path, tmp_path: Path) -> None:
    train([*small_overrides(fmnist_slice), "scheduler=step", "epochs=3"], tmp_path)
    assert [r["lr"] for r in read_metrics(tmp_path)] == pytest.approx([1e-3, 5e-4, 2.5e-4])


def test_cosine_schedule_steps_every_batch(fmnist_slice: Path, tmp_path: Path) -> None:
    train([*small_overrides(fmnist_slice), "scheduler=cosine", "epochs=2"], tmp_path)
    # 10 steps per epoch, 20 in all: half way the cosine is at half the peak.
    assert [r["lr"] for r in read_metrics(tmp_path)] == pytest.approx([1e-3, 5e-4])


def test_sgd_uses_its_own_default_lr_unless_lr_is_given(fmnist_slice: Path, tmp_path: Path) -> None:
    base = [*small_overrides(fmnist_slice), "scheduler=none", "epochs=1"]
    train([*base, "optimizer=sgd"], tmp_path / "a")
    train([*base, "optimizer=sgd", "lr=0.02"], tmp_path / "b")
    assert read_metrics(tmp_path / "a")[0]["lr"] == pytest.approx(0.1)
    assert read_metrics(tmp_path / "b")[0]["lr"] == pytest.approx(0.02)


def test_same_seed_same_numbers_other_seed_other_numbers(
    fmnist_slice: Path, tmp_path: Path
) -> None:
    base = [*small_overrides(fmnist_slice), "trainer.deterministic=true"]
    try:
        runs = {
            name: train([*base, f"seed={seed}"], tmp_path / name)
            for name, seed in [("a", 1), ("b", 1), ("c", 2)]
        }
    finally:
        torch.use_deterministic_algorithms(False)
    keys = ("train_loss", "val_loss", "val_acc")
    a, b, c = ([r[k] for r in read_metrics(tmp_path / n) for k in keys] for n in "abc")
    assert a == b and a != c
    assert runs["a"]["test"] == runs["b"]["test"]


def test_early_stopping_ends_the_run_and_says_why(fmnist_slice: Path, tmp_path: Path) -> None:
    # Train loss falls every epoch, so with mode=max it "never improves" after epoch 1.
    overrides = [*small_overrides(fmnist_slice), "epochs=5", "regularization=early_stopping",
                 "regularization.early_stopping.monitor=train_loss",
                 "regularization.early_stopping.mode=max",
                 "regularization.early_stopping.patience=1"]  # fmt: skip
    summary = train(overrides, tmp_path)
    assert summary["epochs_run"] == 2 and len(read_metrics(tmp_path)) == 2
    assert summary["stop_reason"].startswith("early stopping after epoch 2: train_loss")
    assert summary["stop_reason"].endswith("restored the weights of epoch 1")
