"""The loop's bookkeeping: what it counts per step comes out the same wherever it is read."""

from __future__ import annotations

import pytest
import torch

from trainkit.loop import EpochProgress, PendingSteps


def fresh_progress() -> EpochProgress:
    return EpochProgress(
        order_rng=torch.Generator().get_state(), lr=0.1, momentum=float("nan"), sums={},
        correct=torch.zeros((), dtype=torch.long), nonfinite_at=torch.full((), -1),
    )  # fmt: skip


@pytest.mark.parametrize("fold_after", [None, 1, 2, 3, 4])
def test_pending_steps_count_correct_and_the_first_nan_wherever_the_folds_fall(
    fold_after: int | None,
) -> None:
    torch.manual_seed(0)
    losses = [0.5, 0.4, float("nan"), float("inf"), 0.3]
    steps = [(torch.tensor(v), torch.randn(8, 10), torch.randint(0, 10, (8,))) for v in losses]
    correct = sum(int((logits.argmax(1) == y).sum()) for _, logits, y in steps)
    assert 0 < correct < 40  # a count that could be wrong
    p, pending = fresh_progress(), PendingSteps()
    for number, (loss, logits, y) in enumerate(steps, start=11):  # steps 11..15
        pending.add(number, loss, logits, y)
        if number - 10 == fold_after:  # e.g. an interruption or a log interval
            pending.fold_into(p)
    pending.fold_into(p)
    assert int(p.correct) == correct
    assert int(p.nonfinite_at) == 13  # the first non-finite loss, not the Inf after it
    assert len(pending) == 0


def test_a_nan_already_found_is_kept() -> None:
    p, pending = fresh_progress(), PendingSteps()
    p.nonfinite_at = torch.tensor(4)
    pending.add(9, torch.tensor(float("nan")), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    pending.fold_into(p)
    assert int(p.nonfinite_at) == 4 and int(p.correct) == 2


def test_a_training_step_is_the_textbook_step_written_out_by_hand() -> None:
    """train_step against the same two steps written out: forward on the normalized batch,
    cross-entropy plus l2/2 * sum(w^2) over the weight matrix (not the bias), gradients from
    zero, clipped to a total norm of 0.3, then SGD. Planted bugs caught: gradients not zeroed
    (they add up over the two steps), the penalty on the bias or without the 1/2, clipping after
    the step."""
    import copy
    from contextlib import nullcontext

    from torch import nn

    from trainkit.data import Normalizer
    from trainkit.loop import StepSpec, Training, train_step

    from .conftest import compose_config

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    by_hand = copy.deepcopy(model)
    cfg = compose_config(["regularization.l2=0.1", "regularization.clip_grad_norm=0.3"])
    t = Training(
        model, nn.functional.cross_entropy, torch.optim.SGD(model.parameters(), lr=0.5), None,
        "epoch", Normalizer([0.4], [0.2], torch.device("cpu")), None, cfg.regularization,
        cfg.trainer,
    )  # fmt: skip
    images = torch.randint(0, 256, (6, 1, 2, 2), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    sums = {key: torch.zeros(()) for key in ("loss", "l1", "l2", "grad_norm")}
    spec = StepSpec.of(t)
    assert (spec.l1, spec.l2, spec.clip_norm, spec.proximal) == (0.0, 0.1, 0.3, None)
    for _ in range(2):
        data_loss, loss, logits = train_step(t, spec, images, labels, sums, nullcontext())

    sgd = torch.optim.SGD(by_hand.parameters(), lr=0.5)
    norms, penalties = [], []
    for _ in range(2):
        sgd.zero_grad()
        x = t.normalize(images)  # (x/255 - 0.4) / 0.2: tested in test_data.py
        penalty = 0.1 / 2 * by_hand[1].weight.pow(2).sum()
        (nn.functional.cross_entropy(by_hand(x), labels) + penalty).backward()
        norms.append(nn.utils.clip_grad_norm_(by_hand.parameters(), 0.3))
        penalties.append(penalty.detach())
        sgd.step()
    for mine, theirs in zip(model.parameters(), by_hand.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(sums["grad_norm"], norms[0] + norms[1])
    torch.testing.assert_close(sums["l2"], penalties[0] + penalties[1])
    assert norms[0] > 0.3  # the clip acted
    torch.testing.assert_close(loss - data_loss, penalties[1])
    assert logits.shape == (6, 3)


def test_callback_state_is_kept_by_state_key_and_two_under_one_key_is_an_error() -> None:
    """Planted bug: keyed by class name alone, the second counter's state overwrote the first's
    in the checkpoint and both resumed with it."""
    from trainkit.callbacks import callback_states
    from trainkit.loop import Callback, FitState, restore_callbacks

    class Counter(Callback):
        def __init__(self, key: str | None, count: int) -> None:
            self.key, self.count = key, count

        @property
        def state_key(self) -> str:
            return self.key or super().state_key

        def state_dict(self) -> dict:
            return {"count": self.count}

        def load_state_dict(self, saved: dict, state: FitState) -> None:
            self.count = saved["count"]

    saved = callback_states([Counter("train", 3), Counter("val", 5), Callback()])
    assert saved == {"train": {"count": 3}, "val": {"count": 5}}
    resumed = [Counter("train", 0), Counter("val", 0)]
    restore_callbacks(resumed, saved, FitState(1, 1))
    assert [cb.count for cb in resumed] == [3, 5]
    with pytest.raises(ValueError, match="two callbacks keep state under 'Counter'"):
        callback_states([Counter(None, 1), Counter(None, 2)])


def test_a_saved_state_that_does_not_fit_is_one_line_for_the_callbacks_and_the_model() -> None:
    """A callback's state and the model's weights from a checkpoint that does not fit what its
    config built: one UserError line naming the mismatch, not torch's traceback."""
    from types import SimpleNamespace

    from torch import nn

    from trainkit.callbacks import EarlyStopping
    from trainkit.errors import UserError
    from trainkit.loop import FitState, restore_callbacks
    from trainkit.resume import restore

    from .conftest import compose_config

    cfg = compose_config([])
    stopping = EarlyStopping(cfg.regularization.early_stopping, nn.Linear(2, 2))
    with pytest.raises(UserError, match=r"^the checkpoint does not fit its own config "
                                        r"\(.*best_epoch"):  # fmt: skip
        restore_callbacks([stopping], {"EarlyStopping": {"best": 0.5}}, FitState(1, 1))
    model = nn.Linear(2, 2)  # what restore reads of a Training:
    t = SimpleNamespace(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                        scheduler=None, scaler=None)  # fmt: skip
    wrong = {"model": nn.Linear(3, 2).state_dict()}
    with pytest.raises(UserError, match=r"^the checkpoint does not fit its own config "
                                        r"\(Error\(s\) in loading state_dict"):  # fmt: skip
        restore(wrong, t, torch.device("cpu"))
