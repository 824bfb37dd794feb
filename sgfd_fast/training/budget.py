"""What a run will take, from the sizes of its data and config alone, said before anything is
allocated: memory of one grid point (one model is trained at a time) and disk of the whole run,
checked against what the machine has, so that a run that cannot fit is refused with the estimate
instead of dying in an allocation (or filling the disk) later.

The memory figure is a lower bound: the parameters every backbone has (user and item embeddings
of ``embedding_size``, one ``d_m × embedding_size`` feature head per modality; SGFD's teachers and
classifiers come on top) and those a model's own size keys add (MAML's projection MLP of
``hidden_layer_dim`` H: ``Σd_m·H + H·H/2 + H/2·H/2 + H/2·embedding_size``) held five times
(weights, gradients, Adam's two moments, the best epoch's copy) plus three more while ``last.pt``
is serialised, the graph index arrays (``rowptr`` of the propagation graph, the sampler and the
evaluation mask) and the item–item kNN graphs of ``knn_k`` neighbours (FREEDOM, LATTICE, MGCN:
an int64 column and a float32 value per neighbour, per item and modality). Disk: ``last.pt``
(weights and Adam's moments) and ``best.pt`` (weights) of every grid point, in float32.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..errors import ConfigError

__all__ = ["Budget", "estimate", "check_fits", "SIZE_KEYS", "size_keys"]

_FLOAT = 4   # bytes of a float32 parameter
_INDEX = 8   # bytes of an int64 index


#: The config keys that size a model's tables, named by the advice when a run cannot fit.
SIZE_KEYS = ("embedding_size", "hidden_layer_dim", "knn_k")


def size_keys(values: dict) -> list[str]:
    """The :data:`SIZE_KEYS` a run's config has (a model's own keys only where it has them)."""
    return [k for k in SIZE_KEYS if k in values]


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
                 dataset, embedding_size: int, keys: list[str]):
        self.parameters, self.memory, self.disk = parameters, memory, disk
        self.points, self.grid, self.dataset = points, grid, dataset
        self.embedding_size, self.keys = embedding_size, keys

    def describe(self) -> str:
        return (f"{self.grid}; at least {self.parameters:,} parameters and {_size(self.memory)} "
                f"of memory per point, about {_size(self.disk)} of checkpoints on disk")


def estimate(dataset, config) -> Budget:
    """The :class:`Budget` of training ``config`` (a :class:`~sgfd_fast.config.Config`, its grid
    counted from its lists' lengths, never expanded) on ``dataset``."""
    values = config.values

    def largest(key):
        return max(values[key]) if key in config.grid_keys else values[key]

    d = largest("embedding_size")
    rows = dataset.n_users + dataset.n_items
    widths = [int(f.shape[1]) for f in dataset.features.values()]
    params = rows * d + sum(widths) * d
    if "hidden_layer_dim" in values:  # MAML's projection MLP, widths H, H/2, H/2, D
        h = largest("hidden_layer_dim")
        params += sum(widths) * h + h * (h // 2) + (h // 2) ** 2 + (h // 2) * d
    memory = 8 * _FLOAT * params + 3 * _INDEX * (rows + 1)
    if "knn_k" in values:  # one kNN graph per modality: an int64 column, a float32 value
        memory += len(widths) * dataset.n_items * min(largest("knn_k"), dataset.n_items) * \
            (_INDEX + _FLOAT)
    points = len(config.points())
    disk = points * 4 * _FLOAT * params
    return Budget(params, memory, disk, points, config.describe_grid(), dataset, d,
                  size_keys(values))


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
    own = [k for k in budget.keys if k != "embedding_size"]
    avail = _available_memory(device)
    if avail is not None and budget.memory > avail:
        raise ConfigError(
            f"this run needs at least {_size(budget.memory)} of {device.type.upper()} memory per "
            f"grid point ({budget.parameters:,} parameters at least: {ds.n_users:,} users + "
            f"{ds.n_items:,} items and the feature heads at embedding_size "
            f"{budget.embedding_size:,}" + "".join(f", the model's {k} tables" for k in own) +
            f"; weights, gradients, Adam's moments, the best epoch's copy, a checkpoint being "
            f"written), but "
            f"{_size(avail)} are available; lower {' or '.join(budget.keys)} or use a larger "
            f"machine{_sparse_ids_hint(ds)}")
    free = _free_disk(run_dir)
    if free is not None and budget.disk > free[0]:
        raise ConfigError(
            f"this run writes about {_size(budget.disk)} of checkpoints ({budget.grid}, "
            f"last.pt and best.pt of {_size(budget.disk / budget.points)} each), but "
            f"{_size(free[0])} are free on {free[1]}; search fewer values, lower "
            f"{' or '.join(k for k in budget.keys if k != 'knn_k')}, or choose an --out with "
            f"more space")
