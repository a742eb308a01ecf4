"""The one exception type that reaches the user as a single line instead of a traceback."""


class UserError(Exception):
    """Bad input the user can fix; the message says what to change."""


class Interrupted(Exception):
    """SIGINT/SIGTERM stopped a run after saving it; the message says how to go on."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


def first_line(e: BaseException) -> str:
    """An exception's message cut to its first line: errors reach the user as one line."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
