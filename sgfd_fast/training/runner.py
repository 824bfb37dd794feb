"""A whole run: the run directory, the grid of configurations, ``results.json`` and ``--resume``.

A run directory holds ``run.json`` (what was asked: model, dataset, resolved config, grid),
``train.log``, and per grid point (the run directory itself when there is no grid, else
``grid-<i>/``) ``metrics.jsonl``, ``last.pt`` and ``best.pt``; ``results.json`` is written at the
end. Every JSON file is written to a temporary file and renamed, so none is ever partial.
Each grid point is trained by a :class:`~sgfd_fast.training.loop.Trainer` from the same seed; the
point with the best ``valid_metric`` is reported. Under torchrun (:mod:`.distributed`) all ranks
train each point together, or, with ``grid_parallel: true``, point i is trained alone by rank
``i mod world_size`` (which writes its ``grid-<i>/``) and the summaries are gathered before the
same selection.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import Config, check_point
from ..errors import ConfigError
from . import distributed
from .checkpoint import write_json
from .loop import Trainer
from .runtime import device_name, is_main, rank, resolve_device, run_logging, world_size

__all__ = ["train", "resume", "load_data", "RESUMABLE_KEYS"]

#: Keys a ``--resume`` may change: they do not alter what was already trained.
RESUMABLE_KEYS = ("epochs", "stopping_step", "device", "eval_batch_size")


def load_data(spec: dict, config: dict):
    """Load the dataset a run describes: ``spec`` = ``{"name": ...}`` or ``{"path": ..., "format":
    ..., "labels": ...}``, with ``valid_ratio``, ``split_seed`` and ``modalities`` from config."""
    from ..data import load_dataset

    if "in_memory" in spec:
        raise ConfigError(f"this run was trained on the in-memory dataset "
                          f"{spec['in_memory']!r}; pass that Dataset as dataset=")
    # legacy protocol validates on test, so like the released code it trains on all of train
    valid_ratio = 0.0 if config.get("protocol") == "legacy" else config["valid_ratio"]
    kw = dict(valid_ratio=valid_ratio, seed=config["split_seed"],
              modalities=config.get("modalities"))
    if spec.get("name"):
        return load_dataset(spec["name"], **kw)
    return load_dataset(path=spec["path"], format=spec.get("format", "sgfd"),
                        labels=spec.get("labels"), **kw)


def _point_dir(run_dir: Path, i: int, n_points: int) -> Path:
    return run_dir if n_points == 1 else run_dir / f"grid-{i}"


def _log_kernels(log, device: torch.device) -> None:
    """Which backend serves each op, and why no compiled module does when none is loaded."""
    from .. import _backend, _ext, ops  # noqa: F401 - ops registers every op

    log.info(f"kernels on {device.type}: {_backend.summary(device.type)}")
    missing = _ext.cpu_error if device.type == "cpu" else _ext.cuda_error
    if missing:
        log.warning(f"compiled {device.type.upper()} kernels unavailable: {missing}")


def _run(run: dict, run_dir: Path, dataset, *, resuming: bool, progress, console) -> dict:
    from .. import __version__

    values = run["config"]
    cfg = Config(values, run["grid_keys"], {}, [])
    points = cfg.points()
    device = resolve_device(values["device"])
    with run_logging(run_dir if is_main() else None, console) as log:
        if not resuming:
            log.info(f"sgfd_fast {__version__}: {run['model']} on {run['dataset']} "
                     f"({dataset.n_users} users, {dataset.n_items} items, "
                     f"{dataset.train.shape[0]} train / {dataset.valid.shape[0]} valid / "
                     f"{dataset.test.shape[0]} test), device {device_name(device)}, "
                     f"run directory {run_dir}")
            if dataset.synthetic:
                log.warning(f"dataset {run['dataset']}: SYNTHETIC {', '.join(dataset.synthetic)}")
        else:
            log.info(f"resuming {run_dir}")
        _log_kernels(log, device)
        parallel = values.get("grid_parallel", False) and len(points) > 1 and distributed.active()
        if parallel:
            log.info(f"grid_parallel: {len(points)} points over {world_size()} processes (point "
                     f"i on rank i mod {world_size()}); only rank 0's points are logged here")
        summaries = []
        try:
            for i, point in enumerate(points):
                if parallel and i % world_size() != rank():
                    continue
                pdir = _point_dir(run_dir, i, len(points))
                if is_main() or parallel:
                    pdir.mkdir(parents=True, exist_ok=True)
                if len(points) > 1:
                    log.info(f"grid point {i + 1}/{len(points)}: " + ", ".join(
                        f"{k}={point[k]}" for k in cfg.grid_keys))
                trainer = Trainer(run["model"], dataset, point, pdir, device, log, progress,
                                  alone=parallel)
                if resuming and (pdir / "last.pt").exists():
                    trainer.resume_from(pdir / "last.pt")
                s = trainer.fit()
                s["params"] = {k: point[k] for k in cfg.grid_keys}
                s["dir"] = str(pdir.relative_to(run_dir)) if pdir != run_dir else "."
                summaries.append(s)
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
            "sgfd_fast_version": __version__,
            "torch_version": torch.__version__,
        }
        if len(points) > 1:
            results["grid"] = [{"params": x["params"], "valid_score": x["valid_score"],
                                "best_epoch": x["best_epoch"], "dir": x["dir"]}
                               for x in summaries]
            results["selected_point"] = best
        if is_main():
            write_json(run_dir / "results.json", results)
        k = point["valid_metric"].split("@")[1]
        test = s["test"]
        log.info(f"best epoch {s['best_epoch']}"
                 + (f" (grid point {best + 1}/{len(points)})" if len(points) > 1 else "")
                 + f": test recall@{k} {test.get(f'recall@{k}', float('nan')):.4f}, "
                 f"ndcg@{k} {test.get(f'ndcg@{k}', float('nan')):.4f}; results in "
                 f"{run_dir / 'results.json'}")
        return results


def train(model: str, config: Config, *, run_dir, dataset=None, data: dict | None = None,
          progress: bool | None = None, console: bool = True) -> dict:
    """Train ``model`` with a resolved ``config`` (grid included) into ``run_dir``.

    Args:
        model: a key of ``sgfd_fast.models.MODELS``.
        config: from :func:`sgfd_fast.config.load_config`.
        run_dir: the run directory (created; must not hold a previous run).
        dataset: an already loaded Dataset (else loaded from ``data``).
        data: how to load the dataset again (``{"name": "office"}`` or ``{"path": DIR,
            "format": "sgfd", "labels": FILE}``); stored for ``--resume`` and ``load_run``.
    Returns:
        The ``results.json`` content.
    """
    if data is None:
        if dataset is None:
            raise ConfigError("train() needs dataset= or data=")
        data = {"in_memory": dataset.name}
    data = {k: (str(Path(v).resolve()) if k in ("path", "labels") and v is not None else v)
            for k, v in data.items()}
    run_dir = Path(run_dir)
    if distributed.broadcast_object((run_dir / "run.json").exists()):  # rank 0 decides
        raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                          f"or choose another --out")
    values = config.values
    if dataset is None:
        dataset = load_data(data, values)
    if dataset.valid.shape[0] == 0 and any(p["protocol"] == "standard" for p in config.points()):
        raise ConfigError(f"dataset {dataset.name!r} has no validation interactions, which "
                          f"protocol=standard selects on; set valid_ratio > 0 (now "
                          f"{values.get('valid_ratio')}) or give the dataset a valid split")
    run = {"model": model,
           "dataset": data.get("name") or data.get("in_memory") or Path(data["path"]).name,
           "data": data, "config": values, "grid_keys": config.grid_keys,
           "config_files": config.files}
    resolve_device(values["device"])  # fail before creating anything
    if is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "run.json", run)
    return _run(run, run_dir, dataset, resuming=False, progress=progress, console=console)


def resume(run_dir, overrides=(), *, dataset=None, progress: bool | None = None,
           console: bool = True) -> dict:
    """Continue the run in ``run_dir`` exactly where its ``last.pt`` files left it.

    ``overrides`` (``"key=value"``) may change only :data:`RESUMABLE_KEYS`. ``dataset`` is needed
    only when the run was trained on a Dataset passed in memory.
    """
    from ..config import parse_override

    run_dir = Path(run_dir)
    path = run_dir / "run.json"
    if not path.exists():
        raise ConfigError(f"{run_dir} is not a run directory (no run.json); --resume takes the "
                          f"directory a previous training wrote")
    run = json.loads(path.read_text(encoding="utf-8"))
    values = run["config"]
    for item in overrides:
        k, v = parse_override(item) if isinstance(item, str) else item
        if k not in RESUMABLE_KEYS:
            raise ConfigError(f"{k} cannot be changed when resuming (only "
                              f"{', '.join(RESUMABLE_KEYS)} can); start a new run instead")
        if k == "device":
            if not isinstance(v, str):
                raise ConfigError(f"device must be a string, got {v!r}")
        elif isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{k} must be an int, got {v!r}")
        values[k] = v
    for point in Config(values, run["grid_keys"], {}, []).points():
        check_point(point, lambda k: "the command line")
    if is_main():
        write_json(path, run)
    if dataset is None:
        dataset = load_data(run["data"], values)
    return _run(run, run_dir, dataset, resuming=True, progress=progress, console=console)
