"""Training and evaluation throughput of trainkit's loop against the loops people write by hand,
measured side by side in one run on the same model, batch size, data and thread count:

  trainkit        trainkit's own loop (experiment.build + loop.fit) with a run's callbacks:
                  progress bar, TensorBoard, metrics.csv and diagnostics at their default sampling
  trainkit+aug    the same with augment=standard (random 2-px shift + horizontal flip)
  tutorial        the PyTorch tutorials' loop: torchvision FashionMNIST + ToTensor/Normalize +
                  DataLoader(shuffle=True), forward/loss/backward/step, `.item()` in evaluation
  bare            the framework limit: the whole set preloaded as a normalized float tensor,
                  batches by index, nothing but forward, loss, backward, step (fp32, NCHW,
                  torch.optim.Adam with its defaults)
  bare+cl, bare+fused, bare+best
                  the bare loop with channels_last, with Adam(fused=True), and with both plus
                  glibc's allocator kept from returning freed buffers to the OS: the best
                  variants found on this machine class (../shared/PERF-NOTES.md)
  trainkit+bf16, bare+bf16
                  trainkit with trainer.precision=bf16, and bare+best under bf16 autocast: only
                  on a CPU with a bf16 path (avx512_bf16 or amx_bf16), skipped with a note
                  elsewhere (Zen 3 emulates bf16 ~100x slower than fp32). Every other row is
                  fp32 (trainer.precision=fp32: auto would be bf16 on an AMX CPU).

The report's first line names the CPU (model name, family and model, its avx2/avx512/bf16/amx
flags) and torch: compare figures only within one CPU (docs/benchmarks.md, one table per CPU).

Each measurement runs in its own process (so each reports its own peak RSS), after a warm-up;
the loops alternate round by round so that a VM's drift hits them alike; each measurement is its
fastest window, and figures are medians over the rounds.
Run:

    .venv/bin/python scripts/bench.py [--models cnn mlp] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

BATCH = 128
# Each measurement times WINDOWS windows of WINDOW steps and keeps the fastest, as timeit keeps
# the fastest repeat: this VM's speed drops by up to half for 5-30 s at a time, in any loop
# (no steal time shows in /proc/stat), and noise of that kind only ever slows a window down.
# A window holds one diagnostics sample (every 100 steps) and two log-interval syncs (every
# 50): the fastest cannot leave out trainkit's periodic costs. Each measurement also goes on
# until its windows span MIN_SECONDS: with a fixed count alone, a fast loop's windows (12 MLP
# windows of trainkit: 2 s) could all fall in one slow stretch while a slow loop's (the
# tutorial's: 17 s) outlast it.
WINDOW = 100
WINDOWS = {"cnn": 3, "mlp": 12}  # at least
MIN_SECONDS = 10.0
WARMUP_STEPS = 10
BF16_LOOPS = ["trainkit+bf16", "bare+bf16"]
LOOPS = ["trainkit", "trainkit+aug", "tutorial", "bare", "bare+cl", "bare+fused", "bare+best",
         *BF16_LOOPS]  # fmt: skip
# The flags the report names: which vector and matrix units this CPU has.
NAMED_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST's, as in conf/data/fashion_mnist.yaml


# ------------------------------------------------------------------ the loops (child process)


def trainkit_cfg(model: str, threads: int, augment: bool, precision: str = "fp32"):  # noqa: ANN201
    from hydra import compose, initialize_config_dir

    from trainkit.config import CONF_DIR, register_schemas

    register_schemas()
    overrides = [
        f"model={model}",
        f"trainer.batch_size={BATCH}",
        f"trainer.threads={threads}",
        f"trainer.max_steps_per_epoch={WINDOW}",  # an epoch is a window
        "trainer.epochs=100000",  # the first epoch is the warm-up; MeasuredEnough stops it
        "data.download=false",
        "diagnostics.pictures=false",
        f"augment={'standard' if augment else 'none'}",
        f"trainer.precision={precision}",
        *os.environ.get("BENCH_TRAINKIT_OVERRIDES", "").split(),  # --trainkit-overrides
    ]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


def run_trainkit(model: str, threads: int, augment: bool, precision: str = "fp32") -> dict:
    from trainkit import experiment, hparams
    from trainkit.callbacks import Callback, CSVLogger, TensorBoardLogger, sample_every
    from trainkit.console import ProgressPrinter
    from trainkit.diagnostics import Diagnostics
    from trainkit.loop import FitState, evaluate, fit

    class MeasuredEnough(Callback):
        """Stops the fit once its epochs after the warm-up are enough_windows. A window is cut
        from a real epoch, so the periodic costs keep a real epoch's cadence: sampled every
        min(every_n_steps, steps_per_epoch // 4) steps of the full epoch (one sample in 100
        steps at the defaults), not of the 100-step window (which would give four)."""

        def __init__(self, tb: TensorBoardLogger, diagnostics: Diagnostics) -> None:
            self.tb, self.diagnostics = tb, diagnostics

        def on_fit_start(self, state: FitState) -> None:  # after theirs: fit calls in order
            full_epoch = len(dataset.train) // BATCH
            self.tb.every = sample_every(self.tb.every_n_steps, full_epoch)
            d = cfg.diagnostics
            self.diagnostics.every = sample_every(d.every_n_steps, full_epoch)
            self.diagnostics.norm_every = min(d.total_norm_every_n_steps, self.diagnostics.every)

        def on_epoch_end(self, state: FitState, metrics: dict) -> None:
            if state.epoch == 1:  # the warm-up
                self.first = time.perf_counter()
            elif enough_windows(state.epoch - 1, model, time.perf_counter() - self.first):
                state.stop = True

    cfg = trainkit_cfg(model, threads, augment, precision)
    dataset, t = experiment.build(cfg)
    with tempfile.TemporaryDirectory() as logdir:
        tb = TensorBoardLogger(Path(logdir), "", t.optimizer, cfg.trainer.log_every_n_steps,
                               hparams.collect(cfg), cfg.trainer.monitor)  # fmt: skip
        callbacks = [ProgressPrinter(BATCH), tb, CSVLogger(Path(logdir) / "metrics.csv"),
                     Diagnostics(cfg.diagnostics, t.model, tb.writer)]  # fmt: skip
        state = fit(t, dataset, [*callbacks, MeasuredEnough(tb, callbacks[-1])]).state
        tb.close("completed")
    batch = cfg.trainer.eval_batch_size
    return {
        "train": max(m["samples_per_s"] for m in state.history[1:]),
        "eval": timed_eval(
            lambda: evaluate(t.model, dataset.test, t.normalize, t.loss_fn, batch),
            len(dataset.test),
        ),  # fmt: skip
    }


def timed_eval(evaluate_once, n: int) -> float:  # noqa: ANN001
    evaluate_once()  # warm-up
    start = time.perf_counter()
    evaluate_once()
    return n / (time.perf_counter() - start)


def same_model(model: str) -> nn.Module:
    """trainkit's model with its default init: every loop trains exactly the same network."""
    from trainkit.experiment import build_model
    from trainkit.init import initialize

    cfg = trainkit_cfg(model, 1, False)
    torch.manual_seed(0)
    net = build_model(cfg.model, (1, 28, 28), 10)
    initialize(net, cfg.init)
    return net


