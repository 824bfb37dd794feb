"""What every command-line entry point of the package shares."""

from __future__ import annotations

import functools
import os
import sys

# What a shell reports for a Unix tool stopped by a closed pipe: 128 + SIGPIPE.
CLOSED_STDOUT_STATUS = 141


class _StdoutFailed(Exception):
    """A write or flush of stdout failed (``__cause__``: the OSError)."""


class _Stdout:
    """``sys.stdout`` while a CLI runs: its write errors are told apart from other OSErrors."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except OSError as e:
            raise _StdoutFailed() from e

    def flush(self):
        try:
            self._stream.flush()
        except OSError as e:
            raise _StdoutFailed() from e

    def __getattr__(self, name):
        return getattr(self._stream, name)


def quiet_on_closed_stdout(main):
    """Wrap a CLI ``main`` so that a stdout it cannot write ends it without a traceback.

    Python ignores SIGPIPE, so the first write after the reader has gone (``... | head``) raises
    BrokenPipeError, and so does the interpreter's final flush of buffered output; other write
    errors (``> /dev/full``: ENOSPC, EIO) raise OSError. The wrapper routes stdout through
    :class:`_Stdout` and flushes it itself; when a write or that flush fails it points stdout at
    /dev/null (so the final flush has nowhere to fail) and returns :data:`CLOSED_STDOUT_STATUS`
    for a closed pipe, or prints one ``error:`` line and returns 2 for any other error.
    """
    @functools.wraps(main)
    def run(*args, **kwargs):
        real = sys.stdout
        sys.stdout = _Stdout(real)
        try:
            try:
                return main(*args, **kwargs)
            finally:
                sys.stdout.flush()
        except _StdoutFailed as failed:
            e = failed.__cause__
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, real.fileno())
            os.close(devnull)
            if isinstance(e, BrokenPipeError):
                return CLOSED_STDOUT_STATUS
            print(f"error: cannot write to standard output: {e.strerror or e}", file=sys.stderr)
            return 2
        finally:
            sys.stdout = real
    return run


def refuse_empty(args, **options) -> None:
    """Raise :class:`~sgfd_fast.errors.ConfigError` for a path option given as ``''`` (an unset
    shell variable, say), which would otherwise read as "not given" or as the current
    directory. ``options``: ``{attribute: option name}``."""
    from .errors import ConfigError

    for attr, name in options.items():
        if getattr(args, attr, None) == "":
            raise ConfigError(f"{name} is empty; give a path")


def show_warning(message, category, filename, lineno, file=None, line=None):
    """``warnings.showwarning`` of the CLIs: one ``warning: <message>`` line on stderr (Python's
    own adds the file, the line number and that line's source)."""
    print(f"warning: {message}", file=sys.stderr)
