"""Every study, reduced to the Fashion-MNIST slice: it runs over its seeds, writes its figure,
result line, result.json and TensorBoard runs, and the test asserts the measured quantity
(a count, a log-ratio, a fraction of exact zeros), not only a direction. Each test names the
planted bug it catches. Seeds: 2 where the spread is part of the claim (symmetry, L1), else 1:
the suite's time stays that of the one-seed studies before."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest
import torch

from trainkit import studies

TINY = ["data.val_size=200", "data.download=false", "diagnostics.pictures=false", "batch_size=100"]


@pytest.fixture(scope="module")
def study(fmnist_slice: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    out = tmp_path_factory.mktemp("studies")

    def run(name: str, *extra: str, seeds: int = 1) -> dict:
        overrides = [f"seeds={seeds}", f"data.root={fmnist_slice}", *TINY, *extra]
        result = studies.run_study(name, overrides, out / name)
        assert (out / name / f"{name}.png").stat().st_size > 10_000
        saved = json.loads((out / name / "result.json").read_text())
        assert saved["result"] == result["result"] and saved["seeds"] == list(range(seeds))
        assert f"n={seeds} seeds" in result["result"] and saved["cpu"] and saved["wall_s"] > 0
        for seed in range(seeds):
            for label in studies.STUDIES[name].variants:
                assert list((out / name / f"seed={seed}" / label).glob("events.out.tfevents.*"))
        return result | {"dir": out / name}

    return run


def rows(result: dict, label: str, seed: int = 0) -> list[dict[str, float]]:
    """A variant's metrics.csv, one row per epoch: what the study's numbers must come from
    (none for a run that diverged in its first epoch)."""
    path = result["dir"] / f"seed={seed}" / label / "metrics.csv"
    if not path.exists():
        return []
    with path.open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def failed(result: dict, label: str, seed: int = 0) -> bool:
    summary = result["dir"] / f"seed={seed}" / label / "summary.json"
    return json.loads(summary.read_text())["status"] == "failed"


def values(result: dict, group: str, metric: str) -> list[float]:
    return result["stats"][group][metric]["values"]


def verdicts(result: dict) -> dict[str, str]:
    return {c["text"]: c["verdict"] for c in result["checks"]}


def test_every_claim_of_the_course_has_a_study() -> None:
    assert len(studies.STUDIES) == 14


def test_identical_units_is_exact_whatever_the_rounding() -> None:
    """Planted bug: counting with torch.cdist <= 1e-6 (the old check) gives 0 here: cdist's
    matrix-multiply mode returns 0.0039 between these identical rows on this CPU too."""
    torch.manual_seed(0)
    w = (torch.randn(784) * 0.05 + 0.3).repeat(128, 1)
    assert studies.identical_units(w) == 128
    w[5, 7] = torch.nextafter(w[5, 7], torch.tensor(1.0))  # one unit off by one ulp
    assert studies.identical_units(w) == 127


@pytest.mark.slow
def test_constant_init_never_breaks_symmetry(study) -> None:  # noqa: ANN001
    """Planted bug: the cdist tolerance check (0/128 on Intel) fails `== [128, 128]`."""
    r = study("symmetry", seeds=2)
    assert values(r, "constant", "identical_units") == [128.0, 128.0]
    assert values(r, "he_normal", "identical_units") == [0.0, 0.0]
    assert verdicts(r) == {"constant init leaves identical units": "supported"}


def test_spread_rule_needs_the_difference_to_exceed_twice_the_larger_std() -> None:
    """Planted bug: judging by the means alone says 'supported' for the noisy pair."""
    agg = {"a": {"m": studies.stats([1.0, 2.0, 3.0])}, "b": {"m": studies.stats([0.0, 0.5, 1.0])}}
    assert agg["a"]["m"]["std"] == 1.0 and agg["a"]["m"]["mean"] == 2.0
    check = studies.Check("a above b", "m", "a", "b")
    assert studies.judge(check, agg)["verdict"] == "not supported"  # 1.5 < 2 x 1.0
    agg["a"]["m"] = studies.stats([3.0, 3.1, 3.2])
    assert studies.judge(check, agg)["verdict"] == "supported"  # 2.6 > 2 x 0.5
    assert studies.judge(studies.Check("b above a", "m", "b", "a"), agg)["verdict"] == (
        "not supported"
    )


@pytest.mark.slow
def test_small_init_vanishes_and_large_init_explodes_gradients(study) -> None:  # noqa: ANN001
    """Planted bug: init.scale ignored (normal = he_normal) puts small near 0, not < -3."""
    r = study("init_scale", "epochs=1")
    small, he, large = (
        values(r, g, "log10_grad_ratio")[0] for g in ("small", "he_normal", "large")
    )
    assert small < -3 and large > 3 and abs(he) < 1
    assert set(verdicts(r).values()) == {"supported"}


def test_sigmoid_gradients_vanish_with_depth_and_relu_ones_do_not(study) -> None:  # noqa: ANN001
    """Planted bug: the activation override ignored (both ReLU) gives sigmoid ~ relu."""
    r = study("sigmoid_vs_relu", "epochs=1")
    assert (
        values(r, "sigmoid", "log10_grad_ratio")[0]
        < -2
        < -0.5
        < values(r, "relu", "log10_grad_ratio")[0]
    )


@pytest.mark.slow
def test_xavier_vs_he_measures_training_loss_and_gradient_flow_in_20_layers(study) -> None:  # noqa: ANN001
    """Planted bug: the init override ignored makes relu+xavier's gradient flow equal relu+he's."""
    r = study("xavier_vs_he", "epochs=2")
    ratio = {g: values(r, g, "log10_grad_ratio")[0] for g in r["stats"]}
    assert ratio["relu+xavier"] < ratio["relu+he"] - 1  # Xavier loses ~30% per ReLU layer
    assert all(math.isfinite(values(r, g, "train_loss")[0]) for g in ratio)
    assert [c["text"] for c in r["checks"]] == [
        "tanh: Xavier trains better than He",
        "ReLU: He trains better than Xavier",
    ]


def test_residual_study_measures_each_twins_last_epoch(study) -> None:  # noqa: ANN001
    """The effect is the full study's (docs/studies.md); here, that the numbers are each twin's
    last epoch. Planted bug: the first epoch's (Run.first) fails with 2 epochs."""
    r = study("residual", "epochs=2", "model.blocks=2")
    for twin in ("residual", "plain"):
        last = rows(r, twin)[-1]
        assert last["epoch"] == 2
        assert values(r, twin, "train_loss") == [last["train_loss"]]
        assert values(r, twin, "val_acc") == [last["val_acc"]]
    assert [c["text"] for c in r["checks"]] == [
        "residual trains to a lower loss", "residual validates better"
    ]


