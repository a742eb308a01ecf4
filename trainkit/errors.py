"""The one exception type that reaches the user as a single line instead of a traceback."""


class UserError(Exception):
    """Bad input the user can fix; the message says what to change."""
