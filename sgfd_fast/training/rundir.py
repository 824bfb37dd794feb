"""The run directory's life: creating it, locking it, reading its ``run.json`` back, deciding
what a ``--resume`` does, and the data fingerprint that a resume checks.

Cases, each with one outcome (``README.md``, "Run directories"):

* a new run: ``--out`` must be a new or an empty directory (a lone ``run.lock`` counts as empty).
  One holding a run is refused with a pointer to ``--resume``; other content (which the run's
  files could overwrite), a file, a path below a file, an unwritable place: :class:`RunDirectoryError`.
  If the run fails before it has saved any ``last.pt``, what this call created is removed again,
  so the same ``--out`` can be used once the cause is fixed; after a checkpoint everything is kept
  for ``--resume``.
* one process per run directory: ``run.lock`` is held with ``fcntl.flock`` for the run's life
  (released by the kernel when the process ends, however it ends); a second process is refused
  with the holder's pid.
* resume, per grid point: ``last.pt`` present: continue from it; absent with no ``metrics.jsonl``
  lines: the point never reached its first checkpoint and starts at epoch 1 (said on screen);
  absent with metrics lines: refused (the epochs behind them cannot be continued exactly).
  ``epochs`` below what a point has trained is refused; a run whose every point is done and whose
  ``results.json`` exists has nothing to train and nothing is written.
* the data: ``run.json`` stores :func:`data_fingerprint`; a resume whose data differ is refused
  unless asked to continue anyway (``--resume RUN --allow-data-change``).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, RunDirectoryError
from .checkpoint import load_checkpoint

__all__ = ["LOCK_NAME", "RunDirectory", "PointState", "point_states", "data_fingerprint",
           "describe_fingerprint"]

LOCK_NAME = "run.lock"


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


class RunDirectory:
    """A locked run directory; use :meth:`create` (a new run) or :meth:`open` (a resume) in a
    ``with`` block. Only the main process (rank 0) should construct one."""

    def __init__(self, path: Path, created: Path | None, before: set[str], lock_fd: int):
        self.path = path
        self._created = created   # the topmost directory this call made, if any
        self._before = before     # entries the directory already had (when it existed)
        self._lock_fd = lock_fd

    # --- acquisition ---------------------------------------------------------------------
    @classmethod
    def create(cls, path) -> "RunDirectory":
        """Make (or adopt an existing, empty) directory for a new run and lock it."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise RunDirectoryError(f"the run directory {path} is a file; give --out a new or "
                                    f"empty directory")
        if path.is_dir():
            # the run's files would replace same-named ones: adopt nothing but a lock
            other = sorted(set(os.listdir(path)) - {LOCK_NAME})
            if other and "run.json" not in other:  # a run: refused below, naming --resume
                shown = ", ".join(other[:3]) + (", ..." if len(other) > 3 else "")
                raise RunDirectoryError(f"the run directory {path} is not empty ({shown}); "
                                        f"give --out a new or empty directory")
        created = None
        if not path.exists():
            top = path
            while not top.parent.exists() and top.parent != top:
                top = top.parent
            for parent in (top, *top.parents):
                if parent.exists():
                    if not parent.is_dir():
                        raise RunDirectoryError(f"cannot create the run directory {path}: "
                                                f"{parent} is a file")
                    break
            try:
                path.mkdir(parents=True)
            except OSError as e:
                raise RunDirectoryError(f"cannot create the run directory {path}: {_reason(e)}; "
                                        f"choose another --out") from None
            created = top
        before = {p.name for p in path.iterdir()} if created is None else set()
        try:
            fd = cls._lock(path)
        except RunDirectoryError:
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            raise
        rd = cls(path, created, before, fd)
        if (path / "run.json").exists():
            rd.close()
            raise ConfigError(f"{path} already holds a run; continue it with --resume "
                                    f"{path} or choose another --out")
        return rd

    @classmethod
    def open(cls, path) -> "RunDirectory":
        """Lock the directory of an existing run (for ``--resume``). The lock file keeps its
        content until :meth:`claim`: a finished run is only read, and nothing in it is written."""
        path = Path(path)
        if not (path / "run.json").is_file():
            raise ConfigError(f"{path} is not a run directory (no run.json); --resume "
                                    f"takes the directory a previous training wrote")
        return cls(path, None, set(), cls._lock(path, claim=False))

    def claim(self) -> None:
        """Write this process's pid into the held lock file (what a refused process reports)."""
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)

    @staticmethod
    def _lock(path: Path, claim: bool = True) -> int:
        lock = path / LOCK_NAME
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunDirectoryError(f"cannot write in the run directory {path}: {_reason(e)}"
                                    ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise RunDirectoryError(f"{path} is in use by another training process (pid "
                                        f"{holder}, which holds {lock}); wait for it to end or "
                                        f"choose another --out") from None
            raise RunDirectoryError(f"cannot lock {lock}: {_reason(e)}") from None
        if claim:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    # --- release -------------------------------------------------------------------------
    def close(self) -> None:
        """Release the lock (the kernel also releases it when the process ends)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def has_checkpoint(self) -> bool:
        """Whether any ``last.pt`` exists in the run (its own or a grid point's)."""
        return any(self.path.rglob("last.pt"))

    def discard(self) -> None:
        """Remove what :meth:`create` and the run since then made here; keep what was there."""
        if self._created is not None:
            shutil.rmtree(self._created, ignore_errors=True)
            return
        for p in self.path.iterdir():
            if p.name not in self._before:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    def __enter__(self) -> "RunDirectory":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class PointState:
    """Where one grid point stands: ``epoch`` completed, ``batch`` inside the next one, ``stopped``
    by early stopping; ``checkpoint`` False when it has no ``last.pt`` yet."""

    checkpoint: bool
    epoch: int = 0
    batch: int = 0
    stopped: bool = False

    def done(self, epochs: int) -> bool:
        return self.checkpoint and (self.stopped or (self.epoch >= epochs and not self.batch))


def _n_metric_lines(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(1 for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip())


def point_states(run_dir: Path, point_dirs: list[Path], epochs: list[int]) -> list[PointState]:
    """Read each point's ``last.pt`` and refuse what cannot be continued exactly: a point with
    metrics but no checkpoint, and ``epochs`` (per point) below what it has already trained."""
    states = []
    for i, (pdir, epochs) in enumerate(zip(point_dirs, epochs)):
        where = f"grid point {i + 1} ({pdir})" if pdir != run_dir else f"{run_dir}"
        last = pdir / "last.pt"
        if not last.exists():
            n = _n_metric_lines(pdir / "metrics.jsonl")
            if n:
                raise RunDirectoryError(
                    f"{where} has {n} epoch(s) in metrics.jsonl but no last.pt, so it cannot "
                    f"continue where it stopped; start a new run (--out), or delete "
                    f"{pdir / 'metrics.jsonl'} to train this point again from epoch 1")
            states.append(PointState(checkpoint=False))
            continue
        ck = load_checkpoint(last)
        st = PointState(True, int(ck["epoch"]), int(ck["batch"]), bool(ck["stopped"]))
        trained = st.epoch + (1 if st.batch else 0)
        if epochs < trained and not st.stopped:
            raise ConfigError(
                f"epochs={epochs} is below the {trained} epoch(s) {where} has already "
                f"{'started' if st.batch else 'trained'}; a resume can only keep or raise "
                f"epochs (start a new run for fewer)")
        states.append(st)
    return states


def data_fingerprint(dataset) -> dict:
    """Sizes and a SHA-256 over every array of a loaded Dataset (splits, features, labels): what
    a resume compares to know that it trains on the same data. Hashing the arrays rather than
    files covers built-in, directory and in-memory datasets alike (office: ~50 MB, well under a
    second)."""
    h = hashlib.sha256()
    arrays = [("train", dataset.train), ("valid", dataset.valid), ("test", dataset.test),
              ("labels", dataset.labels)]
    arrays += [(f"features/{k}", v) for k, v in sorted(dataset.features.items())]
    for name, a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.reshape(-1).view(np.uint8))  # bytes without a copy; empty splits too
    return {"n_users": dataset.n_users, "n_items": dataset.n_items,
            "n_train": int(dataset.train.shape[0]), "n_valid": int(dataset.valid.shape[0]),
            "n_test": int(dataset.test.shape[0]), "sha256": h.hexdigest()}


def describe_fingerprint(fp: dict) -> str:
    return (f"{fp['n_users']} users, {fp['n_items']} items, {fp['n_train']}/{fp['n_valid']}/"
            f"{fp['n_test']} train/valid/test, sha256 {fp['sha256'][:12]}")
