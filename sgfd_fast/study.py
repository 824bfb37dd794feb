"""``python -m sgfd_fast.study SPEC``: does SGFD help on my data? Every arm x seed, then statistics.

A spec is a YAML file (a shipped one by name, ``python -m sgfd_fast.study --list``, or a path) in
the format :data:`SPEC_FORMAT` shows (``python -m sgfd_fast.study --help`` prints it).

The whole spec is checked before anything trains: an unknown key names the arm and the closest
known keys; errors exit with status 2. Each arm x seed is a normal run directory,
``<out>/<arm>/seed-<seed>/``, trained by :func:`sgfd_fast.training.train`. A rerun skips finished
runs (``results.json`` present) and continues unfinished ones with
:func:`sgfd_fast.training.resume`, so an interrupted study is resumed by running the same command
again; a run directory trained with another configuration is an error (never silently reused).
A smaller study, from the command line without editing the spec: ``--seeds 1,2`` replaces the
spec's seeds, ``--epochs N`` and ``key=value`` overrides apply to every arm (after the spec's
``config`` and the arm's own keys); the report says what was changed, and reruns and ``--report``
need the same options.
``--shard I/N`` trains only every N-th run (the I-th of each N, in seed-major order), so N
independent processes (or machines sharing the directory) split a study; each writes the report
of whatever has finished, the last one the full report; ``--report`` only writes it. ``--arms
A,B`` trains only those arms (e.g. the baseline and one arm on every seed first, the rest
later); the report still covers every finished run of the spec.

The report, in ``<out>``: ``study.json`` (everything below, per seed), ``study.md`` (tables), and
with matplotlib (``pip install 'sgfd_fast[plot]'``) ``bars.png`` and ``curves.png``:

* per arm and metric: mean ± sample standard deviation (ddof = 1) over seeds; epochs trained and
  how many runs stopped at the epoch cap (``epochs``) instead of early (for a grid arm: those of
  the selected point); ``compute_time_s``: the training and validation seconds of every
  ``metrics.jsonl``, grid points included; the grid point selected
  (arms with ``hyper_parameters``); SGFD diagnostics at the best epoch
  (``sgfd_fast.training.diagnostics``);
* per arm against the baseline, on the seeds both finished: the paired differences
  ``d_s = arm_s - baseline_s``, their mean with a 95 % confidence interval
  ``mean ± t_{0.975, n-1} · sd / sqrt(n)`` (Student's t, ``scipy.stats.t``) and the two-sided
  Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``, exact for small n). The test drops
  zero differences; with m non-zero ones the smallest p it can give is ``2 / 2^m`` (all of one
  sign): m < 6 cannot reach 0.05, which the report says;
* per contrast ``name: [arm, reference]``: the same paired statistics of ``arm - reference``
  (e.g. the effect of distillation alone: SGFD against the same student without its losses).
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ._cli import quiet_on_closed_stdout, refuse_empty, show_warning
from .config import RANGES, Config, load_config, parse_overrides, read_yaml, with_added_keys
from .errors import ConfigError, SGFDError, TrainingError
from .records import read_json, read_metrics, read_results, read_run, written_for

__all__ = ["Spec", "load_spec", "find_spec", "shipped_specs", "run_study", "summarise",
           "paired_difference", "describe", "write_report", "main", "STUDIES_DIR"]

#: The shipped specs (package data).
STUDIES_DIR = Path(__file__).resolve().parent / "studies"
_SPEC_KEYS = ("name", "description", "model", "dataset", "data_path", "format", "labels", "seeds",
              "baseline", "metrics", "config", "arms", "contrasts")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

#: The spec format, as ``--help`` prints it.
SPEC_FORMAT = """\
spec format (YAML; model, dataset or data_path, seeds, baseline and arms are required):
  name: office-bm3                  # default: the file name; names the default --out
  description: one line for --list
  model: BM3                        # a key of sgfd_fast.models.MODELS
  dataset: office                   # a built-in dataset, or instead:
  # data_path: data/baby            #   a dataset directory (relative to the spec file)
  # format: mmrec                   #   its format (sgfd or mmrec, default sgfd)
  # labels: baby_labels.tsv         #   its label file (relative to the spec file)
  seeds: [1, 2, 3, 4, 5]            # every arm is trained once per seed (key seed)
  baseline: plain                   # the arm the others are compared with, seed by seed
  metrics: [recall@20, ndcg@20]     # reported on valid and test (default these two)
  config: {epochs: 300}             # overrides shared by every arm
  arms:                             # name: overrides (config keys; a grid via hyper_parameters)
    plain: {sgfd: false}
    sgfd: {}
    sgfd_control: {ce_weight: 0, kd_weight: 0}
  contrasts:                        # optional: more paired comparisons, name: [arm, reference]
    distillation: [sgfd, sgfd_control]
