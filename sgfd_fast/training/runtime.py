"""What a training process needs from its surroundings: the device, its place among distributed
processes, seeding and RNG state, and the run's log.

Process identity reads ``torch.distributed`` only when something else has already imported it
(torchrun set-up does), so a plain single-process run never pays for that import. File writes
and logging happen on the main process (rank 0) only; nothing here keeps module-level mutable
state.
"""

from __future__ import annotations

import logging
import os
import random
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError

__all__ = ["LOGGER_NAME", "resolve_device", "device_name", "usable_cores", "rank", "world_size",
           "is_main", "seed_everything", "rng_state", "set_rng_state", "run_logging"]

LOGGER_NAME = "sgfd_fast.train"


# --- device -----------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is a ConfigError. In a
    process group, ``cuda``/``auto`` is the GPU ``process_group`` selected (``cuda:LOCAL_RANK``)."""
    name = str(name).lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name} was asked for, but torch sees no CUDA GPU "
                              f"(torch {torch.__version__}); use --device cpu or auto")
        if name == "cuda" and _distributed() is not None:  # torchrun: this rank's GPU
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"device={name!r} is not one of auto, cpu, cuda")


def device_name(device: torch.device) -> str:
    """The GPU's marketing name, or ``"cpu"``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def usable_cores() -> int:
    """The CPU cores this process may run on: its affinity mask where the OS has one (Linux),
    else ``os.cpu_count()``."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


# --- process identity -------------------------------------------------------------------------


def _distributed():
    """``torch.distributed`` when a process group is initialised, else None (never imports it)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist
    return None


def rank() -> int:
    """This process's torch.distributed rank (0 when not distributed)."""
    dist = _distributed()
    return dist.get_rank() if dist is not None else 0


def world_size() -> int:
    """Number of torch.distributed processes (1 when not distributed)."""
    dist = _distributed()
    return dist.get_world_size() if dist is not None else 1


def is_main() -> bool:
    """True on the process that writes files and logs (rank 0)."""
    return rank() == 0


# --- seeding and RNG state --------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy (``seed mod 2**32``) and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Python, NumPy, torch (and, once initialised, CUDA) RNG states, as checkpointable values."""
    # NumPy's state is stored as tensors so checkpoints load with torch.load(weights_only=True).
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- logging ----------------------------------------------------------------------------------


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
    if is_main():
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
