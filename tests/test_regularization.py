"""Regularizers and augmentation, through the real training step."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from trainkit.augment import Augment, random_erase, random_translate
from trainkit.callbacks import EarlyStopping
from trainkit.checkpoint import config_of
from trainkit.data import Normalizer, Split
from trainkit.loop import FitState, Training, restore_if_asked, train_epoch

from .conftest import compose_config, small_overrides


def one_step(model: nn.Module, *overrides: str, data_loss_zero: bool = True) -> dict:
    """One real training step with SGD lr=1, so a parameter's change is minus its gradient."""
    cfg = compose_config(["optimizer=sgd", "lr=1.0", "batch_size=4", *overrides])
    split = Split(
        torch.randint(0, 256, (4, 1, 2, 2), dtype=torch.uint8), torch.tensor([0, 1, 2, 0])
    )

    def zero_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return (logits * 0).sum()  # no data gradient: only the penalty moves the weights

    loss_fn = zero_loss if data_loss_zero else nn.functional.cross_entropy
    t = Training(
        model, loss_fn, torch.optim.SGD(model.parameters(), lr=1.0), None, "step",
        Normalizer([0.5], [0.5], torch.device("cpu")), None, cfg.regularization, cfg.trainer,
    )  # fmt: skip
    return train_epoch(t, split, torch.Generator().manual_seed(0), FitState(1, 1), [])


def linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3))


def test_l1_gradient_is_lambda_times_sign_of_w_and_biases_are_spared() -> None:
    model = linear()
    w0, b0 = model[1].weight.detach().clone(), model[1].bias.detach().clone()
    out = one_step(model, "regularization=l1", "regularization.l1=0.01")
    torch.testing.assert_close(w0 - model[1].weight.detach(), 0.01 * torch.sign(w0))
    assert torch.equal(model[1].bias.detach(), b0)
    assert out["l1"] == pytest.approx(0.01 * w0.abs().sum().item(), rel=1e-5)


def test_l2_penalty_gradient_is_lambda_times_w() -> None:
    model = linear()
    w0 = model[1].weight.detach().clone()
    out = one_step(model, "regularization=l2", "regularization.l2=0.1")
    torch.testing.assert_close(w0 - model[1].weight.detach(), 0.1 * w0)
    assert out["l2"] == pytest.approx(0.05 * w0.pow(2).sum().item(), rel=1e-5)


def test_clip_by_norm_logs_the_norm_before_clipping_and_caps_the_step() -> None:
    model = linear()
    w0 = model[1].weight.detach().clone()
    out = one_step(model, "regularization.l2=1.0", "regularization.clip_grad_norm=0.01")
    assert out["grad_norm"] == pytest.approx(w0.norm().item(), rel=1e-5)  # grad = 1.0 * w
    assert (w0 - model[1].weight.detach()).norm().item() == pytest.approx(0.01, rel=1e-4)


def test_clip_by_value_clamps_every_entry() -> None:
    model = linear()
    w0 = model[1].weight.detach().clone()
    one_step(model, "regularization.l2=1.0", "regularization.clip_grad_value=0.05")
    torch.testing.assert_close(w0 - model[1].weight.detach(), w0.clamp(-0.05, 0.05))


def scripted_early_stopping(curve: list[float], **cfg: object) -> tuple[FitState, nn.Module]:
    """Feed a scripted metric curve as fit does (early stopping asks for the best weights, fit
    restores them); the model's weight records the epoch it was saved at."""
    model = nn.Linear(1, 1, bias=False)
    settings = {"monitor": "val_loss", "mode": None, "patience": 2, "min_delta": 0.0,
                "restore_best": True} | cfg  # fmt: skip
    stopper = EarlyStopping(OmegaConf.create(settings), model)
    state = FitState(epochs=len(curve), steps_per_epoch=1)
    for epoch, value in enumerate(curve, start=1):
        state.epoch = epoch
        with torch.no_grad():
            model.weight.fill_(epoch)  # "training" changes the weights every epoch
        stopper.on_epoch_end(state, {settings["monitor"]: value})
        restore_if_asked(model, state)
        if state.stop:
            break
    return state, model


