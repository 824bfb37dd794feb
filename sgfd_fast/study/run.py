"""``run_study``: train a shard's unfinished runs of a spec (skipping finished ones, resuming
interrupted ones), then write the report of every finished run."""

from __future__ import annotations

import difflib
import json
import math
import sys
import time
from pathlib import Path

from ..errors import ConfigError, TrainingError
from .report import summarise, write_report
from .rundirs import as_list, check_existing, check_out, finished_results, plan_runs
from .spec import Spec

__all__ = ["run_study"]


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
    from .. import _backend, training

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
    check_out(spec, out)
    runs = plan_runs(spec, out, device)
    for run in runs:
        check_existing(run)
    i, n = shard
    chosen = [r for r in runs if arms is None or r.arm in arms]
    mine = [r for k, r in enumerate(chosen) if k % n == i - 1 and not report_only]
    todo = [r for r in mine if finished_results(r, spec) is None]
    for dev in {d for r in todo for d in as_list(r.config.values["device"])}:
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

    from .. import training
    from ..data import load_data

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
                    datasets[key] = load_data(spec.data, values)
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
