"""What a run will take, from the sizes of its data and config alone, said before anything is
allocated: memory of one grid point (one model is trained at a time) and disk of the whole run,
checked against what the machine has, so that a run that cannot fit is refused with the estimate
instead of dying in an allocation (or filling the disk) later.

The memory figure is a lower bound: the parameters every backbone has (user and item embeddings
of ``embedding_size``, one ``d_m × embedding_size`` feature head per modality; SGFD's teachers and
classifiers come on top) held five times (weights, gradients, Adam's two moments, the best
epoch's copy) plus three more while ``last.pt`` is serialised, and the graph index arrays
(``rowptr`` of the propagation graph, the sampler and the evaluation mask). Disk: ``last.pt``
(weights and Adam's moments) and ``best.pt`` (weights) of every grid point, in float32.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..errors import ConfigError

__all__ = ["Budget", "estimate", "check_fits"]

_FLOAT = 4   # bytes of a float32 parameter
_INDEX = 8   # bytes of an int64 index


def _size(n: float) -> str:
    """``n`` bytes in decimal units (``"9.7 KB"``)."""
    unit = "B"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            break
        n /= 1000
    return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"


class Budget:
    """The estimate of one run (see the module docstring): ``parameters`` (the lower bound, of the
    largest grid point), ``memory`` (bytes, one point), ``disk`` (bytes, every point), ``points``
    and the grid's description."""

    def __init__(self, parameters: int, memory: int, disk: int, points: int, grid: str,
                 dataset, embedding_size: int):
        self.parameters, self.memory, self.disk = parameters, memory, disk
        self.points, self.grid, self.dataset = points, grid, dataset
        self.embedding_size = embedding_size

    def describe(self) -> str:
        return (f"{self.grid}; at least {self.parameters:,} parameters and {_size(self.memory)} "
                f"of memory per point, about {_size(self.disk)} of checkpoints on disk")


def estimate(dataset, config) -> Budget:
    """The :class:`Budget` of training ``config`` (a :class:`~sgfd_fast.config.Config`, its grid
    counted from its lists' lengths, never expanded) on ``dataset``."""
    values = config.values
    sizes = values["embedding_size"]
    d = max(sizes) if "embedding_size" in config.grid_keys else sizes
    rows = dataset.n_users + dataset.n_items
    params = rows * d + sum(int(f.shape[1]) * d for f in dataset.features.values())
    memory = 8 * _FLOAT * params + 3 * _INDEX * (rows + 1)
    points = len(config.points())
    disk = points * 4 * _FLOAT * params
    return Budget(params, memory, disk, points, config.describe_grid(), dataset, d)


def _available_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _free_disk(path: Path) -> tuple[int, Path] | None:
    path = Path(path).resolve()
    for p in (path, *path.parents):
        if p.exists():
            try:
                return shutil.disk_usage(p).free, p
            except OSError:
                return None
    return None


def _sparse_ids_hint(dataset) -> str:
    """Why n_users is large when most user ids never appear (ids are row indices)."""
    present = dataset.meta.get("n_users_present")
    if present is not None and dataset.n_users > 2 * present:
        return (f"; the user ids run to {dataset.n_users - 1:,} while {present:,} distinct users "
                f"appear, and ids are row indices (user i is row i of the embedding table): "
                f"renumber the users 0..{present - 1}")
    return ""


def check_fits(budget: Budget, device: torch.device, run_dir) -> None:
    """Refuse (ConfigError) a run whose estimate exceeds the memory available on ``device`` or
    the disk free under ``run_dir``, with the estimate in the message."""
    ds = budget.dataset
    avail = _available_memory(device)
    if avail is not None and budget.memory > avail:
        raise ConfigError(
            f"this run needs at least {_size(budget.memory)} of {device.type.upper()} memory per "
            f"grid point ({budget.parameters:,} parameters at least: {ds.n_users:,} users + "
            f"{ds.n_items:,} items and the feature heads at embedding_size "
            f"{budget.embedding_size:,}; weights, gradients, Adam's moments, the best epoch's copy, a checkpoint being "
            f"written), but {_size(avail)} are available; lower embedding_size or use a "
            f"larger machine{_sparse_ids_hint(ds)}")
    free = _free_disk(run_dir)
    if free is not None and budget.disk > free[0]:
        raise ConfigError(
            f"this run writes about {_size(budget.disk)} of checkpoints ({budget.grid}, "
            f"last.pt and best.pt of {_size(budget.disk / budget.points)} each), but "
            f"{_size(free[0])} are free on {free[1]}; search fewer values, lower "
            f"embedding_size, or choose an --out with more space")
