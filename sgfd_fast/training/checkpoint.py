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

__all__ = ["CHECKPOINT_VERSION", "CHECKPOINT_KEYS", "WriteFailed", "write_json", "write_text", "save_checkpoint", "load_checkpoint",
           "append_line", "trim_metrics"]

CHECKPOINT_VERSION = 1


class WriteFailed(RunDirectoryError):
    """A write to the run directory failed (a full disk, a lost permission); what was written
    before it is intact, so the run can continue with ``--resume`` once the cause is fixed."""


def _write_failed(path: Path, e: OSError, kept: str) -> WriteFailed:
    return WriteFailed(f"cannot write {path}: {e.strerror or e}; {kept}")


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


_OPT = type(None)
_RECENT = ("data", "valid")
#: What the trainer's checkpoints hold, with the types; :data:`_RECENT` keys are absent from
#: checkpoints written before them (the data's shape; ``valid`` of a ``best.pt`` that held the
#: trainer's whole state).
CHECKPOINT_KEYS = {
    "best": {"version": int, "model_name": str, "config": dict, "model": dict, "epoch": int,
             "valid": (dict, _OPT), "data": (dict, _OPT)},
    "last": {"version": int, "model_name": str, "config": dict, "model": dict,
             "optimizer": dict, "rng": dict, "sampler": (dict, _OPT), "epoch": int,
             "batch": int, "partial": dict, "best_score": (float, int), "best_epoch": (int, _OPT),
             "best_valid": (dict, _OPT), "patience": int, "stopped": bool,
             "epoch_times": list, "eval_times": list, "data": (dict, _OPT)},
}


def load_checkpoint(path: Path, kind: str | None = None) -> dict:
    """Read a checkpoint written by the trainer (plain tensors and containers only).

    Args:
        kind: ``"last"`` or ``"best"``: also check that it holds what the trainer writes there
            (:data:`CHECKPOINT_KEYS`, :data:`CHECKPOINT_VERSION`, a state dict of tensors).
    Raises:
        ConfigError: it does not exist, cannot be read, or (with ``kind``) is not such a
            checkpoint.
    """
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"checkpoint {path} does not exist") from None
    except Exception as e:  # a truncated or foreign file: say which and why, in one line
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"cannot read checkpoint {path}: it is damaged or not a checkpoint "
                          f"sgfd_fast wrote ({why})") from None
    if kind is None:
        return ck
    keys = CHECKPOINT_KEYS[kind]
    if not isinstance(ck, dict):
        problem = f"holds a {type(ck).__name__}, not a checkpoint's dict"
    else:
        missing = [k for k in keys if k not in ck and k not in _RECENT]
        wrong = [k for k, t in keys.items() if k in ck and
                 (not isinstance(ck[k], t) or (isinstance(ck[k], bool) and t is not bool))]
        problem = (f"lacks {', '.join(missing)}" if missing else
                   f"has {wrong[0]} of the wrong type ({type(ck[wrong[0]]).__name__})" if wrong
                   else f"is of checkpoint version {ck['version']}, this sgfd_fast reads "
                        f"version {CHECKPOINT_VERSION}" if ck["version"] != CHECKPOINT_VERSION
                   else "holds a model state that is not named tensors"
                   if not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                              for k, v in ck["model"].items()) else None)
    if problem:
        raise ConfigError(f"checkpoint {path} {problem}: it is not a {kind}.pt written by "
                          f"sgfd_fast.train")
    return ck


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
