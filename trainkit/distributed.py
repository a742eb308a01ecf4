"""Data-parallel training across the processes that `torchrun` starts (DistributedDataParallel).

`torchrun --nproc_per_node=N -m trainkit [overrides]` runs N copies of trainkit; torchrun's
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) tells each one its place.
Every rank holds the whole dataset in memory and draws the same shuffled order each epoch;
each global batch of trainer.batch_size is split between the ranks, so together they cover the
epoch once, each rank's share changes every epoch, and the optimizer steps on exactly the
samples one process would use with the same batch size. DDP averages the gradients; epoch
metrics are all-reduced; rank 0 alone writes the run's files and the console.
Without torchrun (WORLD_SIZE unset or 1) every function here is a no-op.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def rank() -> int:
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", world_size()))


def enabled() -> bool:
    """Started by torchrun with more than one process."""
    return world_size() > 1


def is_main() -> bool:
    """The process that writes files and prints: rank 0 (the only one without torchrun)."""
    return rank() == 0


def init(device: torch.device) -> None:
    """Join the process group: NCCL between GPUs, gloo between CPU processes."""
    if not enabled() or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def launcher() -> str:
    """How to start the same number of processes again: for messages that say how to go on."""
    if not enabled():
        return ""
    return f"torchrun --nproc_per_node={local_world_size()} -m "


def describe() -> dict | None:
    """For summary.json: how many processes trained, and over what; None for one process."""
    if not dist.is_initialized():
        return None
    return {"world_size": dist.get_world_size(), "backend": dist.get_backend()}


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The model behind DistributedDataParallel: rank 0's weights and buffers are broadcast
    now, gradients are averaged in backward, and buffers (batch-norm statistics) are
    broadcast from rank 0 before every forward."""
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def shard(indices: torch.Tensor) -> torch.Tensor:
    """This rank's part of a global batch: contiguous, sizes differing by at most one."""
    if not enabled():
        return indices
    return indices.tensor_split(world_size())[rank()]


def global_batches(n: int, batch_size: int) -> int:
    """Optimizer steps in an epoch of n samples: a last, short batch counts unless it is too
    short to give every rank a sample (then it is dropped, on every rank alike)."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= world_size() else 0)


def all_sum(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Each tensor (any shape) summed over the ranks (one collective for all of them)."""
    if not enabled():
        return list(tensors)
    flat = torch.cat([t.double().reshape(-1) for t in tensors])  # float64: counts stay exact
    dist.all_reduce(flat)
    parts = flat.split([t.numel() for t in tensors])
    return [v.view(t.shape).to(t.dtype) for v, t in zip(parts, tensors, strict=True)]


def all_max(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Each (integer) tensor's largest value over the ranks, e.g. agreeing that one was asked
    to stop."""
    if not enabled():
        return list(tensors)
    flat = torch.stack([t.long() for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.MAX)
    return [v.to(t.dtype) for v, t in zip(flat, tensors, strict=True)]


def part(n: int) -> slice:
    """This rank's contiguous share of n samples (evaluation splits its set this way)."""
    if not enabled():
        return slice(0, n)
    size, rest = divmod(n, world_size())
    start = rank() * size + min(rank(), rest)
    return slice(start, start + size + (1 if rank() < rest else 0))


def sync_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (batch-norm running statistics) everywhere: each rank updated its own
    in the last training step, and evaluation must see one model."""
    if not enabled():
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)