@pytest.mark.slow
def test_too_low_lr_is_slow_too_high_diverges_and_the_range_test_finds_one(study) -> None:  # noqa: ANN001
    r = study("learning_rate")
    acc = {g: values(r, g, "val_acc")[0] for g in r["stats"]}
    assert acc["lr=0.1"] > acc["lr=0.001"] + 0.1
    assert values(r, "lr=10", "diverged") == [1.0] and math.isnan(acc["lr=10"])
    assert -3 < values(r, "suggested", "log10_lr")[0] < 0.5 and acc["suggested"] > acc["lr=0.001"]


@pytest.mark.slow
def test_momentum_and_adaptive_optimizers_converge_faster(study) -> None:  # noqa: ANN001
    r = study("momentum")
    assert values(r, "momentum_0.9", "train_loss")[0] < values(r, "sgd", "train_loss")[0] - 0.2
    r = study("adaptive")
    sgd = values(r, "sgd_lr0.01", "train_loss")[0]
    assert max(values(r, g, "train_loss")[0] for g in ("adam_lr1e-3", "rmsprop_lr1e-3")) < sgd - 0.2


@pytest.mark.slow
def test_dropout_narrows_the_train_val_gap(study) -> None:  # noqa: ANN001
    r = study("dropout", "epochs=10")
    assert values(r, "dropout_0.5", "gap")[0] < values(r, "dropout_0", "gap")[0]


@pytest.mark.slow
def test_proximal_l1_zeroes_weights_exactly_and_subgradient_l1_does_not(study) -> None:  # noqa: ANN001
    """Planted bug: the proximal step left out of loop.py (or l1_mode ignored) gives 0 zeros."""
    r = study("l1_vs_l2", "batch_size=10", "lr=0.3", seeds=2)  # 90 steps: 0.0135 shrinkage
    assert all(v > 0.05 for v in values(r, "l1_proximal", "zero_fraction"))
    assert all(v < 1e-3 for v in values(r, "l1_subgradient", "zero_fraction"))
    assert values(r, "l2", "zero_fraction") == [0.0, 0.0]
    assert verdicts(r)["proximal L1 zeroes weights (vs L2)"] == "supported"
    assert verdicts(r)["subgradient L1 zeroes weights (vs L2)"] == "not supported"


