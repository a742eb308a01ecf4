"""The process-wide settings a run needs before any tensor is made: device, seeds, threads,
deterministic kernels, and the allocator."""

from __future__ import annotations

import ctypes
import os
import platform
import random
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from trainkit import distributed
from trainkit.errors import UserError


def pick_device(name: str) -> torch.device:
    """`auto` is cuda when available, else cpu; asking for cuda without it is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device={name} but CUDA is not available here: use device=cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(
                f"device={name} but only {torch.cuda.device_count()} GPU(s) exist: "
                f"use cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def rng_state() -> dict:
    """Every random stream a run draws from (dropout, augmentation, ...), as plain tensors and
    tuples: what a checkpoint loaded with weights_only=True can hold."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "python": random.getstate(),
    }


def set_rng_state(saved: dict) -> None:
    torch.set_rng_state(saved["torch"])
    if saved["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda"])
    kind, keys, pos, has_gauss, gauss = saved["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(saved["python"])


DEFAULT_THREADS = torch.get_num_threads()  # before any run changed it


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what this process may use, not the host's count
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_job(launcher: DictConfig) -> int | None:
    """Torch threads for one job of a sweep whose jobs run side by side on this machine: the
    cores divided among them (Hydra's joblib launcher: n_jobs at once; submitit's local one:
    cpus_per_task if set, else up to array_parallelism at once). None: leave the default
    (one job at a time, or jobs on other machines)."""
    target = str(launcher.get("_target_", "")).lower()
    cores = available_cores()
    if "joblib" in target:
        n_jobs = launcher.get("n_jobs") or 1
        if n_jobs < 0:  # joblib's convention: -1 is all cores, -2 all but one, ...
            n_jobs = max(1, cores + 1 + n_jobs)
        return max(1, cores // n_jobs)
    if "submitit" in target and "local" in target:
        if launcher.get("cpus_per_task"):
            return int(launcher.cpus_per_task)
        at_once = launcher.get("array_parallelism") or cores
        return max(1, cores // min(at_once, cores))
    return None


def setup(trainer: DictConfig) -> torch.device:
    """Apply the trainer's process settings and return the device to run on.

    Every setting is set either way, never only when asked for: the jobs of a sweep share one
    process and must not inherit each other's threads or determinism.
    """
    device = pick_device(trainer.device)
    if distributed.enabled():  # started by torchrun: one GPU per local rank, or CPU processes
        if device.type == "cuda":
            device = torch.device("cuda", distributed.local_rank())
        distributed.init(device)
    # Ranks draw different augmentations and dropout masks; rank 0 (alone: the only) the seed's.
    seed_everything(trainer.seed + 1000 * distributed.rank())
    torch.set_num_threads(trainer.threads or DEFAULT_THREADS)
    if trainer.deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; harmless on CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(trainer.deterministic)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not trainer.deterministic
    keep_freed_memory()
    return device


def keep_freed_memory() -> None:
    """Stop glibc from returning large freed blocks to the OS after every batch.

    Big activation buffers otherwise come back as fresh mmap pages that fault in on every use,
    which made large-batch evaluation markedly slower.
    Same effect as MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>, but without a re-exec.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # musl or another libc: nothing to tune
        return
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 1 << 30)


def cpu_info() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo ("model name", "cpu family", "model",
    "flags", ...); {} where there is none (not Linux)."""
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        if not line.strip():  # the end of the first processor's block
            break
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def cpu_name(details: str = "") -> str:
    """The CPU's model name with its family and model (and `details`, e.g. its flags): lscpu
    names Zen 3 and Zen 4 both "AMD EPYC", and speed figures compare only within one."""
    info = cpu_info()
    name = info.get("model name") or platform.processor() or platform.machine()
    more = f"; {details}" if details else ""
    return (f"{name} (family {info.get('cpu family', '?')} model {info.get('model', '?')}"
            f"{more})")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (avx2, avx512_bf16, amx_bf16, ...): precision.py's gate."""
    return set(cpu_info().get("flags", "").split())