def run_tutorial(model: str, raw_root: str) -> dict:
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    train_data = datasets.FashionMNIST(raw_root, train=True, download=False, transform=transform)
    test_data = datasets.FashionMNIST(raw_root, train=False, download=False, transform=transform)
    train_loader = DataLoader(train_data, batch_size=BATCH, shuffle=True)
    test_loader = DataLoader(test_data, batch_size=BATCH)
    net = same_model(model)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)

    def train(n_steps: int) -> None:
        net.train()
        step = 0
        while step < n_steps:  # as many epochs as it takes
            for X, y in train_loader:
                if step == n_steps:
                    break
                loss = loss_fn(net(X), y)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                step += 1

    def test() -> None:
        net.eval()
        test_loss, correct = 0.0, 0.0
        with torch.no_grad():
            for X, y in test_loader:
                pred = net(X)
                test_loss += loss_fn(pred, y).item()
                correct += (pred.argmax(1) == y).type(torch.float).sum().item()

    train(WARMUP_STEPS)
    return {"train": timed_windows(train, model), "eval": timed_eval(test, len(test_data))}


def timed_windows(train, model: str) -> float:  # noqa: ANN001
    """Samples/s of the fastest window of WINDOW steps (enough_windows says how many)."""
    rates = []
    first = time.perf_counter()
    while not enough_windows(len(rates), model, time.perf_counter() - first):
        start = time.perf_counter()
        train(WINDOW)
        rates.append(WINDOW * BATCH / (time.perf_counter() - start))
    return max(rates)


