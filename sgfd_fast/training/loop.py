"""The training loop every backbone shares: Adam, shuffled positive pairs (plus sampled negatives
when the model asks for them), validation every ``eval_step`` epochs, early stopping on
``valid_metric``, and checkpoints that resume exactly.

Exact resume: the epoch's permutation comes from a generator seeded by ``(seed, epoch)``, and
``last.pt`` stores the model, optimizer, Python/NumPy/torch RNG states, the sampler state, the
position inside the epoch and the stopping state; ``best.pt`` only the best epoch's model.
``last.pt`` is written after every epoch and, on Ctrl-C or SIGTERM, at the next batch boundary;
resuming from it ends, on a CPU, with the same metrics as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, RunDirectoryError, TrainingError
from ..sampling import NegativeSampler
from . import diagnostics, distributed
from .checkpoint import (CHECKPOINT_VERSION, append_line, load_checkpoint, save_checkpoint,
                         trim_metrics)
from .rundir import data_shape
from .runtime import is_main, rank, rng_state, seed_everything, set_rng_state, world_size

__all__ = ["Trainer", "Terminated"]


class Terminated(KeyboardInterrupt):
    """SIGTERM stopped the run as a Ctrl-C does (last.pt saved at the batch boundary); the CLIs
    exit with 143 (128 + SIGTERM), as a process the signal ends."""


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2**63 - 1)


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
        alone: train without collectives even inside a process group (``grid_parallel``: this
            rank trains the whole point and writes its files).

    Inside a torch.distributed process group (and not ``alone``) every rank trains the same model
    on its shard of each global batch (:mod:`.distributed`); rank 0 writes the files.
    """

    def __init__(self, model_name: str, dataset, config: dict, point_dir: Path,
                 device: torch.device, logger: logging.Logger, progress: bool | None = None,
                 alone: bool = False):
        from ..models import build_model

        self.model_name = model_name
        self.dataset = dataset
        self.config = dict(config)
        self.point_dir = Path(point_dir)
        self.device = device
        self.log = logger
        self.dist = distributed.active() and not alone
        self.write_files = alone or is_main()
        self.progress = (sys.stderr.isatty() if progress is None else progress) and is_main()
        self._stop_signal = None  # the signal that asked to stop after this batch

        seed_everything(self.config["seed"])
        self.model = build_model(model_name, dataset, self.config).to(device)
        self.split = None
        if self.dist:
            distributed.broadcast_params(self.model)
            # each rank computes its row block of the whole-graph work (models.split)
            self.split = distributed.row_split()
            self.model.set_split(self.split)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # fused: one kernel per step over every parameter (CPU and CUDA, the devices we run on);
        # equal to the default for-each Adam up to float rounding. Several processes: each
        # updates its share of the parameters and broadcasts it (distributed.sharded_adam)
        adam = dict(lr=self.config["learning_rate"], weight_decay=self.config["weight_decay"],
                    fused=True)
        self.optimizer = distributed.sharded_adam(
            self.params, self.split, self.model.split_rows(), self.model.split_local(),
            **adam) if self.dist else \
            torch.optim.Adam(self.params, **adam)
        # bytes this rank sends per step: its share of the parameters to the W-1 others, plus,
        # counted as they happen, the split's collectives and the gradient reduction
        self._sent_fixed = self.optimizer.sent_per_step if self.dist else 0
        self._sent = 0
        self.n_negatives = int(self.model.n_negatives)
        self.sampler = NegativeSampler.from_pairs(
            dataset.n_users, dataset.n_items, dataset.train, n_neg=self.n_negatives,
            seed=self.config["seed"] + 1, device=device) if self.n_negatives else None
        self.train_pairs = torch.as_tensor(dataset.train, dtype=torch.long)
        # legacy protocol: the released code validates on the test split (docs/DESIGN.md §3.6)
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
        self._grad_share = None   # SGFD diagnostics of the epoch (training.diagnostics)

    # --- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "version": CHECKPOINT_VERSION,
            "model_name": self.model_name,
            "config": self.config,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(),
            "sampler": self.sampler.state_dict() if self.sampler else None,
            "epoch": self.epoch, "batch": self.batch, "partial": self.partial,
            "best_score": self.best_score, "best_epoch": self.best_epoch,
            "best_valid": self.best_valid, "patience": self.patience, "stopped": self.stopped,
            "epoch_times": self.epoch_times, "eval_times": self.eval_times,
            "data": data_shape(self.dataset),
        }

    def _check_fits(self, theirs: dict, path: Path) -> None:
        """Refuse a checkpoint's model state whose tensors do not fit the model with one clear
        error (a checkpoint of other data, or of another run the checks did not tell apart)."""
        ours = self.model.state_dict()
        bad = sorted(set(ours) ^ set(theirs)) or \
            [k for k in ours if tuple(ours[k].shape) != tuple(theirs[k].shape)]
        if bad:
            k = bad[0]
            got = tuple(theirs[k].shape) if k in theirs else "nothing"
            want = tuple(ours[k].shape) if k in ours else "nothing"
            raise RunDirectoryError(f"{path} does not fit this model and data ({k}: {got} "
                                    f"there, {want} here); it comes from another run or other "
                                    f"data: restore this run's {path.name}, or start a new run")

    def load_state_dict(self, state: dict, path: Path = Path("last.pt")) -> None:
        state = {**state, "model": self.model.complete_state(state["model"])}
        self._check_fits(state["model"], path)
        self.model.load_state_dict(state["model"])
        # a copy: the sharded optimizer blanks the other ranks' entries of what it is given
        self.optimizer.load_state_dict({**state["optimizer"],
                                        "state": dict(state["optimizer"]["state"])})
        if self.sampler is not None and state.get("sampler") is not None:
            self.sampler.load_state_dict(state["sampler"])
        for k in ("epoch", "batch", "partial", "best_score", "best_epoch", "best_valid",
                  "patience", "stopped", "epoch_times", "eval_times"):
            setattr(self, k, state[k])
        set_rng_state(state["rng"])

    def best_state_dict(self) -> dict:
        """What ``best.pt`` holds: the model alone (resume and ``load_run`` read nothing else, so
        no optimizer state, RNG or sampler: a third of ``last.pt``'s size with Adam)."""
        return {"version": CHECKPOINT_VERSION, "model_name": self.model_name,
                "config": self.config, "model": self.model.state_dict(),
                "epoch": self.epoch, "valid": self.best_valid, "data": data_shape(self.dataset)}

    def _save(self, name: str, state: dict | None = None) -> None:
        if state is None and self.dist:  # the sharded optimizer's state, gathered on rank 0
            self.optimizer.consolidate_state_dict(to=0)
        if self.write_files:
            save_checkpoint(self.state_dict() if state is None else state, self.point_dir / name)

    def resume_from(self, path: Path) -> None:
        """Continue from a ``last.pt``; metrics lines after its epoch are dropped."""
        self.load_state_dict(load_checkpoint(path, "last"), path)
        if self.best_epoch is not None:
            best = self.point_dir / "best.pt"
            self.best_model = self.model.complete_state(load_checkpoint(best, "best")["model"])
            self._check_fits(self.best_model, best)
        if self.write_files:
            trim_metrics(self.point_dir / "metrics.jsonl", self.epoch)

    # --- the loop --------------------------------------------------------------------------
    @contextmanager
    def _signals_stop(self):
        """First Ctrl-C (SIGINT) or SIGTERM (timeout, SLURM, docker stop): finish the batch, save,
        stop. Second: interrupt at once. A SIGTERM raises :class:`Terminated`."""
        # several processes: torchrun delivers the signal to each, which would stop at different
        # batches; there the default handlers end them (last.pt of the last epoch remains)
        if self.dist or threading.current_thread() is not threading.main_thread():
            yield
            return
        defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
        ours = [s for s, h in defaults.items() if signal.getsignal(s) is h]  # a caller's stays

        def handler(signum, frame):
            if self._stop_signal is not None:
                raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt
            again = "press Ctrl-C" if signum == signal.SIGINT else "send SIGTERM"
            self.log.warning(f"{'interrupt' if signum == signal.SIGINT else 'SIGTERM'}: stopping "
                             f"after this batch to save last.pt ({again} again to stop at once)")
            self._stop_signal = signum

        for s in ours:
            signal.signal(s, handler)
        try:
            yield
        finally:
            for s in ours:
                signal.signal(s, defaults[s])

    def _check_stop(self) -> None:
        if self._stop_signal is not None:
            self._save("last.pt")
            where = f"epoch {self.epoch + 1}, batch {self.batch}" if self.batch else \
                f"the end of epoch {self.epoch}"
            self.log.warning(f"stopped at {where}; last.pt saved in {self.point_dir}")
            raise Terminated if self._stop_signal == signal.SIGTERM else KeyboardInterrupt

    def _evaluate(self, split: str) -> dict:
        from ..evaluation import evaluate

        self.model.eval()
        if self.dist:  # the last step may have run unsplit
            self.model.set_split(self.split)
        try:
            with torch.no_grad():
                if self.dist:
                    return evaluate(self.model, self.dataset, split, self.config,
                                    shard=(rank(), world_size()),
                                    reduce=distributed.reduce_then_broadcast)
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
        with self._signals_stop():
            while self.epoch < cfg["epochs"] and not self.stopped:
                self._train_epoch(n, bs, n_batches)
                self._end_epoch()
        return self._finish()

    def _diagnose(self, parts: dict, last: int) -> None:
        """SGFD diagnostics on batch ``last``, the epoch's last batch (under torchrun: rank 0's
        share of it, and the batch before when the last is too small to give rank 0 rows;
        where the student feeds split work, GRCN's graph, the gradient reaching rank 0's block
        through the gathers is the other ranks' shares too). Every rank runs it: its autograd
        passes cross the split's collectives."""
        if self.batch == last:
            self._grad_share = diagnostics.gradient_share(self.model, parts)

    def _train_epoch(self, n: int, bs: int, n_batches: int) -> None:
        from tqdm import tqdm

        from ..models.base import step_key

        cfg = self.config
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(
            _epoch_seed(cfg["seed"], self.epoch)))
        # a resumed partial epoch's sums are global: counted once, on rank 0
        sums = {k: v if is_main() or not self.dist else 0.0
                for k, v in self.partial["losses"].items()}
        r, w = (rank(), world_size()) if self.dist else (0, 1)
        first = self.batch  # a resumed epoch starts inside
        diagnosed = n_batches - 1  # the last batch, unless it has fewer rows than processes
        if diagnosed and n - diagnosed * bs < w:
            diagnosed -= 1
        if self.dist:  # bytes sent by this epoch's steps (not by the evaluation before them)
            self._sent = self.split.sent = 0
        # the model's per-epoch hook (models.base: the trainer-model contract), also on resume
        self.model.begin_epoch(self.epoch, step_key(cfg["seed"], self.epoch, -1))
        start = time.perf_counter() - self.partial["time"]
        bar = tqdm(total=n_batches, initial=self.batch, leave=False, disable=not self.progress,
                   desc=f"epoch {self.epoch + 1}/{cfg['epochs']}", unit="batch", file=sys.stderr)
        try:
            while self.batch < n_batches:
                idx = perm[self.batch * bs:(self.batch + 1) * bs]
                users = self.train_pairs[idx, 0].to(self.device)
                items = self.train_pairs[idx, 1].to(self.device)
                # negatives of the global batch: a pair's draw depends on its global position
                negatives = self.sampler.sample(users) if self.sampler else None
                key = step_key(cfg["seed"], self.epoch, self.batch)
                self.optimizer.zero_grad(set_to_none=True)
                if self.dist:
                    distributed.fail_if_asked(self.epoch * n_batches + self.batch)
                    # a batch smaller than the world leaves a rank without rows, which then
                    # runs no forward: such a step is not split (every rank computes it all,
                    # reading every row of the parameters kept local to their rows)
                    split_step = idx.numel() >= w
                    if not split_step:
                        self._sent += self.optimizer.sync()
                    self.model.set_split(self.split if split_step else None)
                    lo, hi = distributed.shard_bounds(idx.numel(), r, w)
                    fraction = (hi - lo) / idx.numel()
                    self.model.begin_step(key, fraction, (users, items, negatives))
                    users, items = users[lo:hi], items[lo:hi]
                    negatives = negatives[lo:hi] if negatives is not None else None
                    parts = {}
                    if hi > lo:  # a global batch smaller than the world leaves a rank idle
                        parts = self.model.calculate_loss(users, items, negatives)
                        self._diagnose(parts, diagnosed)
                        (parts["loss"] * fraction).backward()
                        parts = {k: v.detach() * fraction for k, v in parts.items()}
                    # each parameter's summed gradient to the rank that updates it
                    self._sent += self.optimizer.reduce_grads(split_step) + \
                        self._sent_fixed
                else:
                    self.model.begin_step(key)
                    parts = self.model.calculate_loss(users, items, negatives)
                    self._diagnose(parts, diagnosed)
                    parts["loss"].backward()
                self.optimizer.step()
                self.model.post_step()
                for k, v in parts.items():
                    # float64 sums on the device: no host sync per step, same sums after resume
                    sums[k] = sums.get(k, 0.0) + v.detach().double()
                self.batch += 1
                bar.update(1)
                if self._stop_signal is not None:
                    self.partial = {"losses": {k: float(v) for k, v in sums.items()},
                                    "time": time.perf_counter() - start}
                    self._check_stop()
        finally:
            bar.close()
        if self.dist:  # every row whole again before evaluation, checkpoints, best_model
            self._sent += self.optimizer.sync()
            sums = distributed.all_reduce_sums(sums)
        self._epoch_losses = {k: float(v) / n_batches for k, v in sums.items()}
        if self.dist:
            self._sent_per_step = (self._sent + self.split.sent) / max(1, n_batches - first)
        self._epoch_time = time.perf_counter() - start

    def _end_epoch(self) -> None:
        cfg = self.config
        self.epoch += 1
        self.batch = 0
        self.partial = {"losses": {}, "time": 0.0}
        losses = self._epoch_losses
        if not all(math.isfinite(v) for v in losses.values()):
            raise TrainingError(f"the training loss became {losses.get('loss')} in epoch "
                              f"{self.epoch}; lower learning_rate (now {cfg['learning_rate']}) "
                              f"or check the input features")
        self.epoch_times.append(self._epoch_time)
        line = {"epoch": self.epoch, "losses": losses, "epoch_time_s": self._epoch_time,
                "world_size": world_size() if self.dist else 1}
        sgfd = {} if self._grad_share is None else {"grad_share": self._grad_share}
        msg = f"epoch {self.epoch}: loss {losses['loss']:.5f} ({self._epoch_time:.2f}s)"
        if self.dist:  # what a process sent per step (bench/bench_scale.py reads it)
            msg += f" [rank {rank()} sent {self._sent_per_step / 2**20:.3f} MiB per step]"
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
            sgfd.update(diagnostics.label_accuracy(self.model) or {})
            msg += (f"; valid {self.metric} {score:.5f} ({eval_time:.2f}s)"
                    f"{' *best*' if improved else ''}")
            if improved:
                self._save("best.pt", self.best_state_dict())
            if self.stopped:
                msg += (f"; early stop: no improvement in {cfg['stopping_step']} evaluations, "
                        f"best epoch {self.best_epoch}")
        if sgfd:
            line["sgfd"] = sgfd
        self.log.info(msg)
        if self.write_files:
            append_line(self.point_dir / "metrics.jsonl", json.dumps(line))
        self._save("last.pt")
        self._check_stop()

    def _finish(self) -> dict:
        if self.best_epoch is None:
            raise TrainingError(f"no evaluation produced a finite {self.metric}; nothing to report "
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
