"""Writing a set of files all or nothing (``TrainedModel.export``, ``write_sgfd``,
``write_mmrec``): a failed write (a full disk, a lost permission) leaves the directory as it was,
with no partial file, and raises one error naming the file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np


def write_all(out: Path, files: dict[str, Callable], *, error: type[Exception], what: str,
              done: str = "written") -> dict[str, Path]:
    """Write ``out/<name>`` for every ``{name: write}`` (``write(f)`` fills a binary file
    object), all or nothing: each goes to a temporary file, and they are renamed over their
    targets only once every one is written. ``out`` is created (with its parents) when missing,
    and removed again when it was created and a write fails.

    Returns ``{name: path}``. Raises ``error`` (``"<what>: cannot write <path>: <why>; nothing
    was <done> ..."``) for a directory that cannot be created or a file that cannot be written.
    """
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise error(f"{what}: cannot create {out}: {e.strerror or e}; give another "
                    f"directory") from None
    try:
        return _replace_all(out, files, error, what, done)
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()
        raise


def _replace_all(out: Path, files: dict, error, what: str, done: str) -> dict[str, Path]:
    written = {name: out / name for name in files}
    tmps, renamed = {}, []
    try:
        for name, write in files.items():
            tmps[name] = out / f".{name}.tmp{os.getpid()}"
            with open(tmps[name], "wb") as f:
                write(f)
        for name, tmp in tmps.items():
            os.replace(tmp, written[name])
            renamed.append(name)
    except OSError as e:
        kept = (f"{len(renamed)} of {len(files)} files were replaced before it" if renamed else
                f"nothing was {done} (the files in {out} are as they were)")
        raise error(f"{what}: cannot write {written[name]}: {e.strerror or e}; {kept}: free "
                    f"space, or give another directory") from None
    finally:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)
    return written


def npy_writer(arr) -> Callable:
    """A :func:`write_all` writer saving ``arr`` as ``.npy`` (no pickles)."""
    return lambda f: np.save(f, arr, allow_pickle=False)


def table_writer(header: list[str], columns: list, sep: str = "\t") -> Callable:
    """A :func:`write_all` writer of a UTF-8 text table: ``header``, then one line per row of
    ``columns`` (equal-length sequences), fields joined by ``sep``, ``\\n`` line ends."""
    def write(f):
        f.write((sep.join(header) + "\n").encode("utf-8"))
        for row in zip(*columns):
            f.write((sep.join(str(v) for v in row) + "\n").encode("utf-8"))
    return write
