"""Writing a run's files so that no earlier result is lost: atomically, and with one line that
says what to do when the disk is full or the folder cannot be written."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from trainkit.errors import UserError

FULL = (errno.ENOSPC, errno.EDQUOT)


def write_atomic(
    path: Path,
    write: Callable[[IO[Any]], object],
    *,
    binary: bool = False,
    resume_hint: bool = False,
) -> None:
    """`write(f)` into a temp file in the same folder, fsync it, then rename it over `path`:
    a full disk or a crash mid-write leaves the previous file as it was."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_error(path, e, resume_hint) from None
    try:
        with os.fdopen(fd, "wb" if binary else "w", newline=None if binary else "") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        cause = os_error(e)
        if cause is not None:
            raise write_error(path, cause, resume_hint) from None
        raise


def os_error(e: BaseException) -> OSError | None:
    """The OSError behind `e`: torch.save on a full disk raises one, then its zip writer's
    clean-up a RuntimeError ('unexpected pos') with the OSError as its context."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, OSError):
            return e
        e, seen = e.__cause__ or e.__context__, seen + 1  # type: ignore[assignment]
    return None


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda f: f.write(text))


# The errors of writing that the user can do something about (space, names, permissions).
WRITING = (*FULL, errno.ENAMETOOLONG, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR)


def user_error(e: OSError, fallback: Path) -> UserError | None:
    """write_error for an OSError of writing (WRITING); None for any other."""
    if e.errno not in WRITING:
        return None
    return write_error(Path(e.filename) if e.filename else fallback, e)


def write_error(path: Path, e: OSError, resume_hint: bool = False) -> UserError:
    """One line for a file that could not be written: what happened and what to do."""
    if e.errno in FULL:
        kept = f"the previous {path.name} is intact" if path.is_file() else "nothing was kept"
        then = "resume the run" if resume_hint and path.is_file() else "run it again"
        return UserError(
            f"no space left on the device to write {path}: free some space and {then} ({kept})"
        )
    if e.errno == errno.ENAMETOOLONG:
        return UserError(
            f"cannot write {str(path)[:120]}...: a file or folder name is too long "
            "for this file system; choose a shorter output folder"
        )
    return UserError(f"cannot write {path}: {e.strerror or e}; check that folder")
