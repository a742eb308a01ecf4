"""Sweep jobs in parallel (hydra/launcher=parallel, Hydra's joblib launcher) against the same
jobs one after another (Hydra's basic launcher), wall time of the whole `trainkit -m` command,
alternating the two, medians. Run:

    .venv/bin/python scripts/bench_sweep.py [--repeats 3] [--jobs 4] [--n-jobs -1] [-- overrides]

The default jobs are four seeds of the default experiment, one epoch each, on the full
Fashion-MNIST. The ratio is parallel / sequential: below 1 the parallel launcher wins.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

TRAINKIT = shutil.which("trainkit", path=str(Path(sys.executable).parent)) or "trainkit"


def sweep_seconds(args: list[str]) -> float:
    with tempfile.TemporaryDirectory() as cwd:
        start = time.perf_counter()
        result = subprocess.run([TRAINKIT, "-m", *args], cwd=cwd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            sys.exit(f"trainkit -m {' '.join(args)} failed:\n{result.stderr[-2000:]}")
        return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=4, help="seeds swept: the number of jobs")
    parser.add_argument("--n-jobs", type=int, default=-1, help="hydra.launcher.n_jobs")
    parser.add_argument("overrides", nargs="*", default=["epochs=1"])
    args = parser.parse_args()
    seeds = "seed=" + ",".join(str(i) for i in range(args.jobs))
    sequential = [seeds, *args.overrides]
    parallel = [*sequential, "hydra/launcher=parallel", f"hydra.launcher.n_jobs={args.n_jobs}"]
    times: dict[str, list[float]] = {"sequential": [], "parallel": []}
    for _ in range(args.repeats):
        times["sequential"].append(sweep_seconds(sequential))
        times["parallel"].append(sweep_seconds(parallel))
        print(f"  sequential {times['sequential'][-1]:.1f}s  parallel {times['parallel'][-1]:.1f}s",
              flush=True)  # fmt: skip
    med = {name: statistics.median(t) for name, t in times.items()}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"{args.jobs} jobs ({' '.join(args.overrides)}), {cores} cores, torch {torch.__version__}, "
        f"n={args.repeats} each; parallel: hydra/launcher=parallel n_jobs={args.n_jobs}"
    )
    print(
        f"median wall time: sequential {med['sequential']:.1f}s  parallel {med['parallel']:.1f}s  "
        f"ratio {med['parallel'] / med['sequential']:.2f}"
    )


if __name__ == "__main__":
    main()
