"""The training loop every backbone shares: Adam, shuffled positive pairs (plus sampled negatives
when the model asks for them), validation every ``eval_step`` epochs, early stopping on
``valid_metric``, checkpoints that resume exactly, and the run directory's files.

A run directory holds ``run.json`` (what was asked: model, dataset, resolved config, grid),
``train.log``, and per grid point (the run directory itself when there is no grid, else
``grid-<i>/``) ``metrics.jsonl``, ``last.pt`` and ``best.pt``; ``results.json`` is written at the
end. Every JSON file is written to a temporary file and renamed, so none is ever partial.

Exact resume: the epoch's permutation comes from a generator seeded by ``(seed, epoch)``, and
``last.pt`` stores the model, optimizer, Python/NumPy/torch RNG states, the sampler state, the
position inside the epoch and the stopping state. ``last.pt`` is written after every epoch and, on
Ctrl-C, at the next batch boundary; resuming from it ends, on a CPU, with the same metrics as an
uninterrupted run.

Distributed use (torchrun) is not implemented yet; file writes and logging already happen on rank
0 only, and nothing here keeps module-level mutable state.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .config import Config, check_point
from .errors import ConfigError
from .sampling import NegativeSampler

__all__ = ["train", "resume", "Trainer", "load_data", "resolve_device", "RESUMABLE_KEYS",
           "LOGGER_NAME"]

LOGGER_NAME = "sgfd_fast.train"
#: Keys a ``--resume`` may change: they do not alter what was already trained.
RESUMABLE_KEYS = ("epochs", "stopping_step", "device", "eval_batch_size")
_CHECKPOINT_VERSION = 1


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------


def rank() -> int:
    """This process's torch.distributed rank (0 when not distributed)."""
    dist = getattr(torch, "distributed", None)
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


def _replace_atomically(path: Path, write) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: Path, obj) -> None:
    """Write JSON through a temporary file and a rename (never a partial file)."""
    _replace_atomically(path, lambda t: t.write_text(json.dumps(obj, indent=2) + "\n",
                                                     encoding="utf-8"))


def _save(obj, path: Path) -> None:
    _replace_atomically(path, lambda t: torch.save(obj, t))


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint written by the trainer (plain tensors and containers only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"checkpoint {path} does not exist") from None
    except Exception as e:  # a truncated or foreign file: say which and why
        raise ConfigError(f"cannot read checkpoint {path}: {e}") from None


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is a ConfigError."""
    name = str(name).lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name} was asked for, but torch sees no CUDA GPU "
                              f"(torch {torch.__version__}); use --device cpu or auto")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"device={name!r} is not one of auto, cpu, cuda")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    # NumPy's state is stored as tensors so checkpoints load with torch.load(weights_only=True).
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _epoch_of_line(line: str) -> float:
    """Epoch of a metrics.jsonl line; +inf for a line cut short by a crash (dropped on resume)."""
    try:
        return json.loads(line)["epoch"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2**63 - 1)


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------


def load_data(spec: dict, config: dict):
    """Load the dataset a run describes: ``spec`` = ``{"name": ...}`` or ``{"path": ..., "format":
    ..., "labels": ...}``, with ``valid_ratio``, ``split_seed`` and ``modalities`` from config."""
    from .data import load_dataset

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


# ----------------------------------------------------------------------------------------------
# logging
# ----------------------------------------------------------------------------------------------


class _TqdmHandler(logging.StreamHandler):
    """Console handler that prints above an active progress bar instead of through it."""

    def emit(self, record):
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


@contextmanager
def run_logging(run_dir: Path | None, console: bool = True):
    """Attach ``train.log`` (and the console) to the ``sgfd_fast.train`` logger for one run, on
    rank 0 only; detach them afterwards."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handlers = []
    if rank() == 0:
        if run_dir is not None:
            fh = logging.FileHandler(Path(run_dir) / "train.log", encoding="utf-8")
            fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            handlers.append(fh)
        if console:
            ch = _TqdmHandler()
            ch.setFormatter(logging.Formatter("%(message)s"))
            handlers.append(ch)
    else:
        handlers.append(logging.NullHandler())
    for h in handlers:
        logger.addHandler(h)
    try:
        yield logger
    finally:
        for h in handlers:
            logger.removeHandler(h)
            h.close()


# ----------------------------------------------------------------------------------------------
# one grid point
# ----------------------------------------------------------------------------------------------


