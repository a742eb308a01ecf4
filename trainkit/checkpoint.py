"""Checkpoints written atomically: a half-written file never replaces a good one."""

from __future__ import annotations

import errno
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from trainkit.errors import UserError, first_line


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temp file in the same folder, fsync it, then rename it over `path`:
    a full disk or a crash mid-write leaves the previous file as it was."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}; check that folder") from None
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            kept = f"the previous {path.name} is intact" if path.exists() else "nothing was kept"
            raise UserError(f"no space left on the device to write {path}: free some space "
                            f"and resume the run ({kept})") from None  # fmt: skip
        if isinstance(e, OSError):
            raise UserError(f"cannot write {path}: {e.strerror}") from None
        raise


def load(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Tensors and plain containers only (weights_only): a checkpoint cannot run code."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist: check the path") from None
    except Exception as e:
        code = re.search(r"GLOBAL (\S+)", str(e))  # weights_only met a callable it would call
        if isinstance(e, pickle.UnpicklingError) and code:
            raise UserError(
                f"checkpoint {path} is refused: loading it would run code ({code.group(1)}), "
                "and trainkit checkpoints hold tensors only; use a checkpoint trainkit wrote"
            ) from None  # torch's own messages suggest weights_only=False: not for us
        reason = first_line(e).split(". ")[0][:120]
        raise UserError(
            f"checkpoint {path} is not a trainkit checkpoint or is damaged ({type(e).__name__}: "
            f"{reason}): check the path, or use another checkpoint of the run (best.pt, last.pt)"
        ) from None
