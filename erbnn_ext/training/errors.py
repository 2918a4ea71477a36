"""Why a run cannot go on: each is reported by the CLI as one line `erbnn <cmd>: error: ...` (exit status 2)."""


class TrainingError(Exception):
    """Base class of the errors below."""


class UsageError(TrainingError):
    """Bad arguments."""


class CheckpointError(TrainingError):
    """A checkpoint that is missing, unreadable, truncated, or not one written by `erbnn train` / fit."""


class OutputError(TrainingError):
    """An output file that cannot be written (unwritable folder, full disk); the previous file is kept."""


class NonFiniteError(TrainingError):
    """The loss (or the parameters) stopped being finite; says at which epoch and step."""


class RankLostError(TrainingError):
    """A DDP rank stopped answering (its process died or its connection closed); says which rank, in
    which epoch, and which checkpoint is intact to resume from."""
