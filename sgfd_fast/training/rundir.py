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
  unless asked to continue anyway (``--resume RUN --allow-data-change``), and even then when
  their shape (:func:`data_shape`) differs from the one the checkpoints were trained on.
* the records agree before anything is written: each ``last.pt`` (and its ``best.pt``) must be
  a checkpoint of the run's model and configuration (up to the keys a resume may change) for
  data of the present shape; temporary files a killed write left (``.last.pt.tmp<pid>``) are
  removed once the resume has passed every check.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import with_added_keys
from ..errors import ConfigError, RunDirectoryError
from ..records import RecordRefused, loads
from .checkpoint import load_checkpoint

__all__ = ["LOCK_NAME", "RunDirectory", "PointState", "point_states", "check_data_shape",
           "remove_temporaries", "data_fingerprint", "data_shape", "describe_fingerprint"]

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
    def create(cls, path, unique: bool = False) -> "RunDirectory":
        """Make (or adopt an existing, empty) directory for a new run and lock it.

        ``unique``: ``path`` is a default name; the first of ``path``, ``path-2``, ``path-3``,
        ... that this call can create itself (``mkdir`` is atomic) is the run directory, so
        runs started at once never share one. ``.path`` is the directory made."""
        path = Path(path)
        if unique:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise RunDirectoryError(f"cannot create {path.parent}: {_reason(e)}; give "
                                        f"--out") from None
            for n in range(1, 10_000):
                candidate = path if n == 1 else path.with_name(f"{path.name}-{n}")
                try:
                    candidate.mkdir()
                except FileExistsError:
                    continue
                except OSError as e:
                    raise RunDirectoryError(f"cannot create the run directory {candidate}: "
                                            f"{_reason(e)}; choose another --out") from None
                return cls(candidate, candidate, set(), cls._lock(candidate))
            raise RunDirectoryError(f"{path} and 9,999 numbered siblings exist; give --out")
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
    by early stopping; ``checkpoint`` False when it has no ``last.pt`` yet. ``data``: the data
    shape its checkpoints were trained on (None when they predate recording it)."""

    checkpoint: bool
    epoch: int = 0
    batch: int = 0
    stopped: bool = False
    data: dict | None = None

    def done(self, epochs: int) -> bool:
        return self.checkpoint and (self.stopped or (self.epoch >= epochs and not self.batch))


def _n_metric_lines(path: Path) -> int:
    """The epoch lines of a ``metrics.jsonl`` (0 without one). A line holding a key twice or
    NaN/Infinity is refused: a resume rewrites the file by each line's epoch, and such a line's
    epoch cannot be trusted (a line cut short by a crash is no JSON and is dropped by that rewrite)."""
    if not path.exists():
        return 0
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise RunDirectoryError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") \
            from None
    for n, line in enumerate(lines, 1):
        try:
            loads(line)
        except RecordRefused as e:
            raise RunDirectoryError(f"{path}, line {n} {e}, which sgfd_fast never writes (changed "
                                    f"by hand?); restore the line, or start a new run: nothing "
                                    f"was changed") from None
        except ValueError:
            pass
    return sum(1 for ln in lines if ln.strip())


def _plain(value):
    """``value`` as run.json stores it (tuples become lists)."""
    return json.loads(json.dumps(value))


def _check_checkpoint(path: Path, kind: str, model: str, config: dict, free_keys) -> dict:
    """A ``last.pt``/``best.pt`` that belongs to this point: the run's model and configuration
    (``free_keys`` may differ: a resume may change them)."""
    ck = load_checkpoint(path, kind)
    if ck["model_name"] != model:
        raise RunDirectoryError(f"{path} holds a {ck['model_name']} model, but the run trains "
                                f"{model}: it comes from another run; restore this run's "
                                f"{path.name}, or start a new run")
    theirs, ours = _plain(with_added_keys(ck["config"])), _plain(config)
    changed = sorted(k for k in set(theirs) | set(ours)
                     if k not in free_keys and theirs.get(k) != ours.get(k))
    if changed:
        raise RunDirectoryError(
            f"{path} was written with another configuration than the run's ("
            + ", ".join(f"{k}: {theirs.get(k)!r} there, {ours.get(k)!r} in run.json"
                        for k in changed[:4])
            + f"): it comes from another run; restore this run's {path.name}, or start a new run")
    return ck


def point_states(run_dir: Path, point_dirs: list[Path], points, model: str,
                 free_keys=()) -> list[PointState]:
    """Read and check each point's ``last.pt`` (and the ``best.pt`` it refers to), and refuse
    what cannot be continued exactly: a checkpoint of another model or configuration (but for
    ``free_keys``), a point with metrics but no checkpoint, and ``epochs`` below what it has
    already trained."""
    states = []
    for i, (pdir, point) in enumerate(zip(point_dirs, points)):
        where = f"grid point {i + 1} ({pdir})" if pdir != run_dir else f"{run_dir}"
        last = pdir / "last.pt"
        n = _n_metric_lines(pdir / "metrics.jsonl")  # checked before anything is rewritten
        if not last.exists():
            if n:
                raise RunDirectoryError(
                    f"{where} has {n} epoch(s) in metrics.jsonl but no last.pt, so it cannot "
                    f"continue where it stopped; start a new run (--out), or delete "
                    f"{pdir / 'metrics.jsonl'} to train this point again from epoch 1")
            states.append(PointState(checkpoint=False))
            continue
        ck = _check_checkpoint(last, "last", model, point, free_keys)
        st = PointState(True, ck["epoch"], ck["batch"], ck["stopped"], ck.get("data"))
        if ck["best_epoch"] is not None:
            best = _check_checkpoint(pdir / "best.pt", "best", model, point, free_keys)
            if best.get("data") != st.data:
                raise RunDirectoryError(f"{pdir / 'best.pt'} and {last} were trained on data "
                                        f"of different shapes; restore this run's files, or "
                                        f"start a new run")
        trained = st.epoch + (1 if st.batch else 0)
        epochs = point["epochs"]
        if epochs < trained and not st.stopped:
            raise ConfigError(
                f"epochs={epochs} is below the {trained} epoch(s) {where} has already "
                f"{'started' if st.batch else 'trained'}; a resume can only keep or raise "
                f"epochs (start a new run for fewer)")
        states.append(st)
    return states


def check_data_shape(states: list[PointState], shape: dict, recorded: dict | None,
                     run_dir: Path) -> None:
    """Refuse data whose shape differs from the one the checkpoints (or, where they do not
    record it, ``run.json``'s fingerprint ``recorded``) were trained on: their tables would not
    fit. Raises DataError before anything is written."""
    from ..errors import DataError

    trained = next((st.data for st in states if st.data is not None), None)
    if trained is None and recorded is not None:
        trained = {k: recorded[k] for k in shape if k in recorded}
    if trained is not None and any(trained.get(k) != v for k, v in shape.items()
                                   if k in trained):
        raise DataError(f"the data now have another shape ({_describe_shape(shape)}) than its "
                        f"checkpoints were trained on ({_describe_shape(trained)}), so the model "
                        f"of {run_dir} cannot continue on them (--allow-data-change continues "
                        f"only on data of the same shape); restore the data or this run's "
                        f"checkpoints, or start a new run")


def _describe_shape(shape: dict) -> str:
    feats = shape.get("features")
    return (f"{shape.get('n_users')} users, {shape.get('n_items')} items"
            + (f", {shape['n_labels']} labels" if "n_labels" in shape else "")
            + (", features " + ", ".join(f"{m} {w}-d" for m, w in feats.items())
               if feats else ""))


_TEMPORARY = re.compile(r"\..+\.tmp\d+")  # what a killed write (checkpoint._replace_atomically) left


def remove_temporaries(point_dirs: list[Path]) -> None:
    """Remove the temporary files of writes that a killed process never finished (call only
    with the run's lock held: no other process writes there)."""
    for d in dict.fromkeys(point_dirs):
        if d.is_dir():
            for p in d.iterdir():
                if _TEMPORARY.fullmatch(p.name) and p.is_file():
                    p.unlink(missing_ok=True)


def data_shape(dataset) -> dict:
    """What the model's tables are sized by: users, items, labels and each modality's width."""
    return {"n_users": int(dataset.n_users), "n_items": int(dataset.n_items),
            "n_labels": int(dataset.n_labels),
            "features": {m: int(v.shape[1]) for m, v in dataset.features.items()}}


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
    return {**data_shape(dataset),
            "n_train": int(dataset.train.shape[0]), "n_valid": int(dataset.valid.shape[0]),
            "n_test": int(dataset.test.shape[0]), "sha256": h.hexdigest()}


def describe_fingerprint(fp: dict) -> str:
    if not isinstance(fp, dict):
        return f"{fp!r}"
    return (f"{fp.get('n_users')} users, {fp.get('n_items')} items, {fp.get('n_train')}/"
            f"{fp.get('n_valid')}/{fp.get('n_test')} train/valid/test, sha256 "
            f"{str(fp.get('sha256'))[:12]}")