class Trainer:
    """Trains one model (one grid point) in ``point_dir``.

    Args:
        model_name: a key of ``sgfd_fast.models.MODELS``.
        dataset: the loaded Dataset.
        config: the flat resolved config of this point.
        point_dir: where ``last.pt``, ``best.pt`` and ``metrics.jsonl`` go.
        device: a torch.device.
        logger: a ``logging.Logger``.
        progress: show a tqdm bar (None: only when stderr is a terminal).
    """

    def __init__(self, model_name: str, dataset, config: dict, point_dir: Path,
                 device: torch.device, logger: logging.Logger, progress: bool | None = None):
        from .models import build_model

        self.model_name = model_name
        self.dataset = dataset
        self.config = dict(config)
        self.point_dir = Path(point_dir)
        self.device = device
        self.log = logger
        self.write_files = rank() == 0
        self.progress = (sys.stderr.isatty() if progress is None else progress) and \
            self.write_files
        self._stop_requested = False

        seed_everything(self.config["seed"])
        self.model = build_model(model_name, dataset, self.config).to(device)
        self.optimizer = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad],
                                          lr=self.config["learning_rate"],
                                          weight_decay=self.config["weight_decay"])
        self.n_negatives = int(getattr(self.model, "n_negatives", 0) or 0)
        # optional per-model hook after each optimizer step (MAML clips embedding rows there)
        self._post_step = getattr(self.model, "post_step", None)
        self.sampler = NegativeSampler.from_pairs(
            dataset.n_users, dataset.n_items, dataset.train, n_neg=self.n_negatives,
            seed=self.config["seed"] + 1, device=device) if self.n_negatives else None
        self.train_pairs = torch.as_tensor(dataset.train, dtype=torch.long)
        # legacy protocol: the released code validates on the test split (design §3.6)
        self.eval_split = "test" if self.config["protocol"] == "legacy" else "valid"
        self.metric = self.config["valid_metric"].lower()

        self.epoch = 0            # completed epochs
        self.batch = 0            # next batch inside the current epoch (non-zero after Ctrl-C)
        self.partial = {"losses": {}, "time": 0.0}
        self.best_score = -math.inf
        self.best_epoch = None
        self.best_valid = None
        self.best_model = None    # the best epoch's weights (kept in memory: every rank has them)
        self.patience = 0         # evaluations since the last improvement
        self.stopped = False      # early stopping triggered
        self.epoch_times: list[float] = []
        self.eval_times: list[float] = []

    # --- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "version": _CHECKPOINT_VERSION,
            "model_name": self.model_name,
            "config": self.config,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": _rng_state(),
            "sampler": self.sampler.state_dict() if self.sampler else None,
            "epoch": self.epoch, "batch": self.batch, "partial": self.partial,
            "best_score": self.best_score, "best_epoch": self.best_epoch,
            "best_valid": self.best_valid, "patience": self.patience, "stopped": self.stopped,
            "epoch_times": self.epoch_times, "eval_times": self.eval_times,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.sampler is not None and state.get("sampler") is not None:
            self.sampler.load_state_dict(state["sampler"])
        for k in ("epoch", "batch", "partial", "best_score", "best_epoch", "best_valid",
                  "patience", "stopped", "epoch_times", "eval_times"):
            setattr(self, k, state[k])
        _set_rng_state(state["rng"])

    def _save(self, name: str) -> None:
        if self.write_files:
            _save(self.state_dict(), self.point_dir / name)

    def resume_from(self, path: Path) -> None:
        """Continue from a ``last.pt``; metrics lines after its epoch are dropped."""
        self.load_state_dict(load_checkpoint(path))
        if self.best_epoch is not None:
            self.best_model = load_checkpoint(self.point_dir / "best.pt")["model"]
        mpath = self.point_dir / "metrics.jsonl"
        if self.write_files and mpath.exists():
            keep = [ln for ln in mpath.read_text(encoding="utf-8").splitlines()
                    if _epoch_of_line(ln) <= self.epoch]
            _replace_atomically(mpath, lambda t: t.write_text(
                "".join(ln + "\n" for ln in keep), encoding="utf-8"))

    # --- the loop --------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Stop at the next batch boundary, saving ``last.pt`` (what Ctrl-C does)."""
        self._stop_requested = True

    @contextmanager
    def _sigint_stops(self):
        """First Ctrl-C: finish the batch, save, stop. Second: interrupt at once."""
        if threading.current_thread() is not threading.main_thread() or \
                signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            yield
            return

        def handler(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt
            self.log.warning("interrupt: stopping after this batch to save last.pt "
                             "(press Ctrl-C again to stop at once)")
            self._stop_requested = True

        signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def _check_stop(self) -> None:
        if self._stop_requested:
            self._save("last.pt")
            where = f"epoch {self.epoch + 1}, batch {self.batch}" if self.batch else \
                f"the end of epoch {self.epoch}"
            self.log.warning(f"stopped at {where}; last.pt saved in {self.point_dir}")
            raise KeyboardInterrupt

    def _evaluate(self, split: str) -> dict:
        from .evaluation import evaluate

        self.model.eval()
        try:
            with torch.no_grad():
                return evaluate(self.model, self.dataset, split, self.config)
        finally:
            self.model.train()

    def fit(self) -> dict:
        """Train until ``epochs`` or early stopping; returns this point's summary (best epoch,
        validation and test metrics at the best epoch, mean epoch/eval times)."""
        cfg = self.config
        if self.eval_split == "test" and self.epoch == 0 and self.batch == 0:
            self.log.warning("protocol=legacy: validation uses the TEST split, as the released "
                             "code does (model selection on test; for paper parity only)")
        n = self.train_pairs.shape[0]
        bs = cfg["train_batch_size"]
        n_batches = max(1, math.ceil(n / bs))
        self.model.train()
        with self._sigint_stops():
            while self.epoch < cfg["epochs"] and not self.stopped:
                self._train_epoch(n, bs, n_batches)
                self._end_epoch()
        return self._finish()

    def _train_epoch(self, n: int, bs: int, n_batches: int) -> None:
        from tqdm import tqdm

        cfg = self.config
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(
            _epoch_seed(cfg["seed"], self.epoch)))
        sums = dict(self.partial["losses"])
        start = time.perf_counter() - self.partial["time"]
        bar = tqdm(total=n_batches, initial=self.batch, leave=False, disable=not self.progress,
                   desc=f"epoch {self.epoch + 1}/{cfg['epochs']}", unit="batch", file=sys.stderr)
        try:
            while self.batch < n_batches:
                idx = perm[self.batch * bs:(self.batch + 1) * bs]
                users = self.train_pairs[idx, 0].to(self.device)
                items = self.train_pairs[idx, 1].to(self.device)
                negatives = self.sampler.sample(users) if self.sampler else None
                parts = self.model.calculate_loss(users, items, negatives)
                self.optimizer.zero_grad(set_to_none=True)
                parts["loss"].backward()
                self.optimizer.step()
                if self._post_step is not None:
                    self._post_step()
                for k, v in parts.items():
                    # float64 sums on the device: no host sync per step, same sums after resume
                    sums[k] = sums.get(k, 0.0) + v.detach().double()
                self.batch += 1
                bar.update(1)
                if self._stop_requested:
                    self.partial = {"losses": {k: float(v) for k, v in sums.items()},
                                    "time": time.perf_counter() - start}
                    self._check_stop()
        finally:
            bar.close()
        self._epoch_losses = {k: float(v) / n_batches for k, v in sums.items()}
        self._epoch_time = time.perf_counter() - start

    def _end_epoch(self) -> None:
        cfg = self.config
        self.epoch += 1
        self.batch = 0
        self.partial = {"losses": {}, "time": 0.0}
        losses = self._epoch_losses
        if not all(math.isfinite(v) for v in losses.values()):
            raise ConfigError(f"the training loss became {losses.get('loss')} in epoch "
                              f"{self.epoch}; lower learning_rate (now {cfg['learning_rate']}) "
                              f"or check the input features")
        self.epoch_times.append(self._epoch_time)
        line = {"epoch": self.epoch, "losses": losses, "epoch_time_s": self._epoch_time}
        msg = f"epoch {self.epoch}: loss {losses['loss']:.5f} ({self._epoch_time:.2f}s)"
        if self.epoch % cfg["eval_step"] == 0 or self.epoch == cfg["epochs"]:
            t0 = time.perf_counter()
            metrics = self._evaluate(self.eval_split)
            eval_time = time.perf_counter() - t0
            self.eval_times.append(eval_time)
            if self.metric not in metrics:
                raise ConfigError(f"valid_metric={self.metric} is not among the evaluated metrics "
                                  f"({', '.join(sorted(metrics))})")
            score = float(metrics[self.metric])
            improved = score > self.best_score  # strict, as the released code: ties keep the first
            if improved:
                self.best_score, self.best_epoch, self.best_valid = score, self.epoch, metrics
                self.best_model = {k: v.detach().clone()
                                   for k, v in self.model.state_dict().items()}
                self.patience = 0
            else:
                self.patience += 1
                if self.patience >= cfg["stopping_step"]:
                    self.stopped = True
            line.update({"valid": metrics, "eval_time_s": eval_time})
            msg += (f"; valid {self.metric} {score:.5f} ({eval_time:.2f}s)"
                    f"{' *best*' if improved else ''}")
            if improved:
                self._save("best.pt")
            if self.stopped:
                msg += (f"; early stop: no improvement in {cfg['stopping_step']} evaluations, "
                        f"best epoch {self.best_epoch}")
        self.log.info(msg)
        if self.write_files:
            with open(self.point_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
        self._save("last.pt")
        self._check_stop()

    def _finish(self) -> dict:
        if self.best_epoch is None:
            raise ConfigError(f"no evaluation produced a finite {self.metric}; nothing to report "
                              f"(run more epochs or check eval_step)")
        self.model.load_state_dict(self.best_model)
        t0 = time.perf_counter()
        test = self._evaluate("test")
        test_time = time.perf_counter() - t0
        return {"best_epoch": self.best_epoch, "valid": self.best_valid, "test": test,
                "valid_score": self.best_score, "epochs_trained": self.epoch,
                "early_stopped": self.stopped,
                "epoch_time_s": float(np.mean(self.epoch_times)) if self.epoch_times else None,
                "eval_time_s": float(np.mean(self.eval_times)) if self.eval_times else None,
                "test_eval_time_s": test_time}


# ----------------------------------------------------------------------------------------------
# a whole run (grid included)
# ----------------------------------------------------------------------------------------------


def _point_dir(run_dir: Path, i: int, n_points: int) -> Path:
    return run_dir if n_points == 1 else run_dir / f"grid-{i}"


def _log_kernels(log, device: torch.device) -> None:
    """Which backend serves each op, and why no compiled module does when none is loaded."""
    from . import _backend, _ext, ops  # noqa: F401 - ops registers every op

    log.info(f"kernels on {device.type}: {_backend.summary(device.type)}")
    missing = _ext.cpu_error if device.type == "cpu" else _ext.cuda_error
    if missing:
        log.warning(f"compiled {device.type.upper()} kernels unavailable: {missing}")


def _run(run: dict, run_dir: Path, dataset, *, resuming: bool, progress, console) -> dict:
    from . import __version__

    values = run["config"]
    cfg = Config(values, run["grid_keys"], {}, [])
    points = cfg.points()
    device = resolve_device(values["device"])
    with run_logging(run_dir if rank() == 0 else None, console) as log:
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
        summaries = []
        try:
            for i, point in enumerate(points):
                pdir = _point_dir(run_dir, i, len(points))
                if rank() == 0:
                    pdir.mkdir(parents=True, exist_ok=True)
                if len(points) > 1:
                    log.info(f"grid point {i + 1}/{len(points)}: " + ", ".join(
                        f"{k}={point[k]}" for k in cfg.grid_keys))
                trainer = Trainer(run["model"], dataset, point, pdir, device, log, progress)
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
        if rank() == 0:
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
    if (run_dir / "run.json").exists():
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
    if rank() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "run.json", run)
    return _run(run, run_dir, dataset, resuming=False, progress=progress, console=console)


def resume(run_dir, overrides=(), *, dataset=None, progress: bool | None = None,
           console: bool = True) -> dict:
    """Continue the run in ``run_dir`` exactly where its ``last.pt`` files left it.

    ``overrides`` (``"key=value"``) may change only :data:`RESUMABLE_KEYS`. ``dataset`` is needed
    only when the run was trained on a Dataset passed in memory.
    """
    from .config import parse_override

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
    if rank() == 0:
        write_json(path, run)
    if dataset is None:
        dataset = load_data(run["data"], values)
    return _run(run, run_dir, dataset, resuming=True, progress=progress, console=console)
