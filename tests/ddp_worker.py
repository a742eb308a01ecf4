"""Run `trainkit ARGS` under torchrun and record, on every rank, what each step did: the
sample indices it trained on, its data loss, and a fingerprint of the weights after the step;
then the epoch metrics. Written to OUT/rank<r>.json. Usage:
torchrun --nproc_per_node=2 tests/ddp_worker.py OUT [ARGS...]"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from trainkit import experiment
from trainkit.cli import main
from trainkit.loop import Callback


class Recorder(Callback):
    def __init__(self, model: object) -> None:
        self.model = model
        self.steps: list[dict] = []
        self.epochs: list[dict] = []

    def on_step_end(self, state: object) -> None:
        digest = hashlib.sha256()
        for p in self.model.parameters():  # type: ignore[attr-defined]
            digest.update(p.detach().cpu().numpy().tobytes())
        self.steps.append({
            "epoch": state.epoch,  # type: ignore[attr-defined]
            "indices": state.batch_indices.tolist(),  # type: ignore[attr-defined]
            "loss": state.last_loss.item(),  # type: ignore[attr-defined]
            "weights": digest.hexdigest(),
        })  # fmt: skip

    def on_epoch_end(self, state: object, metrics: dict) -> None:
        self.epochs.append(metrics)


def record_into(out: Path) -> None:
    fit = experiment.fit

    def fit_and_record(training, dataset, callbacks, state=None, saved=None):  # type: ignore[no-untyped-def]
        recorder = Recorder(training.model)
        try:
            return fit(training, dataset, [*callbacks, recorder], state, saved)
        finally:
            path = out / f"rank{os.environ['RANK']}.json"
            path.write_text(json.dumps({"steps": recorder.steps, "epochs": recorder.epochs}))

    experiment.fit = fit_and_record  # type: ignore[assignment]


if __name__ == "__main__":
    record_into(Path(sys.argv[1]))
    sys.argv = ["trainkit", *sys.argv[2:]]
    main()
