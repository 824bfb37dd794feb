"""Reading a run's records back: ``run.json``, ``results.json`` and ``metrics.jsonl``, each with
one clear error when a file is missing, damaged or not what sgfd_fast wrote. No torch, so the
plot and study reports start quickly."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import RunDirectoryError

__all__ = ["read_json", "read_run", "read_results", "read_metrics", "written_for"]

_DATA = (dict, str, type(None))  # a built-in name, a directory and format, or None: in memory
#: Keys every ``run.json`` holds (sgfd_fast.training.runner writes them), with their types.
RUN_KEYS = {"model": str, "dataset": str, "data": _DATA, "config": dict, "grid_keys": list}
#: Keys every ``results.json`` holds, with their types.
RESULTS_KEYS = {"valid": dict, "test": dict, "best_epoch": int, "epochs_trained": int,
                "early_stopped": bool, "config": dict, "checkpoint": str, "data": _DATA}


def read_json(path) -> object:
    """A JSON file of a run (``run.json``, ``results.json``).

    Raises:
        RunDirectoryError: it cannot be read or is not JSON.
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise RunDirectoryError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise RunDirectoryError(f"{path} is not valid JSON ({e}); sgfd_fast writes it whole "
                                f"(a temporary file renamed), so it was changed by hand or "
                                f"damaged") from None


def _record(path: Path, keys: dict, what: str, fix: str) -> dict:
    """A JSON object holding ``keys`` (name: type), or one RunDirectoryError ending in ``fix``."""
    try:
        record = read_json(path)
    except RunDirectoryError as e:
        raise RunDirectoryError(f"{e}; {fix}") from None
    if not isinstance(record, dict):
        problem = f"holds a JSON {type(record).__name__}, not an object"
    else:
        missing = [k for k in keys if k not in record]
        # bool is an int to Python: best_epoch true is not an epoch
        wrong = [k for k, t in keys.items() if k in record and (
            not isinstance(record[k], t) or (t is int and isinstance(record[k], bool)))]
        problem = (f"lacks {', '.join(missing)}" if missing else
                   f"has {', '.join(f'{k}={record[k]!r}' for k in wrong)} of the wrong type"
                   if wrong else None)
    if problem:
        raise RunDirectoryError(f"{path} {problem}; it is not {what} written by "
                                f"sgfd_fast.train; {fix}")
    return record


def read_run(run_dir) -> dict:
    """``run.json`` of a run directory, checked to hold :data:`RUN_KEYS`.

    Raises:
        RunDirectoryError: it cannot be read, is not JSON, or lacks one of those keys.
    """
    return _record(Path(run_dir) / "run.json", RUN_KEYS, "a run record",
                   "it records how the run was configured, so the run cannot be resumed: start "
                   "a new run")


def read_results(run_dir) -> dict:
    """``results.json`` of a finished run, checked to hold :data:`RESULTS_KEYS`.

    Raises:
        RunDirectoryError: it cannot be read, is not JSON, or lacks one of those keys.
    """
    return _record(Path(run_dir) / "results.json", RESULTS_KEYS, "the results record",
                   "train the run again, or restore the file")


def written_for(results: dict, points: list[dict]) -> bool:
    """Whether ``results`` (a results.json) was written under the ``epochs`` that ``points``
    (the run's grid points, full configs) now ask for: a raised cap leaves it stale."""
    return results["config"].get("epochs") == points[results.get("selected_point", 0)]["epochs"]


def read_metrics(point_dir) -> list[dict]:
    """The per-epoch lines of ``<point_dir>/metrics.jsonl`` (``[]`` when there is no file).

    Raises:
        RunDirectoryError: it cannot be read, or a line is not a JSON object with an ``epoch``
        (named with its line number).
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
            x = json.loads(line)
        except ValueError as e:
            x, why = None, str(e)
        else:
            why = "not an object with an epoch"
        if not isinstance(x, dict) or not isinstance(x.get("epoch"), int):
            raise RunDirectoryError(f"{path}, line {n}: {why}; sgfd_fast appends one JSON "
                                    f"object per epoch, so the file was changed by hand or "
                                    f"damaged")
        lines.append(x)
    return lines
