"""trainer.precision: which dtype forward and loss autocast to, and why.

`auto` (the default) is bf16 where bf16 is fast and fp32 elsewhere: on CUDA, bf16 where the GPU
supports it; on a CPU, bf16 only where a short probe at start-up timed bf16 matmuls and
convolutions faster than fp32 (bf16 autocast trained the CNN faster on an Intel Xeon with AMX,
and several times slower on a Zen 3 without bf16 units). A CPU without the avx512_bf16 or
amx_bf16 flag is fp32 without timing anything: its bf16 matmul is emulated, far slower than
fp32, and timing it would lengthen every start-up for nothing.

The probe's result is cached per CPU and torch version in a JSON file under ~/.cache/trainkit
($XDG_CACHE_HOME respected): read as data, and ignored and rewritten when damaged.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from trainkit import runtime
from trainkit.errors import UserError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# CPU flags of the units that make low-precision matmul fast; without them torch emulates it
# (bf16 matmul far slower than fp32 on an AVX2 machine).
FAST_CPU_FLAGS = {
    torch.bfloat16: ("avx512_bf16", "amx_bf16"),
    torch.float16: ("avx512_fp16", "amx_fp16"),
}
# bf16 must beat fp32 by this much on both probes: a few-ms timing is noisy, and a run pays
# autocast's casts (of weights, of activations to fp32 for the loss) on top of what is timed.
MIN_SPEEDUP = 1.2
CACHE_VERSION = 1


@dataclass(frozen=True)
class Choice:
    """What a run autocasts to (None: nothing, fp32) and why, in words for the header."""

    dtype: torch.dtype | None
    reason: str
    warning: str | None = None  # an explicit bf16/fp16 the hardware is slow at

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def describe(self) -> str:
        """e.g. "fp32 (auto: no avx512_bf16 or amx_bf16 on this CPU)", the header's text."""
        return f"{self.name} ({self.reason})"

    def as_dict(self) -> dict[str, str]:
        return {"dtype": self.name, "reason": self.reason}


_latest: Choice | None = None


def latest() -> Choice | None:
    """The choice of this process's latest build (experiment.build): the header and
    summary.json say it without choosing again (which would probe or warn a second time)."""
    return _latest


def choose(precision: str, device: torch.device) -> Choice:
    """trainer.precision's Choice on `device`; remembered for latest()."""
    global _latest
    if precision == "fp32":
        choice = Choice(None, "trainer.precision=fp32")
    elif precision == "auto":
        choice = choose_auto(device)
    else:
        choice = choose_explicit(precision, device)
    _latest = choice
    return choice


def choose_explicit(precision: str, device: torch.device) -> Choice:
    """bf16/fp16 as asked where the hardware is fast at it; else fp32 with a warning."""
    dtype = DTYPES[precision]
    asked = f"trainer.precision={precision}"
    if device.type == "cuda":
        if dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise UserError("trainer.precision=bf16: this GPU has no bf16; use "
                            "trainer.precision=fp16 (with loss scaling) or fp32")
        return Choice(dtype, asked)
    if device.type == "cpu" and any(f in runtime.cpu_flags() for f in FAST_CPU_FLAGS[dtype]):
        return Choice(dtype, asked)
    where = device.type.upper()
    warning = (f"{asked}: this {where} has no fast {precision} matmul (it would run many "
               f"times slower than fp32): training in fp32")
    return Choice(None, f"{asked}, but this {where} has no fast {precision}", warning)


def choose_auto(device: torch.device) -> Choice:
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Choice(torch.bfloat16, "auto: CUDA with bf16")
        return Choice(None, "auto: this GPU has no bf16")
    if device.type != "cpu":
        return Choice(None, f"auto: bf16 not probed on {device.type}")
    if not any(flag in runtime.cpu_flags() for flag in FAST_CPU_FLAGS[torch.bfloat16]):
        return Choice(None, "auto: no avx512_bf16 or amx_bf16 on this CPU")
    speedups = cached_probe()
    measured = (f"bf16 matmul {speedups['matmul']:.2f}x, conv {speedups['conv']:.2f}x fp32 "
                f"on this CPU")
    fast = min(speedups["matmul"], speedups["conv"]) >= MIN_SPEEDUP
    return Choice(torch.bfloat16 if fast else None, f"auto: {measured}")


# ------------------------------------------------------------------ the probe and its cache


def cache_file() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "trainkit" / "precision-probe.json"


def cache_key() -> str:
    """CPU model name with family and model (lscpu calls Zen 3 and Zen 4 both "AMD EPYC"),
    and torch's version: a new torch may bring new kernels."""
    return f"{runtime.cpu_name()}, torch {torch.__version__}"


def read_cache(path: Path) -> dict[str, dict[str, float]]:
    """The cache's entries; {} where the file is missing or damaged (it is then rewritten)."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):  # missing, unreadable, not JSON, not UTF-8
        return {}
    if not isinstance(saved, dict) or saved.get("version") != CACHE_VERSION:
        return {}
    entries = saved.get("entries")
    if not isinstance(entries, dict):
        return {}
    return {key: value for key, value in entries.items() if valid_speedups(value)}


def valid_speedups(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(value.get(k), (int, float)) and value[k] > 0 for k in ("matmul", "conv")
    )


def cached_probe() -> dict[str, float]:
    """bf16/fp32 speedups of this CPU: from the cache, else probed and cached."""
    path, key = cache_file(), cache_key()
    entries = read_cache(path)
    if key in entries:
        return entries[key]
    speedups = probe()
    entries[key] = speedups
    try:  # atomic: ranks of a DDP run on one machine may write it at once
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": CACHE_VERSION, "entries": entries}, indent=1))
        tmp.replace(path)
    except OSError:  # a read-only home: probe again next time, a fraction of a second
        pass
    return speedups


def probe() -> dict[str, float]:
    """fp32 time / bf16 autocast time of a 256x256 matmul and a small conv forward+backward."""
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    conv = torch.nn.Conv2d(16, 16, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(8, 16, 14, 14).to(memory_format=torch.channels_last).requires_grad_()

    def conv_step() -> None:
        conv(x).float().sum().backward()

    threads = torch.get_num_threads()
    # One thread: with two, an op waits for the slower one, and where another process holds a
    # core that wait is a time slice (a short matmul taking many times as long, again and again).
    # The ratio is a per-core property.
    torch.set_num_threads(1)
    try:
        return {"matmul": speedup(lambda: a @ b), "conv": speedup(conv_step)}
    finally:
        torch.set_num_threads(threads)


def speedup(work: Callable[[], object], rounds: int = 5) -> float:
    """fp32 time / bf16 time of `work`, each its fastest of up to `rounds` after a warm-up.
    The two alternate, so that another process taking the core for a while slows both; bf16
    stops after 2 rounds where it is already 3x slower, so that even the probe of an emulated
    bf16 (forced past the flag check) stays short."""
    fp32: list[float] = []
    bf16: list[float] = []
    for i in range(rounds + 1):  # round 0 warms up: oneDNN builds its kernels on first use
        for times, low in ((fp32, False), (bf16, True)):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low):
                work()
            if i > 0:
                times.append(time.perf_counter() - start)
        if i >= 2 and min(bf16) > 3 * min(fp32):
            break
    return min(fp32) / min(bf16)
