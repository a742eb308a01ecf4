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
