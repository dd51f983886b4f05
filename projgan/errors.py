"""The one exception type that means "the user asked for something we cannot do".

The CLI turns it into one red line plus a hint and exit code 2; anything else is a bug and keeps
its traceback.
"""


class UserError(Exception):
    """A mistake the user can fix: bad path, bad option, missing weights."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint
