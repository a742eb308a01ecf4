"""The one exception type that reaches the user as a single line instead of a traceback."""

import os
import sys
import traceback


class UserError(Exception):
    """Bad input the user can fix; the message says what to change."""


class Interrupted(Exception):
    """SIGINT/SIGTERM stopped a run after saving it; the message says how to go on."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


class SweepInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM stopped a sweep's job after saving it: the sweep stops too. A
    KeyboardInterrupt, so that Hydra lets it through instead of recording a failed job."""

    def __init__(self, signum: int, message: str, sweep_dir: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.sweep_dir = sweep_dir


def first_line(e: BaseException) -> str:
    """An exception's message cut to its first line: errors reach the user as one line."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def instantiation_reason(e: BaseException) -> str:
    """What went wrong in Hydra's instantiate, in one line: its wrapper's first line, or the
    first and the last where the first only names the target ("Error loading 'a.B':")."""
    text = str(e.__cause__ or e).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()] or [type(e).__name__]
    return lines[0] if not lines[0].endswith(":") else f"{lines[0]} {lines[-1]}"


def report(prefix: str, e: BaseException) -> None:
    """`<prefix>: error: <message>` on stderr; with TRAINKIT_DEBUG=1, the traceback first."""
    if os.environ.get("TRAINKIT_DEBUG", "") not in ("", "0"):
        traceback.print_exception(e)
    print(f"{prefix}: error: {e}", file=sys.stderr)
