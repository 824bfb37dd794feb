"""A whole run: the run directory, the grid of configurations, ``results.json`` and ``--resume``.

A run directory holds ``run.json`` (what was asked: model, dataset, resolved config, grid),
``train.log``, ``run.lock``, and per grid point (the run directory itself when there is no grid,
else ``grid-<i>/``) ``metrics.jsonl``, ``last.pt`` and ``best.pt``; ``results.json`` is written at
the end. Every JSON file is written to a temporary file and renamed, so none is ever partial.
What happens to the directory in each case (creation, locking, failures, resume) is
:mod:`.rundir`'s to decide.
Each grid point is trained by a :class:`~sgfd_fast.training.loop.Trainer` from the same seed; the
point with the best ``valid_metric`` is reported. Under torchrun (:mod:`.distributed`) all ranks
train each point together, or, with ``grid_parallel: true``, point i is trained alone by rank
``i mod world_size`` (which writes its ``grid-<i>/``) and the summaries are gathered before the
same selection.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from .. import _backend
from ..config import Config, check_point, check_recorded
from ..data import DataWarning, load_data
from ..errors import ConfigError, DataError, RunDirectoryError, SGFDError, TrainingError
from ..records import read_metrics, read_results, read_run, written_for
from . import budget, distributed
from .checkpoint import WriteFailed, write_json
from .loop import Trainer
from .rundir import (RunDirectory, check_data_shape, data_fingerprint, data_shape,
                     describe_fingerprint, point_states, remove_temporaries)
from .runtime import (device_name, is_main, rank, resolve_device, run_logging, usable_cores,
                      world_size)

__all__ = ["train", "resume", "read_checked_run", "check_topk", "RESUMABLE_KEYS"]

#: Keys a ``--resume`` may change: they do not alter what was already trained.
RESUMABLE_KEYS = ("epochs", "stopping_step", "device", "eval_batch_size")


def read_checked_run(run_dir) -> dict:
    """``run.json`` of ``run_dir`` checked whole, as a new run's config is: its model one of
    ``MODELS``, its data a built-in name, a directory or a Dataset in memory, and its config
    resolved again (every key known and present, values of their type and range). Its
    ``config`` is the resolved one.

    Raises:
        RunDirectoryError: it cannot be read, or is not a run record sgfd_fast wrote (a hand
        edit, another version), naming what is wrong.
    """
    from ..models import MODELS

    run = read_run(run_dir)
    where = str(Path(run_dir) / "run.json")
    data = run["data"]
    if run["model"] not in MODELS:
        problem = f"names the model {run['model']!r}, which is not one of {', '.join(MODELS)}"
    elif not (isinstance(data, dict) and sum(isinstance(data.get(k), str) for k in
                                              ("name", "path", "in_memory")) == 1):
        problem = (f"has data={data!r}, which is not {{name: <built-in dataset>}}, "
                   f"{{path: <directory>, format, labels}} or {{in_memory: <name>}}")
    else:
        try:
            cfg = check_recorded(run["model"], data.get("name"), run["config"],
                                 run["grid_keys"], where)
        except ConfigError as e:
            problem = f"does not hold a valid configuration ({e})"
        else:
            run["config"] = cfg.values
            return run
    raise RunDirectoryError(f"{where} {problem}; it is not a run record written by "
                            f"sgfd_fast.train (changed by hand?): restore it, or start a new run")


def check_topk(config: Config, dataset, where: str | None = None) -> None:
    """Refuse cut-offs beyond the dataset's items (ConfigError, said once the data are loaded: a
    top-k list cannot be longer than the items it ranks), and likewise a ``knn_k`` (FREEDOM,
    LATTICE, MGCN) beyond them: an item has at most ``n_items`` neighbours. ``where``: the
    values' source (None: each key's own, from ``config.sources``)."""
    def source(key):
        return where or config.sources.get(key, "the config")

    grid = "topk" in config.grid_keys
    for topk in config["topk"] if grid else [config["topk"]]:
        if max(topk) > dataset.n_items:
            raise ConfigError(f"topk={topk} (from {source('topk')}) asks for the top "
                              f"{max(topk)} items, but dataset {dataset.name!r} has "
                              f"{dataset.n_items} items; use cut-offs up to {dataset.n_items} "
                              f"(and a valid_metric among them)")
    if "knn_k" in config.values:
        knn_k = config["knn_k"]
        k = max(knn_k) if "knn_k" in config.grid_keys else knn_k
        if k > dataset.n_items:
            raise ConfigError(f"knn_k={knn_k} (from {source('knn_k')}) asks for {k} "
                              f"neighbours per item, but dataset {dataset.name!r} has "
                              f"{dataset.n_items} items; use knn_k up to {dataset.n_items}")


def _load_holding_warnings(spec: dict, config: dict, held: list):
    """:func:`sgfd_fast.data.load_data`, with its DataWarnings appended to ``held`` (as ``warnings`` records)
    so that the run can log them to ``train.log`` once the log exists; the caller shows what it
    could not log (see :func:`_show_held`)."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DataWarning)
            return load_data(spec, config)
    finally:
        for w in caught:
            if issubclass(w.category, DataWarning):
                held.append(w)
            else:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _show_held(held: list) -> None:
    """Show the data warnings a run ended before logging: on rank 0 only, which speaks for every
    rank as its log does (under torchrun each rank printed them, once per process)."""
    while held:
        w = held.pop(0)
        if is_main():
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _model_label(model: str, values: dict, grid_keys) -> str:
    if "sgfd" in grid_keys:
        return f"{model} with and without SGFD"
    return f"{model}+SGFD" if values.get("sgfd") else model


