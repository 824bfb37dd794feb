"""Training: the loop, its checkpoints, whole runs (grid, results, resume) and the runtime.

* :mod:`.runtime`: device, process identity (rank), seeding and RNG state, the run's log.
* :mod:`.checkpoint`: atomic JSON/checkpoint writes, reading checkpoints, trimming metrics.
* :mod:`.rundir`: the run directory's life: creation, lock, ``run.json``, resume cases, data
  fingerprint.
* :mod:`.loop`: :class:`Trainer`, one model (one grid point) from its first epoch to its test
  metrics.
* :mod:`.distributed`: several processes under torchrun (process group, sharding, collectives).
* :mod:`.budget`: what a run will take (memory, disk), estimated and checked before it starts.
* :mod:`.runner`: :func:`train` and :func:`resume`, the run directory, the grid, ``results.json``.
"""

from .checkpoint import CHECKPOINT_VERSION, load_checkpoint, write_json
from .loop import Terminated, Trainer
from .runner import RESUMABLE_KEYS, check_topk, read_checked_run, resume, train
from .runtime import (LOGGER_NAME, device_name, is_main, rank, resolve_device, run_logging,
                      seed_everything, world_size)

__all__ = ["train", "resume", "Trainer", "Terminated", "read_checked_run",
           "check_topk", "RESUMABLE_KEYS", "LOGGER_NAME",
           "CHECKPOINT_VERSION", "load_checkpoint", "write_json", "resolve_device", "device_name",
           "rank", "world_size", "is_main", "seed_everything", "run_logging"]
