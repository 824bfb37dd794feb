"""Reading a run's records back: ``run.json``, ``results.json`` and ``metrics.jsonl``, each with
one clear error when a file is missing, damaged or not what sgfd_fast wrote. No torch, so the
plot and study reports start quickly."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import RunDirectoryError

__all__ = ["loads", "RecordRefused", "read_json", "read_run", "read_results", "read_metrics",
           "written_for"]

_DATA = (dict, str, type(None))  # a built-in name, a directory and format, or None: in memory
_NUMBER = (int, float)
#: Keys every ``run.json`` holds (sgfd_fast.training.runner writes them), with their types.
RUN_KEYS = {"model": str, "dataset": str, "data": _DATA, "data_fingerprint": dict, "config": dict,
            "grid_keys": list}
#: Keys every ``data_fingerprint`` of a ``run.json`` holds (training.rundir.data_fingerprint).
FINGERPRINT_KEYS = {"n_users": int, "n_items": int, "sha256": str}
#: Keys every ``results.json`` holds, with their types.
RESULTS_KEYS = {"model": str, "dataset": str, "sgfd": bool, "protocol": str, "valid_metric": str,
                "valid": dict, "test": dict, "best_epoch": int, "epochs_trained": int,
                "early_stopped": bool, "config": dict, "checkpoint": str, "data": _DATA}
#: Optional keys of a ``results.json`` (a grid's), with their types.
GRID_KEYS = {"grid": list, "selected_point": int}
#: Keys of a ``metrics.jsonl`` line besides ``epoch``, with their types (all optional).
METRICS_KEYS = {"losses": dict, "valid": dict, "epoch_time_s": _NUMBER, "eval_time_s": _NUMBER,
                "world_size": int, "sgfd": dict}


def _wrong_type(value, t) -> bool:
    """Not of type ``t`` (bool is an int to Python, but ``true`` is no epoch or count)."""
    if isinstance(value, bool):
        return t is not bool and not (isinstance(t, tuple) and bool in t)
    return not isinstance(value, t)


def _scores(d) -> bool:
    """``{"recall@20": 0.1, ...}``: metric names to numbers."""
    return isinstance(d, dict) and all(isinstance(k, str) and not _wrong_type(v, _NUMBER)
                                       for k, v in d.items())


class RecordRefused(Exception):
    """JSON that Python's reader accepts but sgfd_fast never writes: a key twice in one object
    (the reader keeps the last silently), or NaN/Infinity (not JSON: every number of a record is
    finite)."""


def _object(pairs: list) -> dict:
    d = dict(pairs)
    if len(d) < len(pairs):
        seen = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise RecordRefused(f"has the key {twice!r} twice in one object")
    return d


def _constant(name: str):
    raise RecordRefused(f"holds {name}, which is not a JSON number (a record holds only finite "
                        f"numbers)")


def loads(text: str) -> object:
    """JSON as a record is read: a duplicate key or NaN/Infinity raises :class:`RecordRefused`,
    other invalid JSON ValueError."""
    return json.loads(text, object_pairs_hook=_object, parse_constant=_constant)


def read_json(path) -> object:
    """A JSON file of a run (``run.json``, ``results.json``).

    Raises:
        RunDirectoryError: it cannot be read, is not JSON, or holds a key twice in one object or
        NaN/Infinity (:func:`loads`).
    """
    path = Path(path)
    try:
        return loads(path.read_text(encoding="utf-8"))
    except RecordRefused as e:
        raise RunDirectoryError(f"{path} {e}; sgfd_fast never writes that, so it was changed "
                                f"by hand or damaged") from None
    except OSError as e:
        raise RunDirectoryError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise RunDirectoryError(f"{path} is not valid JSON ({e}); sgfd_fast writes it whole "
                                f"(a temporary file renamed), so it was changed by hand or "
                                f"damaged") from None


def _record(path: Path, keys: dict, what: str, fix: str, more=None) -> dict:
    """A JSON object holding ``keys`` (name: type), or one RunDirectoryError ending in ``fix``;
    ``more(record)`` returns a further problem of a record whose keys are right (or None)."""
    try:
        record = read_json(path)
    except RunDirectoryError as e:
        raise RunDirectoryError(f"{e}; {fix}") from None
    if not isinstance(record, dict):
        problem = f"holds a JSON {type(record).__name__}, not an object"
    else:
        missing = [k for k in keys if k not in record]
        wrong = [k for k, t in keys.items() if k in record and _wrong_type(record[k], t)]
        problem = (f"lacks {', '.join(missing)}" if missing else
                   f"has {', '.join(f'{k}={record[k]!r}' for k in wrong)} of the wrong type"
                   if wrong else more(record) if more else None)
    if problem:
        raise RunDirectoryError(f"{path} {problem}; it is not {what} written by "
                                f"sgfd_fast.train; {fix}")
    return record


def _run_problem(r: dict) -> str | None:
    fp = r["data_fingerprint"]
    wrong = [k for k, t in FINGERPRINT_KEYS.items() if _wrong_type(fp.get(k), t)]
    if wrong:
        return (f"has data_fingerprint={fp!r}, which lacks {wrong[0]} (or holds it of the wrong "
                f"type), so the data the run was trained on cannot be checked")
    return None


def read_run(run_dir) -> dict:
    """``run.json`` of a run directory, checked to hold :data:`RUN_KEYS` (its
    ``data_fingerprint`` :data:`FINGERPRINT_KEYS`).

    Raises:
        RunDirectoryError: it is missing, cannot be read, is not JSON, or lacks one of those keys.
    """
    return _record(Path(run_dir) / "run.json", RUN_KEYS, "a run record",
                   "it records how the run was configured and the data it was trained on, so "
                   "the run can be neither resumed nor loaded without it: restore it, or start "
                   "a new run", _run_problem)


def _results_problem(r: dict) -> str | None:
    bad = [k for k in ("valid", "test") if not _scores(r[k])]
    if bad:
        return f"has {bad[0]}={r[bad[0]]!r}, which is not metric names mapped to numbers"
    if r["best_epoch"] < 1 or r["epochs_trained"] < r["best_epoch"]:
        return (f"has best_epoch={r['best_epoch']} of epochs_trained={r['epochs_trained']}, "
                f"which no training gives")
    wrong = [k for k, t in GRID_KEYS.items() if k in r and _wrong_type(r[k], t)]
    if wrong:
        return f"has {wrong[0]}={r[wrong[0]]!r} of the wrong type"
    if ("grid" in r) != ("selected_point" in r):
        return "has one of grid and selected_point without the other"
    if "grid" in r:
        if not all(isinstance(x, dict) and isinstance(x.get("params"), dict) and
                   not _wrong_type(x.get("valid_score"), _NUMBER) for x in r["grid"]):
            return "has a grid entry that is not {params, valid_score, ...}"
        if not 0 <= r["selected_point"] < len(r["grid"]):
            return (f"has selected_point={r['selected_point']}, which is not one of its "
                    f"{len(r['grid'])} grid points")
    return None


def read_results(run_dir) -> dict:
    """``results.json`` of a finished run, checked to hold :data:`RESULTS_KEYS` (and, for a grid,
    :data:`GRID_KEYS` with ``selected_point`` one of its points).

    Raises:
        RunDirectoryError: it cannot be read, is not JSON, or lacks one of those keys.
    """
    return _record(Path(run_dir) / "results.json", RESULTS_KEYS, "the results record",
                   "train the run again, or restore the file", _results_problem)


def written_for(results: dict, points) -> bool:
    """Whether ``results`` (a results.json) was written under the ``epochs`` that ``points``
    (the run's grid points, full configs) now ask for: a raised cap leaves it stale, and so
    does a grid of another size."""
    i = results.get("selected_point", 0)
    return len(results.get("grid", [None])) == len(points) and \
        results["config"].get("epochs") == points[i]["epochs"]


def read_metrics(point_dir) -> list[dict]:
    """The per-epoch lines of ``<point_dir>/metrics.jsonl`` (``[]`` when there is no file).

    Raises:
        RunDirectoryError: it cannot be read, or a line is not a JSON object with an ``epoch``,
        holds a key twice or NaN/Infinity (named with its line number).
    """
    path = Path(point_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RunDirectoryError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") \
            from None
    lines = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            x = loads(line)
        except (RecordRefused, ValueError) as e:
            x, why = None, str(e)
        else:
            why = "not an object with an epoch"
        if isinstance(x, dict) and not _wrong_type(x.get("epoch"), int):
            wrong = [k for k, t in METRICS_KEYS.items() if k in x and _wrong_type(x[k], t)]
            wrong += [k for k in ("losses", "valid") if k in x and not _scores(x[k])]
            why = f"{wrong[0]}={x[wrong[0]]!r} is of the wrong type" if wrong else None
        if why:
            raise RunDirectoryError(f"{path}, line {n}: {why}; sgfd_fast appends one JSON "
                                    f"object per epoch, so the file was changed by hand or "
                                    f"damaged")
        lines.append(x)
    return lines