@pytest.mark.slow
def test_augmentation_narrows_the_train_val_gap(study) -> None:  # noqa: ANN001
    r = study("augmentation")
    assert values(r, "standard", "gap")[0] < values(r, "none", "gap")[0]


@pytest.mark.slow
def test_early_stopping_stops_before_the_end_and_keeps_the_best_epoch(study) -> None:  # noqa: ANN001
    r = study("early_stopping")
    assert (
        values(r, "early_stopping", "epochs_run")[0]
        < values(r, "no_early_stopping", "epochs_run")[0]
    )
    for label in ("early_stopping", "no_early_stopping"):  # counted from metrics.csv
        assert values(r, label, "epochs_run") == [float(len(rows(r, label)))]
    full = rows(r, "no_early_stopping")
    best = min(full, key=lambda row: row["val_loss"])["epoch"]
    assert values(r, "no_early_stopping", "best_val_epoch") == [best]
    assert values(r, "early_stopping", "kept_epoch")[0] >= 1


@pytest.mark.slow
def test_batch_norm_study_finds_the_highest_lr_that_trains(study) -> None:  # noqa: ANN001
    """The highest lr whose last train loss is under TRAINED, and the spread of those losses,
    recomputed from each lr's metrics.csv (a diverged run, no finite loss, counts as chance).
    Planted bugs caught: the lowest lr that trains, the first epoch's loss, labels swapped."""
    r = study("batch_norm", "epochs=2")
    for bn in ("bn", "no_bn"):
        finals = {}
        for lr in studies.BN_LRS:
            history, diverged = rows(r, f"{bn}_lr{lr}"), failed(r, f"{bn}_lr{lr}")
            loss = math.nan if diverged else history[-1]["train_loss"]
            finals[lr] = min(loss, studies.CHANCE_LOSS) if math.isfinite(loss) else (
                studies.CHANCE_LOSS)
        trained = [lr for lr, loss in finals.items() if loss < studies.TRAINED]
        expected = math.log10(max(trained)) if trained else -3.0
        assert values(r, bn, "log10_max_lr_trained") == [expected]
        spread = values(r, bn, "final_loss_spread")[0]
        assert spread == pytest.approx(statistics.pstdev(finals.values()), abs=1e-12)
        first = rows(r, f"{bn}_lr0.03")[0]["train_loss"]
        assert values(r, bn, "train_loss_epoch1_lr0.03") == [first]


@pytest.mark.slow
def test_learning_curves_give_every_size_the_same_steps(study) -> None:  # noqa: ANN001
    """Planted bug: fixed epochs (no equal_steps plan) gives 2 steps at 10 samples, 4 at 150."""
    r = study("learning_curves", "epochs=2")
    steps = {g: s["steps"]["values"][0] for g, s in r["stats"].items() if "steps" in s}
    assert len(steps) == 6 and max(steps.values()) <= 1.5 * min(steps.values())
    large, small = r["stats"]["large_mlp_[512,512]"], r["stats"]["small_mlp_[8]"]
    assert large["gap_smallest"]["values"][0] > small["gap_smallest"]["values"][0]


def test_seeds_must_be_a_positive_count() -> None:
    from trainkit.errors import UserError

    with pytest.raises(UserError, match="seeds=0: give how many seeds"):
        studies.run_studies("symmetry", ["seeds=0"])


def test_an_unknown_study_is_one_line_naming_the_known_ones() -> None:
    from trainkit.errors import UserError

    with pytest.raises(UserError, match="study 'nope' unknown: choose one of symmetry, init_scale"):
        studies.run_studies("nope", [])


def test_a_diverged_variant_is_a_result_not_a_crash(fmnist_slice: Path, tmp_path: Path) -> None:
    overrides = ["seeds=1", f"data.root={fmnist_slice}", *TINY, "lr=1e4", "epochs=1"]
    result = studies.run_study("momentum", overrides, tmp_path / "momentum")
    assert "NaN (1/1 diverged)" in result["result"]  # both variants' losses: NaN, said plainly
    assert "not supported" in result["result"]
    assert (tmp_path / "momentum" / "momentum.png").exists()
