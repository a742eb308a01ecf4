"""What the default diagnostics cost: the default CNN trained with diagnostics on and off,
alternating in one process, medians of the training time per epoch. Run:

    .venv/bin/python scripts/bench_diagnostics.py [--repeats 3] [--train-size 25600]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from trainkit import console
from trainkit.config import CONF_DIR, expand_aliases, register_schemas
from trainkit.experiment import run


def epoch_times(overrides: list[str]) -> tuple[float, float]:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=expand_aliases(overrides))
    with tempfile.TemporaryDirectory() as d:
        summary = run(cfg, Path(d))
    final = summary.final
    return final["train_time_s"], final["epoch_time_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=25600)
    args = parser.parse_args()
    register_schemas()
    console.console.quiet = True
    base = ["epochs=1", f"data.train_size={args.train_size}", "data.test_size=1000"]
    results: dict[str, list[tuple[float, float]]] = {"on": [], "off": []}
    for _ in range(args.repeats):
        for mode in ("off", "on"):
            results[mode].append(
                epoch_times([*base, f"diagnostics={'default' if mode == 'on' else 'off'}"])
            )
    med = {m: (statistics.median(t for t, _ in r), statistics.median(e for _, e in r))
           for m, r in results.items()}  # fmt: skip
    steps = -(-args.train_size // 128)
    print(
        f"default CNN, {steps} steps per epoch, diagnostics every 100 steps, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, n={args.repeats} each"
    )
    print(
        f"train time per epoch: off {med['off'][0]:.2f}s  on {med['on'][0]:.2f}s  "
        f"ratio {med['on'][0] / med['off'][0]:.3f}"
    )
    print(
        f"epoch incl. validation and histograms: off {med['off'][1]:.2f}s  on {med['on'][1]:.2f}s"
        f"  ratio {med['on'][1] / med['off'][1]:.3f}"
    )


if __name__ == "__main__":
    main()
