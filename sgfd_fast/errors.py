"""User-facing errors.

Every problem a user can fix (a malformed file, a bad config value, a shape mismatch at the API
boundary) raises an ``SGFDError`` subclass whose message says what is wrong, where, and how to fix
it. The command-line entry points print the message alone (no traceback) and exit with status 2.
"""


class SGFDError(Exception):
    """Base class of every user-facing error."""


class DataError(SGFDError, ValueError):
    """A dataset file or directory is missing, malformed or inconsistent."""


class ConfigError(SGFDError, ValueError):
    """A configuration key is unknown or a value is invalid."""


class BuildError(SGFDError, RuntimeError):
    """A compiled backend was requested but is not available."""


class InputError(SGFDError, ValueError):
    """A tensor passed to an op has the wrong shape, dtype, device or values."""


class TrainingError(SGFDError, RuntimeError):
    """Training failed numerically (a non-finite loss, no finite validation metric)."""


class RunDirectoryError(SGFDError):
    """A run directory cannot be created, locked, read or written (a file in the way, no
    permission, a full disk, another process using it), or holds what a run cannot continue."""