def test_early_stopping_stops_at_the_expected_epoch_and_restores_the_best_weights() -> None:
    state, model = scripted_early_stopping([1.0, 0.8, 0.7, 0.75, 0.72, 0.6, 0.5])
    # Best 0.7 at epoch 3; epochs 4 and 5 do not improve: patience 2 runs out at epoch 5.
    assert state.stop and state.epoch == 5
    assert model.weight.item() == 3.0
    assert state.stop_reason == (
        "early stopping after epoch 5: val_loss did not improve on 0.7 (epoch 3) by more than "
        "0.0 for 2 epochs; restored the weights of epoch 3"
    )


def test_the_mode_follows_the_monitor_unless_given() -> None:
    state, model = scripted_early_stopping([0.70, 0.80, 0.78, 0.79], monitor="val_loss")
    assert state.stop and model.weight.item() == 1.0  # losses: lower is better
    state, _ = scripted_early_stopping([0.70, 0.80, 0.85], monitor="val_acc", mode=None)
    assert not state.stop  # accuracies: higher is better, so it keeps improving


def test_min_delta_counts_small_gains_as_no_gain() -> None:
    state, _ = scripted_early_stopping([1.0, 0.99, 0.985, 0.98], min_delta=0.05)
    assert state.stop and state.epoch == 3


def test_without_restore_the_last_weights_stay() -> None:
    state, model = scripted_early_stopping([1.0, 2.0, 3.0], restore_best=False)
    assert state.stop and model.weight.item() == 3.0


def test_augment_gives_each_sample_its_own_shift_and_flip() -> None:
    torch.manual_seed(0)
    image = torch.arange(64, dtype=torch.uint8).view(1, 1, 8, 8)
    batch = image.expand(32, 1, 8, 8)
    out = Augment(compose_config(["augment=standard"]).augment)(batch)
    distinct = {tuple(x.flatten().tolist()) for x in out}
    assert len(distinct) > 10  # identical inputs, different outputs
    # Each output is the input flipped or not, shifted by some (dy, dx) within 2 px, zero-filled.
    padded = nn.functional.pad(image.float(), (2, 2, 2, 2))[0, 0]
    candidates = [
        view
        for source in (padded, padded.flip(1))
        for dy in range(5)
        for dx in range(5)
        for view in [source[dy : dy + 8, dx : dx + 8]]
    ]
    for x in out:
        assert any(torch.equal(x[0], c) for c in candidates)


def test_translate_keeps_the_image_within_its_frame() -> None:
    x = torch.ones(16, 3, 5, 5)
    out = random_translate(x, 1)
    assert out.shape == x.shape
    # A shift of up to one pixel blanks at most one row and one column.
    assert torch.all(out.sum(dim=(1, 2, 3)) >= 3 * 16)


def erased_rectangles(x: torch.Tensor, out: torch.Tensor) -> list[tuple[int, int]]:
    """The (height, width) of each image's erased rectangle, after checking that what changed
    is one solid rectangle, the same in every channel, of noise that varies within it."""
    sizes = []
    for before, after in zip(x, out, strict=True):
        changed = after != before  # [C, H, W]
        assert all(torch.equal(changed[0], c) for c in changed)  # one rectangle for all channels
        if not changed.any():
            continue
        rows = changed[0].any(1).nonzero().flatten()
        cols = changed[0].any(0).nonzero().flatten()
        assert rows[-1] - rows[0] + 1 == len(rows) and cols[-1] - cols[0] + 1 == len(cols)
        assert changed[0].sum() == len(rows) * len(cols)  # solid
        noise = after[changed]
        assert noise.min() >= 0 and noise.max() <= 255 and noise.std() > 30  # noise, not a fill
        sizes.append((len(rows), len(cols)))
    return sizes


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 20, 36)])
def test_random_erasing_puts_one_rectangle_of_noise_in_each_chosen_image(
    shape: tuple[int, int, int],
) -> None:
    torch.manual_seed(0)
    x = torch.full((2000, *shape), -1.0)  # no erased pixel (0..255) can equal -1
    x = x.to(memory_format=torch.channels_last)
    out = random_erase(x, 0.5, (0.02, 0.25))
    assert out.is_contiguous(memory_format=torch.channels_last)
    sizes = erased_rectangles(x, out)
    assert 900 < len(sizes) < 1100  # about half the images, p=0.5
    h, w = shape[1:]
    area = torch.tensor([a * b / (h * w) for a, b in sizes])
    # Each image its own size, about uniform over 2%..25% of the image (mean 0.135, and the
    # mean of 1000 within +-0.002), its sides rounded; one side a pixel too long gives ~0.146,
    # an area taken as h*h on the 20x36 images ~0.075.
    assert 0.128 < area.mean() < 0.140 and area.min() >= 0.01 and area.max() <= 0.3
    aspect = torch.tensor([a / b for a, b in sizes])
    assert (aspect > 2).sum() > 50 and (aspect < 0.5).sum() > 50  # tall ones and wide ones
    assert torch.equal(random_erase(x, 0.0, (0.02, 0.25)), x)