"""


@dataclass
class Spec:
    """A checked study spec. ``configs[arm]`` is the arm's resolved config without its seed."""

    name: str
    path: Path
    model: str
    dataset: str | None          # the built-in dataset's name (its config layer), else None
    data: dict | None            # how training loads it (None: a Dataset passed in memory)
    seeds: list[int]
    baseline: str
    metrics: list[str]
    shared: dict
    arms: dict[str, dict]
    description: str = ""
    contrasts: dict[str, tuple[str, str]] = field(default_factory=dict)
    configs: dict[str, Config] = field(default_factory=dict)
    #: config overrides from the command line, applied to every arm after its own keys
    command_line: dict = field(default_factory=dict)
    #: the spec's own seeds when the command line replaced them (None: not replaced)
    spec_seeds: list[int] | None = None

    def overrides(self, arm: str, seed: int, device: str | None = None) -> list:
        """``(key, value, where)`` of the arm's config layers, each naming its source."""
        where = f"study spec {self.path}"
        extra = [("device", device, "--device")] if device else []
        return [*((k, v, f"{where}, config") for k, v in self.shared.items()),
                *((k, v, f"{where}, arm {arm!r}") for k, v in self.arms[arm].items()),
                *((k, v, "the command line") for k, v in self.command_line.items()),
                ("seed", seed, "the study's seeds"), *extra]


def shipped_specs() -> dict[str, Path]:
    """``{name: path}`` of the specs under ``sgfd_fast/studies/``."""
    return {p.stem: p for p in sorted(STUDIES_DIR.glob("*.yaml"), key=lambda p: p.stem)}


