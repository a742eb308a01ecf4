"""summary.json: how a run ended, in one type. `Summary` is built once, when the run ends, and
`write` is the only writer of the file (atomically: a reader never sees half of one); the
sweep report, `trainkit compare`, the studies, the console and `resume` read it through `read`.
A summary.json is data from a run folder: read as JSON, never as code."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainkit.errors import UserError, first_line
from trainkit.files import write_text_atomic

FAILED = "failed"


@dataclass
class Summary:
    run_dir: str
    status: str  # completed, failed (diverged, or a sweep job's error), interrupted
    stop_reason: str  # one line: why the run ended
    final: dict | None = None  # the last epoch's metrics row (None: stopped in the first)
    best: dict | None = None  # the row with the best trainer.monitor
    test: dict = field(default_factory=lambda: {"loss": float("nan"), "acc": float("nan")})
    epochs_run: int = 0
    wall_time_s: float = float("nan")
    train_samples_per_s: float | None = None
    device: str | None = None
    parameters: int | None = None
    dataset: dict | None = None  # source, and the train/val/test sizes
    torch: str | None = None
    threads: int | None = None
    precision: dict | None = None  # what trainer.precision chose, and why
    distributed: dict | None = None
    confusion_matrix: dict | None = None  # the test set's: classes, counts[true][predicted]
    diagnosis: dict | None = None  # the verdict, its evidence and advice (verdict.py)
    alerts: list[str] = field(default_factory=list)  # diagnostics' warnings
    reason: str | None = None  # why a sweep job failed (sweep.record_failure)
    damaged: bool = False  # read from a file that could not be read (never written)

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        del out["damaged"]
        return out

    @classmethod
    def unreadable(cls, run_dir: Path, reason: str) -> Summary:
        """What a run folder that cannot be read says: it failed, and why."""
        return cls(str(run_dir), FAILED, reason, reason=reason, damaged=True)

    @classmethod
    def from_dict(cls, values: dict) -> Summary:
        """From summary.json's object; keys this version does not know are left out."""
        known = {f.name for f in dataclasses.fields(cls)} - {"damaged"}
        given = {k: v for k, v in values.items() if k in known}
        given.setdefault("run_dir", "")
        given.setdefault("status", "completed")
        given.setdefault("stop_reason", "")
        return cls(**given)


def write(run_dir: Path, summary: Summary) -> Path:
    path = run_dir / "summary.json"
    write_text_atomic(path, json.dumps(summary.as_dict(), indent=2) + "\n")
    return path


def read(path: Path) -> Summary | None:
    """A run's summary.json; None if there is none; a failed, damaged one if it cannot be read
    (the folder is data: a report goes on and says so)."""
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text())
        if not isinstance(values, dict):
            raise ValueError("not a JSON object")
        return Summary.from_dict(values)
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as e:
        return Summary.unreadable(
            path.parent, f"{path} is damaged ({type(e).__name__}: {first_line(e)[:80]})"
        )


def mark_failed(run_dir: Path, reason: str) -> str:
    """A sweep job that raised: its summary.json says it failed and why. Returns the reason,
    with the disk's complaint added when the file cannot be written (the failure is still
    said in the sweep's report)."""
    summary = read(run_dir / "summary.json")
    if summary is None or summary.damaged:
        summary = Summary(str(run_dir), FAILED, reason)
    summary.status, summary.reason = FAILED, reason
    try:
        write(run_dir, summary)
    except UserError as e:  # a full disk
        return f"{reason} ({e})"
    return reason