def test_augment_erases_only_when_asked_and_old_configs_have_it_off() -> None:
    batch = torch.full((64, 1, 28, 28), 7, dtype=torch.uint8)
    assert torch.equal(Augment(compose_config(["augment=none"]).augment)(batch), batch.float())
    erasing = Augment(compose_config(["augment=none", "augment.erase=1"]).augment)
    assert erasing.active and (erasing(batch) != 7).any(dim=(1, 2, 3)).all()
    saved = OmegaConf.to_container(compose_config(["augment=standard"]))
    del saved["augment"]["erase"], saved["augment"]["erase_area"]  # saved before erasing
    assert Augment(config_of({"config": saved}, Path("last.pt")).augment).erase == 0.0


def test_affine_rotation_and_zoom_vary_per_sample() -> None:
    torch.manual_seed(0)
    batch = torch.zeros(8, 1, 16, 16, dtype=torch.uint8)
    batch[:, :, 4:12, 7:9] = 255  # a vertical bar
    out = Augment(compose_config(["augment=affine"]).augment)(batch)
    assert out.dtype == torch.float32 and out.shape == batch.shape
    assert len({tuple(x.flatten().round().tolist()) for x in out}) == 8


def test_augmentation_touches_training_batches_only(
    fmnist_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainkit.experiment import run

    from .conftest import small_overrides

    sizes: list[int] = []
    original = Augment.__call__

    def spy(self: Augment, images: torch.Tensor) -> torch.Tensor:
        sizes.append(len(images))
        return original(self, images)

    monkeypatch.setattr(Augment, "__call__", spy)
    run(compose_config([*small_overrides(fmnist_slice), "augment=standard"]), tmp_path)
    # 2 epochs x 10 training batches of 100; validation (200) and test (400) never pass through.
    assert sizes == [100] * 20


def test_penalties_and_grad_norm_reach_metrics_and_tensorboard(
    fmnist_slice: Path, tmp_path: Path
) -> None:
    from trainkit.experiment import run

    from .conftest import small_overrides
    from .tensorboard_events import scalar_tags

    overrides = [*small_overrides(fmnist_slice), "regularization.l1=1e-5",
                 "regularization.l2=1e-4", "regularization.clip_grad_norm=5.0"]  # fmt: skip
    summary = run(compose_config(overrides), tmp_path)
    final = summary.final
    assert final["l1"] > 0 and final["l2"] > 0 and math.isfinite(final["grad_norm"])
    penalties = {"curves/loss_l1", "curves/loss_l2"}  # train's, beside its loss
    assert penalties <= scalar_tags(tmp_path / "train")
    assert "diagnostics/grad_norm/preclip" in scalar_tags(tmp_path)


def test_test_time_mirroring_averages_the_logits_of_image_and_mirror() -> None:
    from trainkit.augment import TestTimeViews
    from trainkit.data import Normalizer
    from trainkit.loop import predict

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    images = torch.randint(0, 256, (5, 1, 3, 4), dtype=torch.uint8)
    normalize = Normalizer([0.5], [0.25], torch.device("cpu"))
    x = (images.float() / 255 - 0.5) / 0.25
    expected = (model(x) + model(x.flip(-1))) / 2
    mirrored = predict(model, images, normalize, TestTimeViews(hflip=True))
    torch.testing.assert_close(mirrored, expected)
    torch.testing.assert_close(predict(model, images, normalize), model(x))
    assert not torch.allclose(expected, model(x))


def test_test_time_shifts_are_the_image_moved_one_way_each_with_black_pixels_in() -> None:
    from trainkit.augment import TestTimeViews

    images = torch.arange(1, 13, dtype=torch.uint8).view(1, 1, 3, 4)
    views = TestTimeViews(shift=1)(images)
    assert len(views) == 5
    assert torch.equal(views[0], images)
    down, up, right, left = (v[0, 0] for v in views[1:])
    grid = images[0, 0]
    assert torch.equal(down[1:], grid[:-1]) and not down[0].any()
    assert torch.equal(up[:-1], grid[1:]) and not up[-1].any()
    assert torch.equal(right[:, 1:], grid[:, :-1]) and not right[:, 0].any()
    assert torch.equal(left[:, :-1], grid[:, 1:]) and not left[:, -1].any()
    both = TestTimeViews(hflip=True, shift=1)(images)
    assert len(both) == 10 and torch.equal(both[6], views[1].flip(-1))


@pytest.mark.parametrize(("augment", "warned"), [("none", True), ("flip", False)])
def test_mirroring_at_test_time_warns_when_training_never_mirrors(
    augment: str, warned: bool, fmnist_slice: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainkit.experiment import build

    cfg = compose_config([f"data.root={fmnist_slice}", "data.val_size=200", f"augment={augment}",
                          "augment.tta_hflip=true"])  # fmt: skip
    _, training = build(cfg)
    assert training.tta.hflip
    out = capsys.readouterr().out
    assert ("test-time mirroring is likely to hurt" in out) == warned


@pytest.mark.parametrize(("translate", "warned"), [(0, True), (2, False)])
def test_shifting_at_test_time_warns_when_training_never_shifts_that_far(
    translate: int, warned: bool, fmnist_slice: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainkit.augment import TestTimeViews
    from trainkit.experiment import build

    cfg = compose_config([f"data.root={fmnist_slice}", "data.val_size=200",
                          f"augment.translate={translate}", "augment.tta_shift=1"])  # fmt: skip
    _, training = build(cfg)
    assert training.tta == TestTimeViews(hflip=False, shift=1)
    out = capsys.readouterr().out
    assert ("test-time views shifted further are likely to hurt" in out) == warned


@pytest.mark.parametrize("channels_last", [False, True])
def test_translate_crops_each_sample_at_its_own_drawn_offset(channels_last: bool) -> None:
    x = torch.randint(0, 256, (6, 3, 7, 9)).float()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    torch.manual_seed(1)
    out = random_translate(x, 2)
    torch.manual_seed(1)  # the same draws: dy for every sample, then dx
    dy, dx = torch.randint(0, 5, (6,)), torch.randint(0, 5, (6,))
    assert len(set(zip(dy.tolist(), dx.tolist(), strict=True))) > 1
    padded = nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(6):
        assert torch.equal(out[i], padded[i, :, dy[i] : dy[i] + 7, dx[i] : dx[i] + 9])
    if channels_last:  # a channels-last batch stays one, for the channels-last model
        assert out.is_contiguous(memory_format=torch.channels_last)


def test_a_run_saved_before_tta_shift_existed_builds_without_it(fmnist_slice: Path) -> None:
    """Resume and evaluate read a run's config from its checkpoint (checkpoint.config_of):
    older runs lack augment.tta_shift."""
    from trainkit.augment import TestTimeViews
    from trainkit.experiment import build

    overrides = [f"data.root={fmnist_slice}", "data.val_size=200", "augment=flip",
                 "augment.tta_hflip=true"]  # fmt: skip
    saved = OmegaConf.to_container(compose_config(overrides))
    del saved["augment"]["tta_shift"]
    _, training = build(config_of({"config": saved}, Path("last.pt")))
    assert training.tta == TestTimeViews(hflip=True, shift=0)


def test_validation_scores_the_image_alone_and_the_test_set_its_views(fmnist_slice: Path) -> None:
    from trainkit.experiment import build, test_score
    from trainkit.loop import evaluate, fit

    cfg = compose_config([*small_overrides(fmnist_slice), "epochs=1", "augment=flip",
                          "augment.translate=1", "augment.tta_hflip=true",
                          "augment.tta_shift=1"])  # fmt: skip
    dataset, training = build(cfg)
    state = fit(training, dataset, []).state
    model, normalize, loss_fn = training.model, training.normalize, training.loss_fn
    image = evaluate(model, dataset.val, normalize, loss_fn, 500)
    views = evaluate(model, dataset.val, normalize, loss_fn, 500, training.tta)
    assert state.history[-1]["val_loss"] == image["loss"] != views["loss"]

    test = test_score(cfg, dataset, training)
    assert (
        test["loss"] == evaluate(model, dataset.test, normalize, loss_fn, 500, training.tta)["loss"]
    )
    matrix = test["confusion_matrix"]  # from the same predictions as the accuracy
    assert matrix.shape == (10, 10) and int(matrix.sum()) == len(dataset.test)
    assert int(matrix.trace()) / len(dataset.test) == test["acc"]
