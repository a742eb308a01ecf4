"""Checkpoints written atomically: a half-written file never replaces a good one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from trainkit.errors import UserError, first_line


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temp file in the same folder, fsync it, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Tensors and plain containers only (weights_only): a checkpoint cannot run code."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist: check the path") from None
    except Exception as e:
        raise UserError(f"checkpoint {path} cannot be loaded ({first_line(e)})") from None