def _point_dir(run_dir: Path, i: int, n_points: int) -> Path:
    return run_dir if n_points == 1 else run_dir / f"grid-{i}"


def _params(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def _log_kernels(log, device: torch.device) -> None:
    """Which backend serves each op, and why no compiled module does when none is loaded."""
    from .. import _ext, ops  # noqa: F401 - ops registers every op

    log.info(f"kernels on {device.type}: {_backend.summary(device.type)}")
    missing = _ext.cpu_error if device.type == "cpu" else _ext.cuda_error
    if missing:
        log.warning(f"compiled {device.type.upper()} kernels unavailable: {missing}")


def _log_bf16(log, device: torch.device) -> None:
    """What serves ``precision: bf16``'s products here, or a warning where they are emulated."""
    from ..ops._bf16_filter import bf16_hardware

    isa = bf16_hardware(device)
    if isa:
        log.info(f"precision bf16: dense products on {isa}, features held in bfloat16")
    else:
        log.warning(f"precision bf16 on {device_name(device)}, which has no bf16 hardware (see "
                    f"python -m sgfd_fast.info): its bf16 products are emulated and slower than "
                    f"float32; precision=fp32 trains faster here")


def _log_cpu_processes(log) -> None:
    """Several processes of one CPU machine splitting each step (torchrun's ``LOCAL_WORLD_SIZE``):
    say that one process using the same cores as threads trains faster (docs/BENCHMARKS.md, "The
    same two cores as threads": each process repeats part of the step and exchanges gradients
    and parameters every step, threads share one copy)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if local > 1:
        n = torch.get_num_threads()
        log.info(f"{local} processes on this machine's CPU split each step ({n} thread"
                 f"{'s' if n > 1 else ''} each): one process using the machine's cores as "
                 f"threads (python -m sgfd_fast.train, OMP_NUM_THREADS={usable_cores()}) trains "
                 f"faster; several CPU processes pay off across machines, or for a grid with "
                 f"grid_parallel (README, 'Several GPUs or machines')")


def _hand_over(dataset, model, config: dict) -> None:
    """Under ``precision: bf16`` the model holds the raw features in bfloat16, built from the
    float32 matrices of ``dataset`` (which nothing needs once the last model is built): hand
    them over (``Dataset.hand_over_features``), so that the run holds the half-size copy alone
    instead of both."""
    if config["precision"] == "bf16" and model.features is not None:
        dataset.hand_over_features(model.features.held())


def _run(run: dict, run_dir: Path, dataset, *, states=None, notes=(), held=(), progress,
         console, size: str, own_data: bool = False) -> dict:
    """Train every grid point (``states``: where each stands, on a resume) and write
    ``results.json``; ``notes`` and the ``held`` data warnings are logged first. ``own_data``:
    ``dataset`` was loaded for this run (not passed in by the caller), so under
    ``precision: bf16`` the last model built from it takes its features over
    (:func:`_hand_over`)."""
    from .. import __version__

    values = run["config"]
    cfg = Config(values, run["grid_keys"], {}, [])
    points = cfg.points()
    device = resolve_device(values["device"])
    procs = f"{world_size()} process{'es' if world_size() > 1 else ''}" + \
        (f" ({distributed.backend()})" if distributed.active() else "")
    with run_logging(run_dir if is_main() else None, console) as log:
        if states is None:
            log.info(f"sgfd_fast {__version__}: "
                     f"{_model_label(run['model'], values, cfg.grid_keys)} on {run['dataset']} "
                     f"({dataset.n_users} users, {dataset.n_items} items, "
                     f"{dataset.train.shape[0]} train / {dataset.valid.shape[0]} valid / "
                     f"{dataset.test.shape[0]} test), device {device_name(device)}, {procs}, "
                     f"run directory {run_dir}")
            if dataset.synthetic:
                log.warning(f"dataset {run['dataset']}: SYNTHETIC {', '.join(dataset.synthetic)}")
        else:
            log.info(f"resuming {run_dir} on device {device_name(device)}, {procs}")
        log.info(f"size: {size}")
        while held:
            log.warning(str(held.pop(0).message))
        for note in notes:
            log.warning(note)
        _log_kernels(log, device)
        if values["precision"] == "bf16":
            _log_bf16(log, device)
        parallel = values.get("grid_parallel", False) and len(points) > 1 and distributed.active()
        if parallel:
            log.info(f"grid_parallel: {len(points)} points over {world_size()} processes (point "
                     f"i on rank i mod {world_size()}); only rank 0's points are logged here")
        elif device.type == "cpu" and distributed.active():
            _log_cpu_processes(log)
        summaries = []
        mine = [i for i in range(len(points)) if not parallel or i % world_size() == rank()]
        lower = ", ".join(budget.size_keys(values) + ["train_batch_size"]) + " or eval_batch_size"
        try:
            for i, point in enumerate(points):
                if parallel and i % world_size() != rank():
                    continue
                pdir = _point_dir(run_dir, i, len(points))
                if is_main() or parallel:
                    pdir.mkdir(parents=True, exist_ok=True)
                if len(points) > 1:
                    log.info(f"grid point {i + 1}/{len(points)}: "
                             + _params({k: point[k] for k in cfg.grid_keys}))
                trainer = Trainer(run["model"], dataset, point, pdir, device, log, progress,
                                  alone=parallel)
                if own_data and i == mine[-1]:
                    _hand_over(dataset, trainer.model, point)
                if states is not None and states[i].checkpoint:
                    trainer.resume_from(pdir / "last.pt")
                elif states is not None:
                    log.info(f"no last.pt in {pdir} (it stopped before its first checkpoint): "
                             f"training {'this point' if len(points) > 1 else 'it'} from epoch 1")
                s = trainer.fit()
                del trainer  # before the next point's model is built
                s["params"] = {k: point[k] for k in cfg.grid_keys}
                s["dir"] = str(pdir.relative_to(run_dir)) if pdir != run_dir else "."
                summaries.append(s)
        except (MemoryError, torch.OutOfMemoryError) as e:  # beyond the estimate's lower bound
            raise TrainingError(f"out of memory training grid point {i + 1} ({e.__class__.__name__}"
                                f"; the estimate was {size}); lower {lower}") from None
        except RuntimeError as e:
            if "can't allocate memory" not in str(e):  # torch's CPU allocator says so
                raise
            raise TrainingError(f"out of memory training grid point {i + 1} (the estimate was "
                                f"{size}); lower {lower}") from None
        except KeyboardInterrupt:
            log.warning(f"interrupted; nothing completed is lost. Resume with:\n"
                        f"  python -m sgfd_fast.train --resume {run_dir}")
            raise
        if parallel:  # rank r trained points r, r + W, ...: every summary, in grid order
            parts = distributed.all_gather_object(summaries)
            summaries = [parts[i % world_size()][i // world_size()] for i in range(len(points))]

        best = max(range(len(summaries)), key=lambda j: (summaries[j]["valid_score"], -j))
        s = summaries[best]
        point = points[best]
        results = {
            "model": run["model"],
            "dataset": run["dataset"],
            "sgfd": bool(point.get("sgfd", False)),
            "protocol": point["protocol"],
            "valid_metric": point["valid_metric"],
            "best_epoch": s["best_epoch"],
            "valid": s["valid"],
            "test": s["test"],
            "epoch_time_s": s["epoch_time_s"],
            "eval_time_s": s["eval_time_s"],
            "epochs_trained": s["epochs_trained"],
            "early_stopped": s["early_stopped"],
            "config": point,
            "checkpoint": str(Path(s["dir"]) / "best.pt"),
            "data": run["data"],
            "device": device_name(device),
            "world_size": world_size(),
            # a run resumed with another process count: every count that finished an epoch
            "world_sizes": sorted({x.get("world_size", 1)
                                   for x in read_metrics(run_dir / s["dir"])}),
            "sgfd_fast_version": __version__,
            "torch_version": torch.__version__,
            "run_dir": str(run_dir),
        }
        if distributed.active():
            results["dist_backend"] = distributed.backend()
        if len(points) > 1:
            results["grid"] = [{"params": x["params"], "valid_score": x["valid_score"],
                                "best_epoch": x["best_epoch"], "dir": x["dir"]}
                               for x in summaries]
            results["selected_point"] = best
        if is_main():
            write_json(run_dir / "results.json", results)
        k = point["valid_metric"].split("@")[1]
        test = s["test"]
        if len(points) > 1:
            for j, x in enumerate(summaries):
                log.info(f"grid point {j + 1}/{len(points)} ({_params(x['params'])}): valid "
                         f"{point['valid_metric']} {x['valid_score']:.4f} at epoch "
                         f"{x['best_epoch']}{'  <- selected' if j == best else ''}")
        log.info(f"best epoch {s['best_epoch']}"
                 + (f" of grid point {best + 1}/{len(points)} ({_params(s['params'])})"
                    if len(points) > 1 else "")
                 + f": test recall@{k} {test.get(f'recall@{k}', float('nan')):.4f}, "
                 f"ndcg@{k} {test.get(f'ndcg@{k}', float('nan')):.4f}; results in "
                 f"{run_dir / 'results.json'}")
        return results


def _resume_hint(e: WriteFailed, run_dir: Path) -> RunDirectoryError:
    return RunDirectoryError(f"{e}. Free space or restore write access, then continue with "
                             f"--resume {run_dir}")


def train(model: str, config: Config, *, run_dir, dataset=None, data: dict | None = None,
          progress: bool | None = None, console: bool = True, unique_name: bool = False) -> dict:
    """Train ``model`` with a resolved ``config`` (grid included) into ``run_dir``.

    Everything is checked (config, data, device) before ``run_dir`` is created; a run that fails
    before its first ``last.pt`` removes what it created (see :mod:`.rundir`).

    Args:
        model: a key of ``sgfd_fast.models.MODELS``.
        config: from :func:`sgfd_fast.config.load_config`.
        run_dir: the run directory (created; must not hold a previous run).
        dataset: an already loaded Dataset (else loaded from ``data``; under
            ``precision: bf16`` a Dataset the run loads hands its float32 features over to the
            last model built from it, ``Dataset.hand_over_features``, while one passed here
            keeps them: the caller holds it).
        data: how to load the dataset again (``{"name": "office"}`` or ``{"path": DIR,
            "format": "sgfd", "labels": FILE}``); stored for ``--resume`` and ``load_run``.
        unique_name: ``run_dir`` is a default name: when it exists, ``-2``, ``-3``, ... is
            appended until a name is free, and the directory is made atomically (two runs
            started in the same second get two directories).
    Returns:
        The ``results.json`` content (``run_dir``: the run directory).
    Raises:
        ConfigError: ``run_dir`` already holds a run; a bad config or device; a ``topk``
            beyond the items; a run whose estimate (:mod:`.budget`) exceeds the memory or
            disk available.
        DataError: the data cannot be loaded.
        RunDirectoryError: ``run_dir`` cannot be created or written, or another process uses it.
    """
    if data is None:
        if dataset is None:
            raise ConfigError("train() needs dataset= or data=")
        data = {"in_memory": dataset.name}
    if data.get("path") is not None and data.get("labels") is not None:
        from ..data.formats import resolve_labels  # load_dataset's rule, recorded absolute

        data = {**data, "labels": resolve_labels(Path(data["path"]).expanduser(), data["labels"])}
    data = {k: (str(Path(v).expanduser().resolve()) if k in ("path", "labels") and v is not None
                else v) for k, v in data.items()}
    run_dir = Path(run_dir).expanduser()
    if not unique_name and distributed.broadcast_object((run_dir / "run.json").exists()):
        raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                          f"or choose another --out")
    values = config.values
    held: list = []
    own_data = dataset is None
    try:
        if dataset is None:
            dataset = _load_holding_warnings(data, values, held)
        if dataset.valid.shape[0] == 0 and values["protocol"] == "standard":  # never a grid key
            fix = ("set valid_ratio > 0 or give the dataset a valid split"
                   if not values.get("valid_ratio") or "in_memory" in data else
                   "give the dataset a valid split")
            raise ConfigError(f"dataset {dataset.name!r} has no validation interactions, which "
                              f"protocol=standard selects on; {fix}, or set protocol=legacy "
                              f"to validate on test")
        check_topk(config, dataset)
        run = {"model": model,
               "dataset": data.get("name") or data.get("in_memory") or Path(data["path"]).name,
               "data": data, "data_fingerprint": data_fingerprint(dataset), "config": values,
               "grid_keys": config.grid_keys, "config_files": config.files}
        device = resolve_device(values["device"])  # fail before creating anything
        _backend.check_requested()
        size = budget.estimate(dataset, config)
        budget.check_fits(size, device, run_dir)
        rd = distributed.on_main(lambda: RunDirectory.create(run_dir, unique=unique_name))
    except BaseException:
        _show_held(held)
        raise
    try:
        if rd is not None:
            write_json(rd.path / "run.json", run)
        # the other ranks write into run_dir (grid_parallel points) only after rank 0 made it: a
        # rank 1 ahead of it had made grid-1/, and rank 0 then refused the directory as not empty
        run_dir = Path(distributed.broadcast_object(str(rd.path if rd is not None else run_dir)))
        return _run(run, run_dir, dataset, held=held, progress=progress, console=console,
                    size=size.describe(), own_data=own_data)
    except Exception as e:
        _show_held(held)
        if rd is not None and not rd.has_checkpoint():
            rd.discard()  # nothing to resume: leave --out as it was before
            if isinstance(e, SGFDError):
                e.args = (f"{e} ({run_dir} was removed: nothing was saved yet)",)
        elif isinstance(e, WriteFailed):
            raise _resume_hint(e, run_dir) from None
        raise
    finally:
        if rd is not None:
            rd.close()


def _finished_message(run_dir: Path, states, points) -> str:
    stopped = [s.epoch for s in states if s.stopped]
    epochs = points[0]["epochs"]
    if len(stopped) == len(states):
        why = "early stopping ended it" if len(states) == 1 else \
            "early stopping ended every grid point"
        return f"{run_dir} is finished ({why}); there is nothing to train"
    return (f"{run_dir} is finished: it has trained {epochs} of epochs={epochs}"
            + (" (or stopped early)" if stopped else "") +
            "; there is nothing to train. Resume with a higher epochs to continue it")


def resume(run_dir, overrides=(), *, dataset=None, allow_data_change: bool = False,
           progress: bool | None = None, console: bool = True) -> dict:
    """Continue the run in ``run_dir`` exactly where its ``last.pt`` files left it.

    ``overrides`` (``"key=value"``) may change only :data:`RESUMABLE_KEYS`; ``epochs`` may not go
    below what a grid point has trained. ``dataset`` is needed only when the run was trained on
    a Dataset passed in memory. The data must match the fingerprint in ``run.json`` unless
    ``allow_data_change``. A finished run (every point done, ``results.json`` written) trains
    nothing, writes nothing and returns its ``results.json``.

    Raises:
        ConfigError: not a run directory; an override that cannot be applied.
        DataError: the data differ from those the run was trained on.
        RunDirectoryError: ``run.json`` is unreadable, a point has metrics but no ``last.pt``,
            another process uses the directory, or a write fails.
    """
    from ..config import parse_override

    run_dir = Path(run_dir)
    _backend.check_requested()  # before the lock and run.json are written
    rd = distributed.on_main(lambda: RunDirectory.open(run_dir))
    held: list = []
    try:
        run = read_checked_run(run_dir)
        values = run["config"]
        for item in overrides:
            k, v = parse_override(item) if isinstance(item, str) else item
            if k not in RESUMABLE_KEYS:
                raise ConfigError(f"{k} cannot be changed when resuming (only "
                                  f"{', '.join(RESUMABLE_KEYS)} can); start a new run instead")
            if k in run["grid_keys"]:
                raise ConfigError(f"{k} is a grid key of this run ({k}={values[k]}), so it "
                                  f"cannot be changed when resuming; start a new run instead")
            if k == "device":
                if not isinstance(v, str):
                    raise ConfigError(f"device must be a string, got {v!r}")
            elif isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{k} must be an int, got {v!r}")
            values[k] = v
        resolve_device(values["device"])  # refuses an unusable device before run.json is rewritten
        config = Config(values, run["grid_keys"], {}, [])
        points = config.points()
        check_point(points[0], lambda k: "the command line")  # the overrides: no grid keys
        pdirs = [_point_dir(run_dir, i, len(points)) for i in range(len(points))]
        states = point_states(run_dir, pdirs, points, run["model"], RESUMABLE_KEYS)
        results_path = run_dir / "results.json"
        if all(st.done(p["epochs"]) for st, p in zip(states, points)) and \
                results_path.exists():
            results = read_results(run_dir)
            if written_for(results, points):  # not one left by an earlier, shorter run
                with run_logging(None, console) as log:
                    log.info(_finished_message(run_dir, states, points))
                return results
        if rd is not None:
            rd.claim()  # there is work: a second process now learns who holds the run
        own_data = dataset is None
        if own_data:
            dataset = _load_holding_warnings(run["data"], values, held)
        notes = []
        fp, recorded = data_fingerprint(dataset), run["data_fingerprint"]  # read_run checked it
        if recorded["sha256"] != fp["sha256"]:
            change = (f"run.json records {describe_fingerprint(recorded)}, the data now give "
                      f"{describe_fingerprint(fp)}")
            if not allow_data_change:
                raise DataError(f"the data of {run_dir} changed since it was trained ({change}); "
                                f"restore them, start a new run, or continue on the new data "
                                f"with --resume {run_dir} --allow-data-change")
            notes.append(f"the data changed since the run was trained ({change}); continuing "
                         f"on the new data as asked (--allow-data-change)")
        # every check before the first write: the checkpoints' tables must fit these data
        check_data_shape(states, data_shape(dataset), recorded, run_dir)
        check_topk(config, dataset, "run.json")
        size = budget.estimate(dataset, config)  # the run's own size: nothing new to check
        run["data_fingerprint"] = fp
        try:
            if is_main():
                remove_temporaries([run_dir, *pdirs])
                write_json(run_dir / "run.json", run)
            return _run(run, run_dir, dataset, states=states, notes=notes, held=held,
                        progress=progress, console=console, size=size.describe(),
                        own_data=own_data)
        except WriteFailed as e:  # the files before it are intact
            raise _resume_hint(e, run_dir) from None
    finally:
        _show_held(held)
        if rd is not None:
            rd.close()
