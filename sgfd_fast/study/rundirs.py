"""A study's directory: the arm x seed run directories ``<out>/<arm>/seed-<seed>/`` (planned
seed-major), whether a directory already there may be continued (:func:`check_existing`) or the
study directory holds anything a study did not write (:func:`check_out`), and what a finished run
reports (:func:`finished_results`, checked against its arm)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, load_config, with_added_keys
from ..errors import ConfigError
from ..records import read_json, read_results, read_run, written_for
from .spec import Spec

__all__ = ["Run", "plan_runs", "check_existing", "check_out", "finished_results", "as_list"]


@dataclass
class Run:
    arm: str
    seed: int
    dir: Path
    config: Config


def plan_runs(spec: Spec, out: Path, device: str | None) -> list[Run]:
    """Every arm x seed, seed-major (after the first seeds every arm has a result); each arm's
    config is resolved once (the seed, checked with the spec, is its only difference)."""
    arms = {arm: load_config(spec.model, spec.dataset,
                             overrides=spec.overrides(arm, spec.seeds[0], device))
            for arm in spec.arms}
    return [Run(arm, seed, out / arm / f"seed-{seed}",
                 Config({**cfg.values, "seed": seed}, cfg.grid_keys, cfg.sources, cfg.files))
            for seed in spec.seeds for arm, cfg in arms.items()]


def check_existing(run: Run) -> None:
    """A run directory already there must be a run of this configuration (up to resumable keys)
    whose ``epochs`` the spec keeps or raises."""
    if not run.dir.exists():
        return
    from ..training import RESUMABLE_KEYS
    from ..training.rundir import LOCK_NAME

    if not (run.dir / "run.json").exists():
        other = sorted(p.name for p in run.dir.iterdir() if p.name != LOCK_NAME)
        if other and "results.json" not in other:  # results copied alone are reported
            raise ConfigError(f"{run.dir} holds {', '.join(other[:3])} but no run.json: it is "
                              f"not a run this study started; move it away, or study into "
                              f"another --out")
        return
    old = with_added_keys(read_run(run.dir)["config"])
    new = json.loads(json.dumps(run.config.values))
    changed = sorted(k for k in set(old) | set(new)
                     if k not in RESUMABLE_KEYS and old.get(k) != new.get(k))
    if changed:
        raise ConfigError(f"{run.dir} was trained with another configuration ("
                          + ", ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now"
                                      for k in changed[:5])
                          + "); remove that directory or study into another --out")
    if max(as_list(old.get("epochs"))) > max(as_list(new.get("epochs"))):
        raise ConfigError(f"{run.dir} was trained with epochs={old.get('epochs')}, the spec now "
                          f"says {new.get('epochs')}; a study can keep or raise epochs (its "
                          f"runs then continue), not lower them: restore epochs, or study into "
                          f"another --out")


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


_REPORT_FILES = ("study.json", "study.md", "bars.png", "curves.png")
_REPORT_TMP = re.compile(r"\.(study\.json|study\.md|bars\.png|curves\.png)\.tmp\d+")  # a killed write's
_SEED_DIR = re.compile(r"seed-\d+")


def check_out(spec: Spec, out: Path) -> None:
    """``out`` is new, empty, or a study directory: arm directories holding ``seed-<n>`` run
    directories (an arm since dropped from the spec included) and, once a ``study.json`` says it
    is a study report, the report files. Anything else is refused before a run writes into it."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a new directory, or this study's own")
    summary = out / "study.json"
    record = read_json(summary) if summary.is_file() else None
    reported = isinstance(record, dict) and "arms" in record

    def ours(p: Path) -> bool:
        if p.name in _REPORT_FILES or _REPORT_TMP.fullmatch(p.name):
            return reported
        return p.is_dir() and all(c.is_dir() and _SEED_DIR.fullmatch(c.name)
                                  for c in p.iterdir())

    foreign = sorted(p.name for p in out.iterdir() if not ours(p))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ConfigError(f"--out {out} holds {shown}, which no study wrote (a study directory "
                          f"holds <arm>/seed-<n>/ runs and its report); give a new or empty "
                          f"directory, or this study's own")


def finished_results(run: Run, spec: Spec) -> dict | None:
    """The run's ``results.json`` if it was written under the spec's ``epochs``, else None (a
    raised cap continues the runs that stopped at the old one).

    Raises:
        RunDirectoryError: it is not a results record, or not one of this arm: another model,
        data or configuration (a copied or hand-edited file would be compared as this arm)."""
    from ..errors import RunDirectoryError
    from ..training import RESUMABLE_KEYS

    if not (run.dir / "results.json").exists():
        return None
    res = read_results(run.dir)
    points = run.config.points()
    same_grid = len(points) == len(res.get("grid", [None]))  # else stale: trained again below
    point = json.loads(json.dumps(points[res.get("selected_point", 0)])) if same_grid else {}
    problem = (f"model {res['model']!r}, not the spec's {spec.model!r}"
               if res["model"] != spec.model else
               f"dataset {res['dataset']!r}, not the spec's {spec.dataset!r}"
               if spec.dataset is not None and res["dataset"] != spec.dataset else
               f"data {res['data']!r}, not the spec's {spec.data!r}"
               if spec.data is not None and res["data"] != json.loads(json.dumps(spec.data))
               else None)
    if problem is None and same_grid:
        changed = sorted(k for k, v in res["config"].items()
                         if k not in RESUMABLE_KEYS and point.get(k) != v)
        if changed:
            problem = ("config " + ", ".join(f"{k}={res['config'][k]!r} (the arm: "
                                             f"{point.get(k)!r})" for k in changed[:4]))
    if problem:
        raise RunDirectoryError(f"{run.dir / 'results.json'} reports {problem}: it is not a "
                                f"result of arm {run.arm!r}, seed {run.seed}; move that run "
                                f"directory away (or train it again), then rerun the study")
    return res if written_for(res, points) else None