def find_spec(name_or_path) -> Path:
    """A spec file: an existing path, else a shipped spec's name (``office-bm3``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = shipped_specs()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    close = difflib.get_close_matches(str(name_or_path), list(shipped), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(f"no study spec {str(name_or_path)!r}: not a file, and not one of the "
                      f"shipped specs ({', '.join(shipped)}){hint} "
                      f"(python -m sgfd_fast.study --list)")


def _unknown(what: str, key: str, known) -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(f"{what} sets {key!r}, which is not a config key{hint}")


def _check_seeds(seeds, where: str) -> None:
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) and s in RANGES["seed"] for s in seeds) or \
            len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: seeds must be a non-empty list of distinct non-negative ints "
                          f"below 2**63 (torch's seed range), got {seeds!r}")


def load_spec(path, *, in_memory: bool = False, seeds: list[int] | None = None,
              overrides: dict | None = None) -> Spec:
    """Read and check a whole spec (raises ConfigError naming the file, the arm and the key).

    ``in_memory``: the dataset is passed to :func:`run_study` as a Dataset; the spec's dataset
    keys are then not required. ``seeds`` replaces the spec's seeds and ``overrides`` (``{key:
    value}``) applies to every arm, after the arm's own keys: a smaller study from the command
    line (``--seeds``, ``--epochs``, ``key=value``), checked like the spec.
    """
    from .models import MODELS

    path = Path(path)
    raw = read_yaml(path, "study spec")  # a key given twice (two arms of one name) is an error
    if not isinstance(raw, dict):
        raise ConfigError(f"study spec {path} must be a YAML mapping (model, dataset, seeds, "
                          f"baseline, arms, ...)")
    where = f"study spec {path}"
    for k in raw:
        if k not in _SPEC_KEYS:
            close = difflib.get_close_matches(str(k), _SPEC_KEYS, n=2, cutoff=0.6)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(f"{where}: unknown key {k!r}{hint} (a spec has "
                              f"{', '.join(_SPEC_KEYS)})")

    model = raw.get("model")
    if model not in MODELS:
        close = difflib.get_close_matches(str(model), list(MODELS), n=1)
        raise ConfigError(f"{where}: model {model!r} is not one of {', '.join(MODELS)}"
                          + (f" (did you mean {close[0]!r}?)" if close else ""))

    dataset, data = raw.get("dataset"), None
    if raw.get("data_path") is not None:
        if dataset is not None:
            raise ConfigError(f"{where}: give dataset (a built-in name) or data_path, not both")
        base = path.resolve().parent
        fmt = raw.get("format", "sgfd")
        if fmt not in ("sgfd", "mmrec"):
            raise ConfigError(f"{where}: format must be sgfd or mmrec, got {fmt!r}")
        data = {"path": str(base / raw["data_path"]), "format": fmt,
                "labels": str(base / raw["labels"]) if raw.get("labels") else None}
        if not Path(data["path"]).is_dir():
            raise ConfigError(f"{where}: data_path {raw['data_path']!r} is not a directory "
                              f"({data['path']}; a relative data_path starts at the spec's "
                              f"directory)")
        if data["labels"] and not Path(data["labels"]).is_file():
            raise ConfigError(f"{where}: labels {raw['labels']!r} is not a file "
                              f"({data['labels']}; a relative path starts at the spec's "
                              f"directory)")
    elif dataset is not None:
        from .data import DATASETS

        if dataset not in DATASETS:
            raise ConfigError(f"{where}: dataset {dataset!r} is not a built-in dataset "
                              f"({', '.join(DATASETS)}); for your own give data_path (and format, "
                              f"labels)")
        data = {"name": dataset}
    elif not in_memory:
        raise ConfigError(f"{where}: no dataset; give dataset (a built-in name) or data_path")

    spec_seeds = raw.get("seeds")
    _check_seeds(spec_seeds, where)
    if seeds is not None:
        _check_seeds(seeds, "--seeds")
    command_line = dict(overrides or {})

    arms = raw.get("arms")
    if not isinstance(arms, dict) or not arms:
        raise ConfigError(f"{where}: arms must be a mapping of arm name to config overrides")
    arms = {str(a): ({} if o is None else o) for a, o in arms.items()}
    for arm, o in arms.items():
        if not _NAME_RE.match(arm):
            raise ConfigError(f"{where}: arm name {arm!r} must be letters, digits, '_', '-', '.' "
                              f"(it names a directory)")
        if not isinstance(o, dict):
            raise ConfigError(f"{where}: arm {arm!r} must map config keys to values, got {o!r}")
    baseline = raw.get("baseline")
    if baseline is None:
        raise ConfigError(f"{where}: no baseline; name the arm the others are compared with "
                          f"(baseline: {next(iter(arms))}, one of {', '.join(arms)})")
    if baseline not in arms:
        raise ConfigError(f"{where}: baseline {baseline!r} is not an arm (arms: "
                          f"{', '.join(arms)})")
    contrasts = raw.get("contrasts") or {}
    if not isinstance(contrasts, dict):
        raise ConfigError(f"{where}: contrasts must map a name to [arm, reference]")
    for name, pair in contrasts.items():
        if not (isinstance(pair, list) and len(pair) == 2):
            raise ConfigError(f"{where}: contrast {name!r} must be [arm, reference], got {pair!r}")
        for arm in pair:
            if arm not in arms:
                raise ConfigError(f"{where}: contrast {name!r} names {arm!r}, which is not an arm "
                                  f"(arms: {', '.join(arms)})")
        if pair[0] == pair[1]:
            raise ConfigError(f"{where}: contrast {name!r} compares {pair[0]!r} with itself; "
                              f"name two different arms")
    shared = raw.get("config") or {}
    if not isinstance(shared, dict):
        raise ConfigError(f"{where}: config must map config keys to values, got {shared!r}")
    metrics = raw.get("metrics", ["recall@20", "ndcg@20"])
    if not isinstance(metrics, list) or not metrics:
        raise ConfigError(f"{where}: metrics must be a list such as [recall@20, ndcg@20]")
    twice = next((m for i, m in enumerate(metrics) if m in metrics[:i]), None)
    if twice is not None:
        raise ConfigError(f"{where}: metrics lists {twice!r} twice; list each metric once")

    spec = Spec(name=str(raw.get("name") or path.stem), path=path, model=model, dataset=dataset,
                data=data, seeds=spec_seeds if seeds is None else list(seeds), baseline=baseline,
                metrics=[str(m) for m in metrics], shared=shared, arms=arms,
                description=str(raw.get("description") or ""),
                contrasts={str(n): (str(a), str(r)) for n, (a, r) in contrasts.items()},
                command_line=command_line, spec_seeds=None if seeds is None else spec_seeds)
    if not _NAME_RE.match(spec.name):
        raise ConfigError(f"{where}: name {spec.name!r} must be letters, digits, '_', '-', '.'")

    known = load_config(model, dataset).values
    for what, keys in (("config", shared), *((f"arm {a!r}", o) for a, o in arms.items())):
        for k in keys:
            if k == "seed":
                raise ConfigError(f"{where}: {what} sets seed; a study sets it from seeds")
            if k not in known:
                raise _unknown(f"{where}: {what}", k, known)
    for k in command_line:
        if k == "seed":
            raise ConfigError("the command line sets seed; give the study's seeds with --seeds")
        if k not in known:
            raise _unknown("the command line", k, known)
    load_config(model, dataset, overrides=list(command_line.items()))  # its own values first
    for arm in arms:
        try:
            cfg = load_config(model, dataset, overrides=spec.overrides(arm, spec.seeds[0]))
        except ConfigError as e:  # it names the source of each key it blames
            blamed = str(e).replace(f" (from {where}, arm {arm!r})", "")
            raise ConfigError(f"{where}: arm {arm!r}: "
                              + blamed.replace(f"{where}, config", "the spec's config")) from None
        for m in spec.metrics:
            for topk in cfg["topk"] if "topk" in cfg.grid_keys else [cfg["topk"]]:
                name, _, k = m.partition("@")
                if not k.isdigit() or int(k) not in topk:
                    raise ConfigError(f"{where}: metric {m!r} must look like recall@20 with k in "
                                      f"topk={topk} (arm {arm!r}; topk from "
                                      f"{cfg.sources['topk']})")
        spec.configs[arm] = cfg
    return spec


# --- running ---------------------------------------------------------------------------------

@dataclass
class _Run:
    arm: str
    seed: int
    dir: Path
    config: Config


def _plan(spec: Spec, out: Path, device: str | None) -> list[_Run]:
    """Every arm x seed, seed-major (after the first seeds every arm has a result); each arm's
    config is resolved once (the seed, checked with the spec, is its only difference)."""
    arms = {arm: load_config(spec.model, spec.dataset,
                             overrides=spec.overrides(arm, spec.seeds[0], device))
            for arm in spec.arms}
    return [_Run(arm, seed, out / arm / f"seed-{seed}",
                 Config({**cfg.values, "seed": seed}, cfg.grid_keys, cfg.sources, cfg.files))
            for seed in spec.seeds for arm, cfg in arms.items()]


def _check_existing(run: _Run) -> None:
    """A run directory already there must be a run of this configuration (up to resumable keys)
    whose ``epochs`` the spec keeps or raises."""
    if not run.dir.exists():
        return
    from .training import RESUMABLE_KEYS
    from .training.rundir import LOCK_NAME

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
    if max(_as_list(old.get("epochs"))) > max(_as_list(new.get("epochs"))):
        raise ConfigError(f"{run.dir} was trained with epochs={old.get('epochs')}, the spec now "
                          f"says {new.get('epochs')}; a study can keep or raise epochs (its "
                          f"runs then continue), not lower them: restore epochs, or study into "
                          f"another --out")


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


_REPORT_FILES = ("study.json", "study.md", "bars.png", "curves.png")
_REPORT_TMP = re.compile(r"\.(study\.json|study\.md|bars\.png|curves\.png)\.tmp\d+")  # a killed write's
_SEED_DIR = re.compile(r"seed-\d+")


def _check_out(spec: Spec, out: Path) -> None:
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


def _results(run: _Run, spec: Spec) -> dict | None:
    """The run's ``results.json`` if it was written under the spec's ``epochs``, else None (a
    raised cap continues the runs that stopped at the old one).

    Raises:
        RunDirectoryError: it is not a results record, or not one of this arm: another model,
        data or configuration (a copied or hand-edited file would be compared as this arm)."""
    from .errors import RunDirectoryError
    from .training import RESUMABLE_KEYS

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


def _parse_shard(text: str) -> tuple[int, int]:
    m = re.match(r"^(\d+)/(\d+)$", str(text))
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise ConfigError(f"--shard {text!r} must be I/N with 1 <= I <= N, e.g. 1/4")
    return int(m.group(1)), int(m.group(2))


def run_study(spec: Spec, out, *, shard: tuple[int, int] = (1, 1), arms=None, dataset=None,
              device: str | None = None, report_only: bool = False,
              progress: bool | None = None) -> dict:
    """Train this shard's unfinished runs of ``spec`` into ``out``, then write the report of
    every finished run (:func:`write_report`) and return its summary.

    Args:
        shard: ``(I, N)``: train only the runs whose seed-major index is I-1 modulo N.
        arms: names of the spec's arms to train (None: all); shards split these arms' runs.
        dataset: a loaded Dataset to train on instead of the spec's dataset.
        device: overrides the ``device`` key (resumable: it may change between reruns).
        report_only: train nothing.
        progress: True: a bar over the runs; False: neither bar nor log lines; None: the bar
            when stderr is a terminal, else each run's log lines (one per epoch, on stderr).
    Raises:
        ConfigError: ``out`` holds what this study did not write, a run directory holds another
        configuration or a higher ``epochs``, ``arms`` names an arm the spec lacks, or a run's
        device is missing; KeyboardInterrupt: passed on (the run in progress saved its
        ``last.pt``; rerun to continue).
    """
    from . import training

    from . import _backend

    out = Path(out)
    _backend.check_requested()  # before any directory is made
    for arm in arms or ():
        if arm not in spec.arms:
            close = difflib.get_close_matches(arm, list(spec.arms), n=1)
            raise ConfigError(f"--arms: study {spec.name} has no arm {arm!r}"
                              + (f" (did you mean {close[0]!r}?)" if close else "")
                              + f"; its arms: {', '.join(spec.arms)}")
    if report_only and not out.is_dir():
        raise ConfigError(f"--report: {out} is not a directory"
                          f"{'' if out.exists() else ' (it does not exist)'}; give the --out "
                          f"the study ran in")
    _check_out(spec, out)
    runs = _plan(spec, out, device)
    for run in runs:
        _check_existing(run)
    i, n = shard
    chosen = [r for r in runs if arms is None or r.arm in arms]
    mine = [r for k, r in enumerate(chosen) if k % n == i - 1 and not report_only]
    todo = [r for r in mine if _results(r, spec) is None]
    for dev in {d for r in todo for d in _as_list(r.config.values["device"])}:
        training.resolve_device(dev)  # a missing GPU is said before anything is created
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the study directory {out}: {e.strerror or e}") \
            from None
    print(f"study {spec.name}: {len(spec.arms)} arm{'s' * (len(spec.arms) > 1)} × "
          f"{len(spec.seeds):,} seed{'s' * (len(spec.seeds) > 1)} = {len(runs):,} runs; "
          f"{len(todo):,} to train here", file=sys.stderr)
    try:
        return _train_and_report(spec, out, runs, todo, len(mine), dataset, progress)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a study that failed before its first run leaves nothing behind
        raise


def _train_and_report(spec: Spec, out: Path, runs: list, todo: list, n_mine: int, dataset,
                      progress) -> dict:
    from tqdm import tqdm

    from . import training

    datasets: dict = {}
    failed = {}
    # a bar on a terminal; elsewhere (a log file, CI) each run's log lines, one per epoch
    show_bar = sys.stderr.isatty() if progress is None else progress
    lines = progress is None and not show_bar
    bar = tqdm(total=n_mine, initial=n_mine - len(todo), unit="run", file=sys.stderr,
               desc=f"study {spec.name}", disable=not show_bar)
    try:
        for run in todo:
            bar.set_postfix_str(f"{run.arm} seed {run.seed}")
            values = run.config.values
            if dataset is not None:
                ds = dataset
            else:
                key = json.dumps([values.get(k) for k in ("valid_ratio", "split_seed",
                                                          "modalities", "protocol")])
                if key not in datasets:
                    datasets[key] = training.load_data(spec.data, values)
                ds = datasets[key]
            t0 = time.perf_counter()
            try:
                if (run.dir / "run.json").exists():
                    keep = [(k, values[k]) for k in training.RESUMABLE_KEYS if k in values]
                    res = training.resume(run.dir, keep, dataset=ds, progress=False,
                                          console=lines)
                else:
                    res = training.train(spec.model, run.config, run_dir=run.dir, dataset=ds,
                                         data=spec.data, progress=False, console=lines)
            except TrainingError as e:
                failed[f"{run.arm}/seed-{run.seed}"] = str(e)
                bar.write(f"{run.arm} seed {run.seed}: FAILED ({e}); see {run.dir / 'train.log'}")
            else:
                bar.write(f"{run.arm} seed {run.seed}: test "
                          + ", ".join(f"{m} {res['test'].get(m, math.nan):.4f}"
                                      for m in spec.metrics)
                          + f"; {res['epochs_trained']} epoch"
                          + ("" if res["epochs_trained"] == 1 else "s")
                          + ("" if res["early_stopped"] else " (epoch cap)")
                          + f", {time.perf_counter() - t0:.0f} s")
            bar.update(1)
    finally:
        bar.close()
    summary = summarise(spec, runs, failed)
    write_report(summary, out)
    return summary


# --- statistics ------------------------------------------------------------------------------

def describe(values) -> dict:
    """``{"n", "mean", "std"}`` of a sample; std is the sample standard deviation (ddof = 1),
    None for fewer than 2 values."""
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    return {"n": int(v.size), "mean": float(v.mean()) if v.size else None,
            "std": float(v.std(ddof=1)) if v.size > 1 else None}


def paired_difference(arm, baseline) -> dict:
    """Paired differences ``d = arm - baseline`` (same seeds, same order): ``{"n", "diffs",
    "mean", "std", "ci95": [low, high] | None, "wilcoxon_p": float | None, "n_nonzero",
    "min_p": float | None}``.

    CI: ``mean ± t_{0.975, n-1} · std / sqrt(n)`` (std with ddof = 1; None for n < 2). Wilcoxon:
    two-sided signed-rank p (``scipy.stats.wilcoxon``, whose default drops zero differences; None
    when every difference is 0). ``min_p = 2 / 2^m`` over the m = ``n_nonzero`` differences the
    test ranks: the smallest p it can reach (m < 6: above 0.05; None when m = 0).
    """
    import numpy as np
    from scipy import stats

    d = np.asarray(arm, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    m = int(np.count_nonzero(d))
    out = {"diffs": d.tolist(), **describe(d), "ci95": None, "wilcoxon_p": None,
           "n_nonzero": m, "min_p": 2.0 / 2 ** m if m else None}
    if d.size > 1:
        half = stats.t.ppf(0.975, d.size - 1) * out["std"] / math.sqrt(d.size)
        out["ci95"] = [out["mean"] - half, out["mean"] + half]
    if np.any(d != 0):
        out["wilcoxon_p"] = float(stats.wilcoxon(d).pvalue)
    return out


def _best_line(point_dir: Path, epoch: int) -> dict:
    return next((x for x in read_metrics(point_dir) if x["epoch"] == epoch), {})


def _compute_time(run_dir: Path) -> float:
    """Seconds of training and validation in every metrics.jsonl under a run directory."""
    total = 0.0
    for f in run_dir.rglob("metrics.jsonl"):
        for x in read_metrics(f.parent):
            total += x.get("epoch_time_s", 0.0) + x.get("eval_time_s", 0.0)
    return total


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _paired(arm: dict, reference: dict, keys) -> dict:
    """``{metric: paired_difference}`` of two arms' per-seed values on the seeds both finished
    (``{}`` when they share none)."""
    common = [s for s in sorted(arm) if s in reference]
    return {k: {"seeds": common, **paired_difference([arm[s][k] for s in common],
                                                     [reference[s][k] for s in common])}
            for k in keys} if common else {}


def summarise(spec: Spec, runs: list, failed: dict | None = None) -> dict:
    """The study's summary from the finished runs' ``results.json`` (see module doc)."""
    keys = [f"{split}/{m}" for split in ("valid", "test") for m in spec.metrics]
    per_arm: dict[str, dict] = {a: {} for a in spec.arms}
    pending, at_cap, finished, seconds = [], 0, 0, 0.0
    for run in runs:
        if run.dir.exists():
            seconds += _compute_time(run.dir)
        res = _results(run, spec)
        if res is None:
            pending.append(f"{run.arm}/seed-{run.seed}")
            continue
        finished += 1
        cap = not res["early_stopped"]
        at_cap += cap
        point_dir = (run.dir / res["checkpoint"]).parent
        diag = _best_line(point_dir, res["best_epoch"]).get("sgfd", {})
        per_arm[run.arm][run.seed] = {
            **{k: res[k.split("/")[0]].get(k.split("/")[1]) for k in keys},
            "epochs_trained": res["epochs_trained"], "best_epoch": res["best_epoch"],
            "at_cap": cap, "params": (res["grid"][res["selected_point"]]["params"]
                                      if "grid" in res else None),
            "grad_share": diag.get("grad_share"),
            "teacher_acc": _mean(diag.get("teacher_acc", {}).values()),
            "student_acc": _mean(diag.get("student_acc", {}).values()),
        }
    arms = {}
    for arm, by_seed in per_arm.items():
        seeds = sorted(by_seed)
        entry = {"overrides": spec.arms[arm], "seeds": seeds,
                 "per_seed": {str(s): by_seed[s] for s in seeds},
                 "metrics": {k: describe([by_seed[s][k] for s in seeds]) for k in keys},
                 "epochs_trained": describe([by_seed[s]["epochs_trained"] for s in seeds]),
                 "at_cap": sum(by_seed[s]["at_cap"] for s in seeds),
                 "diagnostics": {d: _mean(by_seed[s][d] for s in seeds)
                                 for d in ("grad_share", "teacher_acc", "student_acc")}}
        if arm != spec.baseline:
            entry["vs_baseline"] = _paired(per_arm[arm], per_arm[spec.baseline], keys)
        arms[arm] = entry
    contrasts = {name: {"arm": a, "reference": r, **_paired(per_arm[a], per_arm[r], keys)}
                 for name, (a, r) in spec.contrasts.items()}
    shipped = spec.path.resolve().parent == STUDIES_DIR  # a path of this machine says nothing
    return {"study": spec.name,
            "spec": f"{spec.path.stem} (shipped)" if shipped else str(spec.path),
            "description": spec.description,
            "model": spec.model,
            "dataset": spec.dataset or (spec.data or {}).get("path") or "a dataset in memory",
            "baseline": spec.baseline, "seeds": spec.seeds, "metrics": keys,
            "shared_config": spec.shared,
            # what the command line changed: the spec's own seeds (None: kept), every arm's keys
            "command_line": {"spec_seeds": spec.spec_seeds, "config": spec.command_line},
            "arms": arms, "contrasts": contrasts,
            "runs": {"total": len(runs), "finished": finished, "pending": pending,
                     "failed": failed or {}, "at_epoch_cap": at_cap,
                     "compute_time_s": seconds}}


# --- report ----------------------------------------------------------------------------------

def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


def _fmt(x, digits=4, sign=""):
    """``x`` rounded to ``digits`` places; a value that rounds to zero prints unsigned-zero
    (``0.0000``, ``+0.0000`` with ``sign="+"``), never ``-0.0000``."""
    return "–" if x is None else f"{round(x, digits) + 0.0:{sign}.{digits}f}"


def _diff_cells(d: dict) -> tuple[str, str]:
    """The "Δ [95 % CI] (n)" and "p" cells of a paired difference."""
    ci = f" [{_fmt(d['ci95'][0])}, {_fmt(d['ci95'][1])}]" if d["ci95"] else ""
    floor = d.get("min_p")
    p = _fmt(d["wilcoxon_p"], 3) + (f" (min {floor:.3f})" if floor and floor > 0.05 else "")
    return f"{_fmt(d['mean'], sign='+')}{ci} (n={d['n']})", p


def _markdown(s: dict) -> str:
    runs = s["runs"]
    lines = [f"# Study {s['study']}: {s['model']} on {s['dataset']}", ""]
    if s["description"]:
        lines += [s["description"], ""]
    cap = runs["at_epoch_cap"]
    changed = s.get("command_line") or {}
    if changed.get("spec_seeds") is not None or changed.get("config"):
        parts = ([f"seeds {s['seeds']} (the spec has {changed['spec_seeds']})"]
                 if changed.get("spec_seeds") is not None else [])
        if changed.get("config"):
            parts.append("every arm: " + ", ".join(f"{k}={json.dumps(v)}"
                                                   for k, v in changed["config"].items()))
        lines += [f"**Changed from the command line, not the spec's study:** "
                  f"{'; '.join(parts)}.", ""]
    lines += [f"Spec `{s['spec']}`; seeds {s['seeds']}; baseline arm `{s['baseline']}`. "
              f"{runs['finished']} of {runs['total']} runs finished"
              + (f", {len(runs['pending'])} pending" if runs["pending"] else "")
              + (f", {len(runs['failed'])} failed" if runs["failed"] else "")
              + f"; {cap} of {runs['finished']} finished runs "
              f"({100 * cap / max(runs['finished'], 1):.0f} %) stopped at the epoch cap "
              f"instead of early. Training + validation time, summed over runs: "
              f"{_duration(runs['compute_time_s'])}."
              + (" **More than 10 % of the runs ended at the epoch cap: their best epoch may lie "
                 "beyond it; raise `epochs` in the spec and rerun the study: the runs at the cap "
                 "continue where they stopped.**"
                 if cap > 0.1 * runs["finished"] else ""), "",
              "Mean ± sample std (ddof 1) over seeds. Δ: mean paired difference arm − baseline "
              "over the seeds both finished, with its 95 % t confidence interval; p: two-sided "
              "Wilcoxon signed-rank test of those differences (it drops zero differences; with "
              "m non-zero ones no p below 2/2^m exists: m < 6 cannot reach 0.05).", ""]
    for key in s["metrics"]:
        lines += [f"## {key}", "", f"| arm | n | {key} | Δ vs {s['baseline']} [95 % CI] | "
                                   f"Wilcoxon p |", "|---|---|---|---|---|"]
        for arm, a in s["arms"].items():
            m = a["metrics"][key]
            cell = f"{_fmt(m['mean'])} ± {_fmt(m['std'])}" if m["n"] else "–"
            if arm == s["baseline"]:
                diff, p = "(baseline)", ""
            elif a.get("vs_baseline"):
                diff, p = _diff_cells(a["vs_baseline"][key])
            else:
                diff, p = "–", ""
            lines.append(f"| {arm} | {m['n']} | {cell} | {diff} | {p} |")
        lines.append("")
    if s.get("contrasts"):
        lines += ["## Contrasts", "", "Each the paired difference arm − reference, as above.", "",
                  "| contrast | arm − reference | metric | Δ [95 % CI] | Wilcoxon p |",
                  "|---|---|---|---|---|"]
        for name, c in s["contrasts"].items():
            for key in s["metrics"]:
                diff, p = _diff_cells(c[key]) if key in c else ("–", "")
                lines.append(f"| {name} | {c['arm']} − {c['reference']} | {key} | {diff} | {p} |")
        lines.append("")
    lines += ["## Runs", "", "| arm | overrides | epochs trained | at epoch cap | grid point "
              "selected (per seed) | SGFD grad share | teacher acc | student acc |",
              "|---|---|---|---|---|---|---|---|"]
    for arm, a in s["arms"].items():
        e = a["epochs_trained"]
        sel = "; ".join(f"{seed}: " + ", ".join(f"{k}={v}" for k, v in x["params"].items())
                        for seed, x in a["per_seed"].items() if x["params"])
        over = ", ".join(f"{k}={v}" for k, v in a["overrides"].items()) or "(shared config)"
        dg = a["diagnostics"]
        lines.append(f"| {arm} | {over} | {_fmt(e['mean'], 1)} ± {_fmt(e['std'], 1)} | "
                     f"{a['at_cap']}/{e['n']} | {sel or '–'} | {_fmt(dg['grad_share'], 6)} | "
                     f"{_fmt(dg['teacher_acc'], 3)} | {_fmt(dg['student_acc'], 3)} |")
    lines += ["", "SGFD diagnostics are those of the best epoch, averaged over seeds (and "
              "modalities): grad share = ‖∇_student L_SGFD‖ / ‖∇_student L‖ on the epoch's last "
              "batch; accuracies of each modality's classifier over all items."]
    if runs["failed"]:
        lines += ["", "## Failed runs", ""] + [f"- {k}: {v}" for k, v in runs["failed"].items()]
    if runs["pending"]:
        lines += ["", f"Pending runs: {', '.join(runs['pending'])}."]
    return "\n".join(lines) + "\n"


def write_report(summary: dict, out) -> list[Path]:
    """Write ``study.json``, ``study.md`` and, with matplotlib, ``bars.png`` and ``curves.png``
    into ``out``; returns the PNGs written (a missing matplotlib is reported on stderr)."""
    from .training.checkpoint import write_json, write_text

    out = Path(out)
    write_json(out / "study.json", summary)
    write_text(out / "study.md", _markdown(summary))
    from . import plot

    try:
        return plot.study_plots(summary, out)
    except plot.PlotUnavailable as e:
        print(f"note: {e}; study.json and study.md are written", file=sys.stderr)
        return []


# --- command line ----------------------------------------------------------------------------

def _list() -> None:
    for name, path in shipped_specs().items():
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        n = len(raw.get("arms") or {}) * len(raw.get("seeds") or [])
        about = raw.get("description") or f"{raw.get('model')} on {raw.get('dataset')}"
        print(f"{name:<22} {n} runs: {about}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sgfd_fast.study",
        description="Train every arm x seed of a study spec and compare the arms with the "
                    "baseline (mean ± std, paired differences with 95% CIs, Wilcoxon p).",
        epilog="examples:\n  python -m sgfd_fast.study --list\n"
               "  python -m sgfd_fast.study office-bm3                # runs/study-office-bm3\n"
               "  python -m sgfd_fast.study my_spec.yaml --out runs/mine --shard 1/2\n"
               "  python -m sgfd_fast.study office-bm3 --seeds 1,2 --epochs 5 --out runs/try\n"
               "A rerun of the same command skips finished runs and resumes unfinished ones.\n\n"
               + SPEC_FORMAT,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", nargs="?", help="a shipped spec's name (see --list) or a spec file")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides applied to every arm, after the spec's (parsed as "
                        "YAML, as train's)")
    p.add_argument("--seeds", metavar="S,T",
                   help="train these seeds instead of the spec's, e.g. --seeds 1,2")
    p.add_argument("--epochs", metavar="N", help="epochs=N for every arm (the same as epochs=N)")
    p.add_argument("--out", metavar="DIR", help="the study directory (default runs/study-<name>)")
    p.add_argument("--shard", metavar="I/N", default="1/1",
                   help="train only the I-th of every N runs (N independent processes)")
    p.add_argument("--arms", metavar="A,B",
                   help="train only these arms (the report covers every finished run)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                   help="override the device key of every run")
    p.add_argument("--report", action="store_true",
                   help="train nothing; write the report of the finished runs")
    p.add_argument("--list", action="store_true", help="list the shipped specs and exit")
    return p


def _parse_seeds(text: str) -> list[int]:
    parts = [x.strip() for x in text.split(",")]
    if not all(x.isascii() and x.isdigit() for x in parts):
        raise ConfigError(f"--seeds {text!r} must be comma-separated non-negative ints, e.g. "
                          f"--seeds 1,2")
    return [int(x) for x in parts]


def _require_scipy() -> None:
    try:
        import scipy.stats  # noqa: F401
    except ImportError as e:
        raise SGFDError(f"the study statistics need scipy ({e}); pip install "
                        f"'sgfd_fast[study]'") from None


@quiet_on_closed_stdout
def main(argv=None) -> int:
    """Entry point of ``python -m sgfd_fast.study``."""
    import warnings

    # intermixed: key=value overrides may come before, between or after the options
    args = build_parser().parse_intermixed_args(argv)
    warnings.showwarning = show_warning  # a data warning is one line, as train prints it
    if args.list:
        _list()
        return 0
    out = None
    try:
        if not args.spec:
            raise ConfigError("give a study spec (a name from --list, or a YAML file)")
        refuse_empty(args, out="--out")
        shard = _parse_shard(args.shard)
        seeds = None if args.seeds is None else _parse_seeds(args.seeds)
        options = {k: f"--{k} {v}" for k, v in (("epochs", args.epochs),
                                                  ("device", args.device)) if v}
        overrides = dict(parse_overrides(args.overrides, options)
                         + parse_overrides([f"epochs={args.epochs}"] if args.epochs else []))
        spec = load_spec(find_spec(args.spec), seeds=seeds, overrides=overrides)
        _require_scipy()  # the statistics need it: fail before hours of training, not after
        out = Path(args.out).expanduser() if args.out else Path("runs") / f"study-{spec.name}"
        arms = None if args.arms is None else [a.strip() for a in args.arms.split(",")
                                               if a.strip()]
        if arms == []:
            raise ConfigError("--arms is empty; give arm names, e.g. --arms plain,sgfd")
        if arms and len(set(arms)) != len(arms):
            twice = next(a for a in arms if arms.count(a) > 1)
            raise ConfigError(f"--arms {args.arms} lists the arm {twice!r} twice; list each "
                              f"arm once")
        summary = run_study(spec, out, shard=shard, arms=arms, device=args.device,
                            report_only=args.report)
    except SGFDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        from .training import Terminated

        print(f"interrupted; rerun the same command to continue (finished runs are kept, the "
              f"interrupted one resumes from its last.pt){f' in {out}' if out else ''}",
              file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    runs = summary["runs"]
    print(f"{runs['finished']}/{runs['total']} runs finished"
          + (f", {len(runs['failed'])} failed" if runs["failed"] else "")
          + f", {runs['at_epoch_cap']} at the epoch cap; report: {out / 'study.md'}")
    return 1 if runs["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
