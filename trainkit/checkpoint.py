"""Checkpoints: written atomically, read as data.

A checkpoint is data even when trainkit wrote it: someone may hand you a doctored one. It is
read with torch's weights_only unpickler (tensors and plain containers, no code), its shape is
checked before any part of it is used, and its config may name code only where trainkit's own
configs do (model._target_, optimizer._target_, scheduler._target_), and only trainkit's
models and the optimizers and schedules its groups ship (REGISTERED_TARGETS): never by prefix,
never nested.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from trainkit.config import AugmentConfig
from trainkit.errors import UserError, first_line
from trainkit.files import write_atomic

# The classes a checkpoint's config may name, by the group that names them. Hydra builds
# them (with their config's other keys as arguments), so a name outside these would be code.
REGISTERED_TARGETS = {
    "model": (
        "trainkit.models.MLP",
        "trainkit.models.CNN",
        "trainkit.models.ResNet",
        "trainkit.models.TorchvisionNet",
    ),
    "scheduler": (
        "torch.optim.lr_scheduler.StepLR",
        "torch.optim.lr_scheduler.MultiStepLR",
        "torch.optim.lr_scheduler.ExponentialLR",
        "torch.optim.lr_scheduler.ReduceLROnPlateau",
        "trainkit.schedule.cosine",
        "trainkit.schedule.warmup_cosine",
        "trainkit.schedule.one_cycle",
    ),
    "init": (
        "torch.nn.init.zeros_",
        "torch.nn.init.xavier_uniform_",
        "torch.nn.init.xavier_normal_",
        "torch.nn.init.kaiming_uniform_",
        "torch.nn.init.kaiming_normal_",
        "torch.nn.init.orthogonal_",
        "trainkit.init.constant",
        "trainkit.init.uniform",
        "trainkit.init.normal",
        "trainkit.init.uniform_fan_in",
        "trainkit.init.lecun_normal",
    ),
    "loss": ("torch.nn.CrossEntropyLoss", "trainkit.losses.MSELoss", "torch.nn.MultiMarginLoss"),
    "optimizer": (
        "torch.optim.SGD",
        "torch.optim.Adam",
        "torch.optim.AdamW",
        "torch.optim.RMSprop",
        "torch.optim.Adagrad",
    ),
}


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save, atomically (files.write_atomic): a full disk or a crash mid-write leaves the
    previous file as it was."""
    write_atomic(path, lambda f: torch.save(obj, f), binary=True, resume_hint=True)


Targets = set[tuple[str, str]]  # (where in the config, _target_): what the user named


def load(
    path: Path, map_location: str | torch.device = "cpu", trusted: Targets = frozenset()
) -> dict:
    """A trainkit checkpoint's dict, checked to be one: tensors and plain containers only
    (weights_only), a `model` state dict of tensors, and a config that is data (refuse_code;
    `trusted`: the user's own classes, named by the user at the same place of their config)."""
    try:
        check_sums(path)
        saved = torch.load(path, map_location=map_location, weights_only=True)
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist: check the path") from None
    except IsADirectoryError:
        raise UserError(f"checkpoint {path} is a folder: name a .pt file or a run dir") from None
    except Exception as e:
        code = re.search(r"GLOBAL (\S+)", str(e))  # weights_only met a callable it would call
        if isinstance(e, pickle.UnpicklingError) and code:
            raise UserError(
                f"checkpoint {path} is refused: loading it would run code ({code.group(1)}), "
                "and trainkit checkpoints hold tensors only; use a checkpoint trainkit wrote"
            ) from None  # torch's own messages suggest weights_only=False: not for us
        reason = first_line(e).split(". ")[0][:120]
        raise damaged(path, f"{type(e).__name__}: {reason}") from None
    check_shape(saved, path, trusted)
    return saved


def check_sums(path: Path) -> None:
    """torch.save writes a zip archive with a CRC-32 per entry, which torch.load does not
    check: a flipped bit in a weight or in the pickled config would load as other data."""
    if not zipfile.is_zipfile(path):
        return  # the legacy format, or no checkpoint: torch.load says which
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as e:  # a damaged directory: BadZipFile, zlib.error, EOFError, ...
        raise damaged(path, f"{type(e).__name__}: {first_line(e)[:80]}") from None
    if bad is not None:
        raise damaged(path, f"{bad} fails its checksum")


def damaged(path: Path, why: str) -> UserError:
    return UserError(
        f"checkpoint {path} is not a trainkit checkpoint or is damaged ({why}): check the path, "
        "or use another checkpoint of the run (best.pt, last.pt)"
    )


