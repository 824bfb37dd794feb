"""Files a run writes, written so that none is ever partial: JSON and checkpoints go to a
temporary file that is then renamed over the target (``os.replace`` is atomic on one file
system), and a resumed run drops the ``metrics.jsonl`` lines its checkpoint does not cover.
A failed write (a full disk, a lost permission) raises :class:`~sgfd_fast.errors.RunDirectoryError`
and leaves the previous file as it was.

Checkpoints hold plain tensors and containers only, so they load with
``torch.load(weights_only=True)``; :data:`CHECKPOINT_VERSION` is stored in each ``last.pt``.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import torch

from ..errors import ConfigError, RunDirectoryError

__all__ = ["CHECKPOINT_VERSION", "write_json", "write_text", "save_checkpoint", "load_checkpoint",
           "append_line", "trim_metrics"]

CHECKPOINT_VERSION = 1


def _write_failed(path: Path, e: OSError, kept: str) -> RunDirectoryError:
    return RunDirectoryError(f"cannot write {path}: {e.strerror or e}; {kept}")


def _write_bytes(path: Path, data) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _replace_atomically(path: Path, data) -> None:
    """Write ``data`` (bytes) to ``path`` through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        _write_bytes(tmp, data)
        os.replace(tmp, path)
    except OSError as e:
        raise _write_failed(path, e, f"the previous {path.name} is unchanged"
                            if path.exists() else f"{path.name} was not written") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: Path, obj) -> None:
    """Write JSON through a temporary file and a rename (never a partial file)."""
    _replace_atomically(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 text through a temporary file and a rename (never a partial file)."""
    _replace_atomically(path, text.encode("utf-8"))


def save_checkpoint(obj: dict, path: Path) -> None:
    """``torch.save`` through a temporary file and a rename."""
    # serialised in memory first, so that a failing write is an OSError naming its cause
    # (torch's own file writer turns ENOSPC into an unspecific RuntimeError)
    buf = io.BytesIO()
    torch.save(obj, buf)
    _replace_atomically(path, buf.getbuffer())


def append_line(path: Path, line: str) -> None:
    """Append one line to a text file (``metrics.jsonl``); a line cut short by a failed write
    is dropped again by :func:`trim_metrics` on resume."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    except OSError as e:
        raise _write_failed(path, e, "its earlier lines are unchanged") from None


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint written by the trainer (plain tensors and containers only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"checkpoint {path} does not exist") from None
    except Exception as e:  # a truncated or foreign file: say which and why
        raise ConfigError(f"cannot read checkpoint {path}: {e}") from None


def _epoch_of_line(line: str) -> float:
    """Epoch of a metrics.jsonl line; +inf for a line cut short by a crash (dropped on resume)."""
    try:
        return json.loads(line)["epoch"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def trim_metrics(path: Path, epoch: int) -> None:
    """Keep only the lines of the ``metrics.jsonl`` at ``path`` up to ``epoch`` (a resumed run
    writes the later epochs again); a missing file is left missing."""
    path = Path(path)
    if not path.exists():
        return
    keep = [ln for ln in path.read_text(encoding="utf-8").splitlines()
            if _epoch_of_line(ln) <= epoch]
    _replace_atomically(path, "".join(ln + "\n" for ln in keep).encode("utf-8"))
