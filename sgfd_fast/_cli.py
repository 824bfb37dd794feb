"""What every command-line entry point of the package shares."""

from __future__ import annotations

import functools
import os
import sys

# What a shell reports for a Unix tool stopped by a closed pipe: 128 + SIGPIPE.
CLOSED_STDOUT_STATUS = 141


def quiet_on_closed_stdout(main):
    """Wrap a CLI ``main`` so that a reader closing stdout (``... | head``) ends it quietly.

    Python ignores SIGPIPE, so the first write after the reader has gone raises BrokenPipeError,
    and so does the interpreter's final flush of buffered output; both would print a traceback.
    The wrapper flushes stdout itself, and on a closed pipe points stdout at /dev/null (so the
    final flush has nowhere to fail) and returns :data:`CLOSED_STDOUT_STATUS`.
    """
    @functools.wraps(main)
    def run(*args, **kwargs):
        try:
            try:
                return main(*args, **kwargs)
            finally:
                sys.stdout.flush()
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            return CLOSED_STDOUT_STATUS
    return run