def check_shape(saved: object, path: Path, trusted: Targets = frozenset()) -> None:
    """What every reader of a checkpoint relies on: a dict, its `model` a state dict of
    tensors, its `config` (if any) a dict that names no code (refuse_code)."""
    if not isinstance(saved, dict):
        raise damaged(path, f"it holds a {type(saved).__name__}, not a dict")
    model = saved.get("model")
    if not isinstance(model, dict) or not model:
        raise damaged(path, "no model weights in it")
    bad = next((k for k, v in model.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None or not all(isinstance(k, str) for k in model):
        raise damaged(path, f"model entry {str(bad)[:60]!r} is not a tensor")
    config = saved.get("config", {})
    if not isinstance(config, dict):
        raise damaged(path, "its config is not a mapping")
    refuse_code(config, path, trusted)


def refuse_code(config: dict, path: Path, trusted: Targets = frozenset()) -> None:
    """Refuse a checkpoint config that names code: a _target_ that is neither registered for
    its place (REGISTERED_TARGETS) nor one the user named
    at the same place (`trusted`), or an interpolation (${...}: resolvers run when a value is
    read)."""
    for where, key, value in walk(config):
        full = f"{where}.{key}" if where else str(key)
        if not isinstance(key, str | int):
            raise damaged(path, f"config key {full[:60]!r} is not a string")
        if isinstance(value, str) and "${" in value:
            raise UserError(
                f"checkpoint {path} is refused: its config value {full} is an interpolation, "
                "and trainkit writes resolved values only; use a checkpoint trainkit wrote"
            )
        if not isinstance(value, PLAIN):
            raise damaged(path, f"its config value {full[:60]} is a {type(value).__name__}")
        if key != "_target_" or value is None:
            continue
        if not isinstance(value, str):
            raise damaged(path, f"its config's {full[:60]} is not a name")
        if value in REGISTERED_TARGETS.get(where, ()):
            continue
        if (where, value) not in trusted:
            shown = str(value)[:80]
            raise UserError(
                f"checkpoint {path} is refused: its config names code to run ({full}={shown}), "
                "and a checkpoint alone may name only trainkit's own models, optimizers and "
                f"schedules; if it is your own class, name it yourself ({full}={shown}, or "
                "your config's option with --config-dir)"
            )


PLAIN = (dict, list, tuple, str, int, float, bool, type(None))  # what a resolved config holds


def config_of(saved: dict, path: Path) -> DictConfig:
    """The checkpoint's config as OmegaConf, with every group a run is rebuilt from. The
    augment keys added since it was saved (tta_shift, erase, ...) are filled in at their
    defaults, all of them off, as the run trained: every reader (resume's comparison with
    the command line, the training batches, evaluate's test-time views) sees today's keys."""
    config = saved.get("config")
    missing = [g for g in CONFIG_GROUPS if not isinstance((config or {}).get(g), dict)]
    if missing:
        raise damaged(path, f"its config has no {missing[0]} group")
    augment = config.get("augment", {})
    if isinstance(augment, dict):
        config = {**config, "augment": {**asdict(AugmentConfig()), **augment}}
    try:
        return OmegaConf.create(config)
    except Exception as e:  # OmegaConf's own checks: keys, types
        raise damaged(path, f"its config: {first_line(e)[:80]}") from None


CONFIG_GROUPS = ("data", "model", "init", "loss", "optimizer", "scheduler", "trainer")


@contextmanager
def fitting_its_config() -> Iterator[None]:
    """Loading a checkpoint's states into what its config built (model, optimizer, schedule,
    callbacks): a state that does not fit is one line, not torch's traceback."""
    try:
        yield
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise UserError(f"the checkpoint does not fit its own config ({first_line(e)})") from None


def targets_in(config: dict) -> Targets:
    """Every (place, _target_) of a config: those the user named, in their own config."""
    return {(where, str(value)) for where, key, value in walk(config) if key == "_target_"}


def walk(node: object, where: str = "") -> Iterator[tuple[str, object, object]]:
    """(path of the parent, key, value) for every entry of nested dicts and lists."""
    items = node.items() if isinstance(node, dict) else enumerate(node)  # type: ignore[arg-type]
    for key, value in items:  # list items' keys are their index
        yield where, key, value
        if isinstance(value, dict | list | tuple):
            yield from walk(value, f"{where}.{key}" if where else str(key))
