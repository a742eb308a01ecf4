"""Where trainkit's training step goes: `torch.profiler` over a few hundred steps of the real loop
(experiment.build + loop.fit, bench.py's configuration: batch 128, fp32 unless --precision),
after a warm-up. Prints the step time with and without the profiler, the ops with the most self
CPU time, and how much of the step no op accounts for (Python, dispatch, the loop's own work).

    .venv/bin/python scripts/profile_step.py [--model mlp] [--threads 1] [--precision fp32]

Run it on a quiet machine: a second busy process on a 2-vCPU VM makes every small parallel op
wait for a descheduled thread (docs/benchmarks.md, Zen 3, 2026-12-07), and the profile then
shows the VM, not the step.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench import BATCH, WINDOW, trainkit_cfg  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp", choices=["mlp", "cnn"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"])
    parser.add_argument("--windows", type=int, default=3, help=f"profiled {WINDOW}-step windows")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()

    from trainkit import experiment, runtime
    from trainkit.data import Split
    from trainkit.loop import Callback, FitState, fit

    class StopAfter(Callback):
        def __init__(self, epochs: int) -> None:
            self.epochs = epochs

        def on_epoch_end(self, state: FitState, metrics: dict) -> None:
            state.stop = state.epoch >= self.epochs

    def timed_fit(epochs: int) -> float:
        start = time.perf_counter()
        fit(training, dataset, [StopAfter(epochs)])
        return (time.perf_counter() - start) / (epochs * WINDOW)

    cfg = trainkit_cfg(args.model, args.threads, augment=False, precision=args.precision)
    dataset, training = experiment.build(cfg)
    val = dataset.val
    dataset.val = Split(val.images[:256], val.labels[:256])  # validation is not the step
    timed_fit(1)  # warm-up: allocator, kernels chosen, lean step checked
    plain = timed_fit(args.windows)
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as prof:
        profiled = timed_fit(args.windows)
    steps = args.windows * WINDOW
    events = prof.key_averages()
    total_self = sum(e.self_cpu_time_total for e in events) / steps  # µs per step
    print(f"CPU: {runtime.cpu_name()}, torch {torch.__version__}, {args.model}, batch {BATCH}, "
          f"{args.threads} thread(s), {args.precision}")  # fmt: skip
    print(f"step: {plain * 1e3:.3f} ms ({BATCH / plain:,.0f} samples/s); under the profiler "
          f"{profiled * 1e3:.3f} ms, of which ops' self CPU time {total_self / 1e3:.3f} ms")
    print(f"{'op':<40} {'calls/step':>10} {'µs/step':>9} {'share':>6}")
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    for e in ranked[: args.top]:
        per_step = e.self_cpu_time_total / steps
        print(f"{e.key[:40]:<40} {e.count / steps:>10.1f} {per_step:>9.1f} "
              f"{per_step / (profiled * 1e6):>6.1%}")  # fmt: skip
    calls = sum(e.count for e in events) / steps
    print(f"{calls:.0f} profiled op calls a step; outside any op: "
          f"{(profiled * 1e6 - total_self) / 1e3:.3f} ms a step (Python and the loop)")


if __name__ == "__main__":
    main()
