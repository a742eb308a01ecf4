"""A run's folder belongs to one run: a new run never writes into a folder that holds another,
and two processes never write into one folder at once.

Before Hydra writes anything (it starts with <run dir>/.hydra/), `claim` picks the folder,
locks it for this process (an flock on <folder>/.trainkit.lock, released when the process
ends, however it ends) and pins it on Hydra's command line, so that the folder checked is the
folder used. A folder the user named that already holds a run is refused; the default,
timestamped folder moves on to a free sibling (<time>-1, <time>-2, ...) when a run started in
the same second took it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
from pathlib import Path

from trainkit.errors import UserError
from trainkit.files import write_error

LOCK = ".trainkit.lock"
RUN_FILES = (".hydra", "summary.json", "metrics.csv", "checkpoints", "trainkit.log", "curves.png")
SWEEP_FILES = ("multirun.yaml", "summary.csv")
# TensorBoard runs inside a run's folder, one per split (callbacks.TensorBoardLogger).
SPLIT_RUNS = {"train": "train", "val": "validation", "test": "test"}
_held: list[int] = []  # this process's locks: open file descriptors
claimed: list[Path] = []  # the folders they lock, in the order claimed


def holds_run(folder: Path) -> bool:
    """A run (or a sweep) wrote into `folder`."""
    try:
        if not folder.is_dir():
            return False
        return (
            any((folder / name).exists() for name in RUN_FILES + SWEEP_FILES)
            or any(folder.glob("events.out.tfevents.*"))
            or any(folder.glob("*/.hydra"))
        )
    except OSError:  # a name the file system cannot hold: nothing is there (lock() says why)
        return False


def in_use(folder: Path) -> bool:
    """Another process holds `folder`'s lock (looked at without creating anything)."""
    try:
        fd = os.open(folder / LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def lock(folder: Path) -> bool:
    """Make `folder` and hold its lock for the life of this process; False if another process
    holds it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise write_error(folder / LOCK, e) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _held.append(fd)
    claimed.append(folder)
    return True


def release() -> None:
    """Let go of every lock this process holds (the process ending does the same)."""
    while _held:
        with contextlib.suppress(OSError):
            os.close(_held.pop())
    claimed.clear()


def claim(folder: Path, named: bool, overwrite: bool = False, key: str = "hydra.run.dir") -> Path:
    """The folder this run writes into, locked. `named`: the user chose it (`key`=...); then it
    must not hold a run unless `overwrite` (its run's files are deleted first). Otherwise a
    free folder beside it is taken if it is busy."""
    if not named:
        for candidate in (folder, *(folder.with_name(f"{folder.name}-{i}") for i in range(1, 100))):
            if not holds_run(candidate) and lock(candidate):
                return candidate
        raise UserError(f"{folder} and 99 folders beside it are in use: name one with {key}=")
    if in_use(folder):
        raise UserError(
            f"{folder} is in use by another trainkit process: wait for it to end, "
            f"or choose another folder with {key}=<folder>"
        )
    if holds_run(folder) and not overwrite:
        if key != "hydra.run.dir":
            raise UserError(f"{folder} already holds a run (a sweep): choose a fresh folder "
                            f"with {key}=<folder>, or compare it: trainkit compare {folder}")
        raise UserError(
            f"{folder} already holds a run: go on with it with `trainkit resume={folder}`, or "
            f"choose a fresh folder with {key}=<folder> (trainer.overwrite=true deletes that "
            "run and starts again there)"
        )
    if not lock(folder):
        raise UserError(f"{folder} is in use by another trainkit process: choose another folder")
    if overwrite:
        clear(folder)
    return folder


def clear(folder: Path) -> None:
    """Delete a run's files from `folder` (trainer.overwrite=true), keeping the lock."""
    for name in RUN_FILES:
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    for path in folder.glob("events.out.tfevents.*"):
        path.unlink()
    for name in SPLIT_RUNS.values():
        shutil.rmtree(folder / name, ignore_errors=True)


def hydra_value(path: Path | str) -> str:
    """`path` as a value on Hydra's command line, read back exactly as `path` (checked: the
    folder Hydra writes into must be the folder that was checked and locked)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    text = str(path)
    if re.fullmatch(r"[A-Za-z0-9_./\-+@%:]+", text):
        quoted = text
    else:  # Hydra unescapes backslashes only before a quote (and the closing one)
        quoted = "'" + re.sub(r"(\\+)(?='|$)", r"\1\1", text).replace("'", "\\'") + "'"
    parsed = OverridesParser.create().parse_overrides([f"key={quoted}"])[0].value()
    if parsed != text or "${" in text:  # an interpolation would be resolved
        raise UserError(f"{text}: Hydra cannot take this folder name as it is; choose one "
                        "without quotes, backslashes or ${...}")
    return quoted


def release_one(folder: Path) -> None:
    """Let go of `folder`'s lock (a sweep job's, when the job ends)."""
    for i in reversed(range(len(claimed))):
        if claimed[i] == folder:
            with contextlib.suppress(OSError):
                os.close(_held.pop(i))
            claimed.pop(i)


def give_back(folder: Path, root: Path) -> None:
    """Let go of `folder` after a job that failed before writing anything: a folder holding only
    its lock is removed, with the parents below `root` that this leaves empty (the date
    folder, the command's), so that a failed command leaves no empty output folder behind."""
    release_one(folder)
    if [p.name for p in folder.iterdir()] != [LOCK]:
        return
    (folder / LOCK).unlink()
    for empty in (folder, *folder.parents):
        if empty == root or not empty.is_relative_to(root):
            break
        try:
            empty.rmdir()
        except OSError:  # not empty: other runs of that day
            break
