"""The training commands' error type."""


class UsageError(Exception):
    """Bad arguments, files or run state, reported as one line `erbnn <cmd>: error: ...` (exit status 2)."""
