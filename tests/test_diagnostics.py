"""Diagnostics demonstrations on real data: vanishing gradients seen and warned about, a NaN
loss stopped with a loadable checkpoint, and the fit verdict for over- and underfitting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from trainkit import hparams
from trainkit.callbacks import is_sampled, sample_every
from trainkit.diagnostics import HISTOGRAM_BINS, write_histogram
from trainkit.errors import UserError
from trainkit.experiment import run
from trainkit.hparams import group_choices

from .conftest import compose_config, small_overrides
from .tensorboard_events import hparams_records, scalar_tags, scalars, texts

DEEP = "model.hidden=[64,64,64,64,64,64,64,64,64,64]"  # a 10-layer MLP


def train(overrides: list[str], run_dir: Path) -> dict:
    return run(compose_config(overrides), run_dir).as_dict()


def layer_grad_norms(run_dir: Path) -> dict[str, float]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    tags = [t for t in events.Tags()["scalars"] if t.startswith("diagnostics/grad_norm/net.")]
    return {t.removeprefix("diagnostics/grad_norm/"): events.Scalars(t)[0].value for t in tags}


def test_deep_sigmoid_mlp_with_small_init_vanishes_and_says_so(
    fmnist_slice: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    overrides = [*small_overrides(fmnist_slice), DEEP, "model.activation=sigmoid", "init=normal",
                 "init.scale=0.01", "epochs=1", "diagnostics.every_n_steps=5"]  # fmt: skip
    summary = train(overrides, tmp_path / "sigmoid")
    norms = layer_grad_norms(tmp_path / "sigmoid")
    assert len(norms) == 11  # ten hidden layers and the head, each its own tag
    assert norms["net.fc1"] < 1e-3 * norms["net.head"]
    assert summary["alerts"] == ["vanishing"]
    assert "warning: vanishing gradients at step 1" in capsys.readouterr().out
    assert sorted(texts(tmp_path / "sigmoid")) == ["verdict", "warnings/vanishing"]  # TEXT order

    twin = [*small_overrides(fmnist_slice), DEEP, "model.activation=relu", "init=he_normal",
            "epochs=1", "diagnostics.every_n_steps=5"]  # fmt: skip
    summary = train(twin, tmp_path / "relu")
    norms = layer_grad_norms(tmp_path / "relu")
    assert norms["net.fc1"] > 1e-2 * norms["net.head"]
    assert summary["alerts"] == []


def test_per_layer_signals_are_written_by_path(fmnist_slice: Path, tmp_path: Path) -> None:
    overrides = [*small_overrides(fmnist_slice, "cnn"), "epochs=1", "diagnostics.every_n_steps=2",
                 "diagnostics.total_norm_every_n_steps=1"]  # fmt: skip
    train(overrides, tmp_path)
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    d = "diagnostics"
    for layer in ("features.conv1", "features.conv2", "classifier.fc", "classifier.head"):
        for kind in ("grad_norm", "weight_norm", "update_ratio"):
            assert f"{d}/{kind}/{layer}" in tags
    for act in ("features.act1", "classifier.act"):
        assert {f"{d}/act_mean/{act}", f"{d}/act_std/{act}", f"{d}/dead_frac/{act}"} <= tags
    total = events.Scalars(f"{d}/grad_norm/total")
    assert [p.step for p in total] == list(range(1, 11))  # every step of the epoch
    ratios = events.Scalars(f"{d}/update_ratio/classifier.fc")
    assert [p.step for p in ratios] == [1, 2, 4, 6, 8, 10]  # step 1, then every 2
    # Adam's first step moves every weight by exactly lr (m/sqrt(v) = g/|g|): ||dw|| is
    # lr * sqrt(n) for the fc layer's 32 x 784 weights, against the norm logged at step 1
    first_norm = events.Scalars(f"{d}/weight_norm/classifier.fc")[0].value
    assert ratios[0].value == pytest.approx(1e-3 * (32 * 784) ** 0.5 / first_norm, rel=1e-2)
    # A count of units dead for the whole batch, over act1's 8 x 28 x 28 units
    dead = [p.value * 8 * 28 * 28 for p in events.Scalars(f"{d}/dead_frac/features.act1")]
    assert [round(n) for n in dead] == pytest.approx(dead, abs=1e-3) and dead[0] < 8 * 28 * 28 / 2
    # Every tag of the run's own folder but the headline, schedule and summary ones is a
    # diagnostic: one group, listed after curves/ (train/, validation/).
    assert {t.split("/")[0] for t in tags} == {d, "schedule", "perf", "summary"}
    histograms = events.Histograms(f"{d}/weights/features.conv1")
    assert [h.step for h in histograms] == [10]  # the step the epoch ended


@pytest.mark.parametrize(
    ("configured", "steps_per_epoch", "every"),
    [(100, 16, 4), (100, 1000, 100), (100, 3, 1), (5, 40, 5)],
)
def test_a_short_epoch_is_sampled_four_times(
    configured: int, steps_per_epoch: int, every: int
) -> None:
    assert sample_every(configured, steps_per_epoch) == every
    sampled = [s for s in range(1, 2 * steps_per_epoch + 1) if is_sampled(s, every)]
    assert sampled == sorted({1, *range(every, 2 * steps_per_epoch + 1, every)})


def test_a_32_step_run_shows_every_per_layer_signal_from_step_1(
    fmnist_slice: Path, tmp_path: Path
) -> None:
    """The default every_n_steps (100) is longer than the whole run: a quarter epoch is used."""
    overrides = [*small_overrides(fmnist_slice), "data.train_size=800", "batch_size=50",
                 "epochs=2"]  # fmt: skip
    train(overrides, tmp_path)  # 16 steps an epoch, 32 in all
    tags = scalar_tags(tmp_path)
    for layer in ("net.fc1", "net.head"):
        for kind in ("grad_norm", "weight_norm", "update_ratio"):
            steps = [step for step, _ in scalars(tmp_path, f"diagnostics/{kind}/{layer}")]
            assert steps == [1, 4, 8, 12, 16, 20, 24, 28, 32], kind
    assert {"diagnostics/act_mean/net.act1", "diagnostics/dead_frac/net.act1"} <= tags
    totals = [step for step, _ in scalars(tmp_path, "diagnostics/grad_norm/total")]
    assert totals == [1, 4, 8, 12, 16, 20, 24, 28, 32]  # total_norm_every_n_steps capped at 4
    assert [step for step, _ in scalars(tmp_path, "schedule/lr")] == totals


def test_hparams_declare_the_swept_keys_and_the_split_metrics(tmp_path: Path) -> None:
    """The HPARAMS records of a sweep job: the swept keys as the columns, in the order typed and
    marked `differs`; the trial named by their values; each metric read from its split's run."""
    sweep = tmp_path / "sweep"
    job = sweep / "lr=0.1,optimizer=sgd"
    job.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    task: [model=mlp, 'optimizer=sgd,adam', "
        "'optimizer.lr=0.1,0.01', trainer.epochs=3]\n"
    )
    values = {"model": "mlp", "optimizer": "sgd", "optimizer.lr": 0.1, "trainer.epochs": 3.0}
    writer = SummaryWriter(str(job))
    hparams.write_start(writer, values, "val_acc", job)
    writer.close()
    experiment, start = hparams_records(job)
    columns = [(h.name, h.display_name, h.differs) for h in experiment.hparam_infos]
    assert columns == [("optimizer", "optimizer", True), ("optimizer.lr", "lr", True)]
    assert start.group_name == "optimizer=sgd,lr=0.1 · sweep"
    assert dict(start.hparams)["trainer.epochs"].number_value == 3  # constant: a value, no column
    metrics = [(m.name.group, m.name.tag) for m in experiment.metric_infos]
    assert metrics[:2] == [("validation", "curves/accuracy"), ("validation", "curves/loss")]
    assert ("test", "curves/accuracy") in metrics and ("", "summary/best_val_acc") in metrics
    assert [(g, t) for g, t, _ in hparams.metric_names("val_acc")] == metrics


def test_hparams_name_the_preset_beside_the_groups_choices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A preset sets keys the groups' choices do not show (fmnist_accuracy's erasing under
    augment=light): the HPARAMS tab names it, and a run without one gets "" (not None)."""
    cfg = compose_config(["experiment=fmnist_accuracy"])
    choices = {"experiment": "fmnist_accuracy", "augment": "light", "model": "cnn"}
    monkeypatch.setattr(hparams, "group_choices", lambda: choices)
    values = hparams.collect(cfg)
    assert (values["experiment"], values["augment"]) == ("fmnist_accuracy", "light")
    monkeypatch.setattr(hparams, "group_choices", lambda: {**choices, "experiment": None})
    assert hparams.collect(cfg)["experiment"] == ""


def test_a_lone_run_declares_every_key_and_no_trial_name(tmp_path: Path) -> None:
    values = {"model": "mlp", "optimizer.lr": 0.1}
    writer = SummaryWriter(str(tmp_path / "run"))
    hparams.write_start(writer, values, "val_loss", tmp_path / "run")
    writer.close()
    experiment, start = hparams_records(tmp_path / "run")
    assert [(h.name, h.differs) for h in experiment.hparam_infos] == [
        ("model", False),
        ("optimizer.lr", False),
    ]
    assert start.group_name == ""  # TensorBoard names the trial by its folder
    assert experiment.metric_infos[-1].name.tag == "summary/best_val_loss"


def test_lr_10_with_sgd_stops_on_nan_with_a_loadable_checkpoint(
    fmnist_slice: Path, tmp_path: Path
) -> None:
    overrides = [*small_overrides(fmnist_slice), "optimizer=sgd", "lr=10", "model.hidden=[256,128]",
                 "diagnostics.advice=true"]  # fmt: skip
    with pytest.raises(UserError) as e:
        train(overrides, tmp_path)
    message = str(e.value)
    assert message.startswith("the loss became NaN/Inf at step ")
    assert "the learning rate is too high" in message and "try lr=" in message
    assert message.endswith(f"the last good checkpoint is {tmp_path}/checkpoints/last.pt")
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in last["model"].values())
    summary = (tmp_path / "summary.json").read_text()
    assert '"verdict": "diverged"' in summary


@pytest.mark.slow
def test_tiny_training_set_and_big_model_is_overfit(fmnist_slice: Path, tmp_path: Path) -> None:
    overrides = [*small_overrides(fmnist_slice), "diagnostics.advice=true", "data.train_size=100",
                 "model.hidden=[512,512]", "epochs=30", "batch_size=25"]  # fmt: skip
    diagnosis = train(overrides, tmp_path)["diagnosis"]
    assert diagnosis["verdict"] == "overfit"
    assert diagnosis["evidence"]["train_acc"] > 0.95 and diagnosis["evidence"]["acc_gap"] > 0.2
    assert "model.dropout=0.3" in diagnosis["advice"]


def test_one_hidden_unit_is_underfit(fmnist_slice: Path, tmp_path: Path) -> None:
    overrides = [*small_overrides(fmnist_slice), "model.hidden=[1]", "epochs=3"]
    diagnosis = train(overrides, tmp_path)["diagnosis"]
    assert diagnosis["verdict"] == "underfit"
    assert diagnosis["evidence"]["train_acc"] < 0.8


# The verdict's rules and advice: tests/test_verdict.py


def test_a_resumed_run_reads_its_group_choices_from_its_run_dir(tmp_path: Path) -> None:
    """`trainkit resume` runs outside Hydra: the choices come from what Hydra wrote."""
    assert group_choices(tmp_path) == {}
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  runtime:\n    choices:\n      scheduler: onecycle\n      model: cnn\n"
    )
    assert group_choices(tmp_path) == {"scheduler": "onecycle", "model": "cnn"}


def test_histogram_is_binned_by_torch_as_numpy_bins_it(tmp_path: Path) -> None:
    noise = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 0.05
    values = torch.cat([noise, torch.tensor([float("nan"), float("inf")])])
    constant = torch.full((10,), 0.25)
    writer = SummaryWriter(str(tmp_path))
    write_histogram(writer, "w", values, step=3)
    write_histogram(writer, "c", constant, step=3)
    write_histogram(writer, "empty", torch.tensor([float("nan")]), step=3)
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0})
    events.Reload()
    assert set(events.Tags()["histograms"]) == {"w", "c"}  # nothing finite: nothing written
    (event,) = events.Histograms("w")
    h, finite = event.histogram_value, values[:1000].double().numpy()
    counts, edges = np.histogram(finite, bins=HISTOGRAM_BINS)
    assert event.step == 3 and h.num == 1000
    assert (h.min, h.max) == pytest.approx((finite.min(), finite.max()))
    assert h.sum_squares == pytest.approx((finite**2).sum(), rel=1e-5)
    assert list(h.bucket_limit) == pytest.approx(list(edges[1:]), abs=1e-6)
    assert sum(abs(a - b) for a, b in zip(h.bucket, counts, strict=True)) <= 2  # float32 edges
    (event,) = events.Histograms("c")
    assert event.histogram_value.num == 10 and max(event.histogram_value.bucket) == 10
