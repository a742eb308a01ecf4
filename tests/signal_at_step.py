"""Run `trainkit ARGS` and send this process SIGNAL once the loop has finished step STEP:
python tests/signal_at_step.py SIGNAL STEP [ARGS...], SIGNAL one of KILL, INT, TERM, or INT2
(two SIGINTs at once); STEP is N, or N*K for the K-th time a step N ends (job K of a sweep).
The signal comes from inside, at an exact step, so the tests that kill and resume runs are not
at the mercy of timing."""

from __future__ import annotations

import os
import signal
import sys

from trainkit import console
from trainkit.cli import main

SIGNALS = {"KILL": [signal.SIGKILL], "INT": [signal.SIGINT], "TERM": [signal.SIGTERM],
           "INT2": [signal.SIGINT, signal.SIGINT]}  # fmt: skip


def send_at(step: int, signals: list[signal.Signals], occurrence: int = 1) -> None:
    on_step_end = console.ProgressPrinter.on_step_end
    seen = [0]

    def on_step_end_then_signal(self: console.ProgressPrinter, state: object) -> None:
        on_step_end(self, state)  # type: ignore[arg-type]
        if state.step == step:  # type: ignore[attr-defined]
            seen[0] += 1
            if seen[0] == occurrence:
                for signum in signals:
                    os.kill(os.getpid(), signum)

    console.ProgressPrinter.on_step_end = on_step_end_then_signal  # type: ignore[method-assign]


if __name__ == "__main__":
    step, _, occurrence = sys.argv[2].partition("*")
    send_at(int(step), SIGNALS[sys.argv[1]], int(occurrence or 1))
    sys.argv = ["trainkit", *sys.argv[3:]]
    main()