def enough_windows(count: int, model: str, seconds: float) -> bool:
    return count >= WINDOWS[model] and seconds >= MIN_SECONDS


def run_bare(model: str, channels_last: bool, fused: bool, bf16: bool = False) -> dict:
    from trainkit.data import DEBIAN_FASHION_MNIST, fashion_mnist_files, read_idx

    files = fashion_mnist_files(DEBIAN_FASHION_MNIST)
    images = torch.from_numpy(read_idx(files["train_images"])).unsqueeze(1)
    X = ((images.float() / 255 - MEAN) / STD).contiguous()
    y = torch.from_numpy(read_idx(files["train_labels"])).long()
    net = same_model(model)
    if channels_last:
        X, net = X.to(memory_format=torch.channels_last), net.to(memory_format=torch.channels_last)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, fused=fused or None)
    order, batches = torch.randperm(len(y)), len(y) // BATCH  # an epoch's batches, over again
    done = 0

    def train(n_steps: int) -> None:
        nonlocal done
        net.train()
        for step in range(done, done + n_steps):
            start = step % batches * BATCH
            idx = order[start : start + BATCH]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn(net(X[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        done += n_steps

    train(WARMUP_STEPS)
    return {"train": timed_windows(train, model), "flop": flop_per_sample(net)}


def flop_per_sample(net: nn.Module) -> float:
    """FLOPs of one training sample (forward and backward), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(BATCH, 1, 28, 28)
    with FlopCounterMode(display=False) as counter:
        net(x).sum().backward()
    return counter.get_total_flops() / BATCH


def matmul_gflops(dtype: torch.dtype = torch.float32) -> float:
    """The fastest of 5 timed 4096x4096 matmuls, like the loops' fastest window."""
    a, b = torch.randn(4096, 4096, dtype=dtype), torch.randn(4096, 4096, dtype=dtype)
    a @ b
    times = []
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * 4096**3 / min(times) / 1e9


def child(loop: str, model: str, threads: int, raw_root: str) -> None:
    torch.set_num_threads(threads)
    if loop.startswith("trainkit"):
        precision = "bf16" if loop.endswith("bf16") else "fp32"
        result = run_trainkit(model, threads, loop.endswith("aug"), precision)
    elif loop == "tutorial":
        result = run_tutorial(model, raw_root)
    elif loop.startswith("bare"):
        best = loop in ("bare+best", "bare+bf16")
        if best:
            from trainkit.runtime import keep_freed_memory

            keep_freed_memory()
        channels_last, fused = best or loop == "bare+cl", best or loop == "bare+fused"
        result = run_bare(model, channels_last, fused, bf16=loop == "bare+bf16")
    else:  # "peak"
        result = {"gflops": matmul_gflops()}
        if has_bf16_path():  # emulated, 4096^3 would take ~2 minutes
            result["bf16_gflops"] = matmul_gflops(torch.bfloat16)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


# ------------------------------------------------------------------ the driver (parent process)


def raw_files_for_torchvision(folder: Path) -> str:
    """torchvision's FashionMNIST (download=False) reads uncompressed files under
    <root>/FashionMNIST/raw/; Debian ships the .gz files only."""
    from trainkit.data import DEBIAN_FASHION_MNIST, FASHION_MNIST_FILES, fashion_mnist_files

    files = fashion_mnist_files(DEBIAN_FASHION_MNIST)
    if files is None:
        sys.exit("Fashion-MNIST is missing: run scripts/setup.sh")
    raw = folder / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for key, name in FASHION_MNIST_FILES.items():
        (raw / name).write_bytes(gzip.decompress(Path(files[key]).read_bytes()))
    return str(folder)


def measure(loop: str, model: str, threads: int, raw_root: str) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    args = [sys.executable, __file__, "--child", loop, model, str(threads), raw_root]
    result = subprocess.run(args, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(f"{loop} {model} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def has_bf16_path() -> bool:
    from trainkit.precision import FAST_CPU_FLAGS
    from trainkit.runtime import cpu_flags

    return any(flag in cpu_flags() for flag in FAST_CPU_FLAGS[torch.bfloat16])


def cpu_line() -> str:
    """e.g. "AMD EPYC (family 25 model 1; avx2 fma; no avx512f avx512_bf16 ...), torch 2.14.1":
    the model name alone does not tell Zen 3 from Zen 4 ("AMD EPYC" on both)."""
    from trainkit.runtime import cpu_flags, cpu_name

    flags = cpu_flags()
    has = " ".join(f for f in NAMED_FLAGS if f in flags) or "none of them"
    lacks = " ".join(f for f in NAMED_FLAGS if f not in flags)
    return f"{cpu_name(has + ('; no ' + lacks if lacks else ''))}, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "mlp"], choices=list(WINDOWS))
    parser.add_argument("--loops", nargs="+", default=LOOPS, choices=LOOPS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    parser.add_argument("--trainkit-overrides", default="",
                        help="e.g. 'diagnostics=off trainer.channels_last=false'")  # fmt: skip
    args = parser.parse_args()
    os.environ["BENCH_TRAINKIT_OVERRIDES"] = args.trainkit_overrides
    args.skipped = [] if has_bf16_path() else [loop for loop in args.loops if loop in BF16_LOOPS]
    args.loops = [loop for loop in args.loops if loop not in args.skipped]

    runs: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as folder:
        raw_root = raw_files_for_torchvision(Path(folder))
        peaks: list[dict] = []
        for r in range(args.repeats):
            peaks.append(measure("peak", "mlp", args.threads, raw_root))
            for model in args.models:
                for loop in args.loops:
                    runs.setdefault((model, loop), []).append(
                        measure(loop, model, args.threads, raw_root)
                    )
            print(f"round {r + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    args.bf16_peak = statistics.median(p.get("bf16_gflops", math.nan) for p in peaks)
    report(runs, statistics.median(p["gflops"] for p in peaks), args)


def print_heading(peak: float, args: argparse.Namespace) -> None:
    """Which CPU and torch (figures compare only within one CPU), how measured, what skipped."""
    bf16_peak = getattr(args, "bf16_peak", math.nan)
    print(f"CPU: {cpu_line()}")
    print(f"{os.cpu_count()} cores, {args.threads} threads, batch {BATCH}, Fashion-MNIST, "
          f"fastest window per process, median of {args.repeats} rounds; fp32 matmul peak "
          f"{peak:.0f} GFLOP/s{'' if math.isnan(bf16_peak) else f', bf16 {bf16_peak:.0f}'}; "
          f"% of peak: of the fp32 peak")  # fmt: skip
    for loop in getattr(args, "skipped", []):
        print(f"{loop}: skipped, no avx512_bf16 or amx_bf16 on this CPU (its bf16 is emulated, "
              f"~100x slower than fp32)")  # fmt: skip


def shown(value: float, spec: str, unit: str = "") -> str:
    """A figure as text, or n/a where the loops that measure it did not run (nan)."""
    return "n/a" if math.isnan(value) else f"{value:{spec}}{unit}"


def report(runs: dict[tuple[str, str], list[dict]], peak: float, args: argparse.Namespace) -> None:
    def med(model: str, loop: str, key: str) -> float:
        values = [run[key] for run in runs.get((model, loop), []) if key in run]
        return statistics.median(values) if values else float("nan")

    def ratio_median(model: str, loop: str, other: str, key: str) -> float:
        """The median over rounds of loop/other, each from one round: a ratio of two loops
        measured a minute apart drifts less than either loop's speed."""
        pairs = zip(runs.get((model, loop), []), runs.get((model, other), []), strict=False)
        ratios = [a[key] / b[key] for a, b in pairs if key in a and key in b]
        return statistics.median(ratios) if ratios else float("nan")

    def ratio(model: str, other: str, key: str = "train") -> str:
        return ratio_of(model, "trainkit", other, key)

    def ratio_of(model: str, loop: str, other: str, key: str = "train") -> str:
        pairs = zip(runs.get((model, loop), []), runs.get((model, other), []), strict=False)
        ratios = sorted(a[key] / b[key] for a, b in pairs if key in a and key in b)
        if not ratios:
            return "n/a"
        return f"{statistics.median(ratios):.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f})"

    print_heading(peak, args)
    print(f"{'model':5} {'loop':14} {'train/s':>9} {'eval/s':>9} {'peak RSS':>9} {'%peak':>6}")
    for model in args.models:
        flop = med(model, "bare", "flop")
        for loop in args.loops:
            train = med(model, loop, "train")
            share = train * flop / (peak * 1e9) * 100  # the FLOP count comes from the bare loop
            print(f"{model:5} {loop:14} {shown(train, ',.0f'):>9} "
                  f"{shown(med(model, loop, 'eval'), ',.0f'):>9} "
                  f"{shown(med(model, loop, 'peak_rss_mb'), ',.0f', 'MB'):>9} "
                  f"{shown(share, '.0f', '%'):>6}")  # fmt: skip
        fp32_bare = [loop for loop in args.loops if loop.startswith("bare") and "bf16" not in loop]
        best_loop = max(fp32_bare,
                        key=lambda loop: med(model, loop, "train"), default="bare")  # fmt: skip
        augmentation = 1 - ratio_median(model, "trainkit+aug", "trainkit", "train")
        print(f"{model}: trainkit/tutorial {ratio(model, 'tutorial')}, trainkit/bare "
              f"{ratio(model, 'bare')}, trainkit/best bare ({best_loop}) "
              f"{ratio(model, best_loop)}, eval trainkit/tutorial "
              f"{ratio(model, 'tutorial', 'eval')}, augmentation costs "
              f"{shown(augmentation * 100, '.0f', '%')} of the step; "
              f"{shown(flop / 1e6, '.1f')} MFLOP per training sample")  # fmt: skip
        if (model, "trainkit+bf16") in runs:
            trainkit_gain = ratio_of(model, "trainkit+bf16", "trainkit")
            bare_gain = ratio_of(model, "bare+bf16", "bare+best")
            print(f"{model}: trainkit bf16/fp32 {trainkit_gain}, bare bf16/fp32 (both best) "
                  f"{bare_gain}")  # fmt: skip
    if args.json:
        flat = [{"model": m, "loop": loop, **run} for (m, loop), rs in runs.items() for run in rs]
        heading = {"cpu": cpu_line(), "peak_gflops": peak,
                   "bf16_peak_gflops": getattr(args, "bf16_peak", None)}  # fmt: skip
        args.json.write_text(json.dumps({**heading, "runs": flat}, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        main()
