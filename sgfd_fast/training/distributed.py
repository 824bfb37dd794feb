"""Several processes on torch.distributed, launched by ``torchrun``: the process group, the
collectives the trainer needs and how a global batch is split.

``torchrun --nproc_per_node=N -m sgfd_fast.train ...`` starts N copies of the CLI with
``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` (and the rendezvous) in the environment;
:func:`process_group` then joins them (NCCL on CUDA, one GPU per local rank; gloo on CPU). A plain
``python -m sgfd_fast.train`` never enters that branch and never imports ``torch.distributed``.

How one model is trained by W processes (docs/DEVELOPING.md, "Several processes"):

* every rank builds the same model (same seed) on its device, holds the whole graph and features,
  and computes the same epoch permutation; batch b of the epoch (``train_batch_size`` pairs, the
  GLOBAL batch) is cut into W contiguous shards (:func:`shard_bounds`), one per rank;
* the negatives of the global batch are drawn on every rank and each keeps its shard's rows, and
  the models' random masks come from :attr:`Recommender.step_key`: both are functions of the
  global position, so 1 and W processes see the same random numbers;
* the step's whole-graph work is divided, not repeated (:func:`row_split`,
  ``sgfd_fast.models.split``): each rank computes its row block of every propagation layer and of
  SGFD's collapsed teacher, and the blocks are all-gathered (backward: the gradient all-reduced);
  BM3 instead computes its one fused propagation whole on every rank and exchanges only the
  gradient rows its batch reads, each rank propagating its row block of the gradient;
* each rank backpropagates its shard's loss times ``n_shard / n_batch``
  (:attr:`Recommender.shard_fraction`) and :func:`all_reduce_grads` sums the gradients: a mean
  over the batch's rows is then exact, a term over the whole model (a norm regulariser) is counted
  once (the fractions sum to 1). Adam's step is divided (:func:`sharded_adam`): a parameter
  that reaches the loss only through the split's row blocks (``Recommender.split_rows``) has its
  whole gradient on each rank's rows already, and each rank updates its rows and broadcasts them;
  the others are sharded whole (ZeRO), each rank receiving the summed gradients of its share,
  updating it and broadcasting it. The step equals the one-process step up to float rounding;
* evaluation ranks each rank's share of the users and all-reduces metric sums and user counts
  (:func:`sgfd_fast.evaluation.evaluate`), then rank 0's result is broadcast, so every decision
  (best epoch, early stopping, grid point) is taken on identical numbers.

Why not DistributedDataParallel: its reducer hooks into ``module.forward()``, while the trainer
calls ``calculate_loss`` (each model would need a forward that computes its loss), and which
parameters a step uses may differ between shards (SGFD's heads see only the shard's items), which
DDP handles only with ``find_unused_parameters=True`` (a traversal of the autograd graph every
step). One flat all-reduce per dtype after ``backward`` needs neither, keeps a parameter that no
rank used at ``grad=None`` (Adam leaves it alone, as in one process), and gives up only DDP's
overlap of communication with the backward. (A design decision, not a measured comparison.)

Faults: every collective runs under ``dist_timeout`` seconds, so a dead or stuck peer ends the
others with an error instead of a hang, and torchrun stops the remaining workers once one
exits non-zero. ``SGFD_FAST_FAIL_AT=RANK:STEP`` (tests only) makes that rank exit with status
1 just before its step number STEP (counted over the whole run from 0), to exercise
this.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta

import torch

from ..errors import ConfigError
from . import runtime
from .runtime import _distributed, resolve_device

__all__ = ["launched", "process_group", "active", "backend", "shard_bounds", "broadcast_object",
           "on_main", "all_gather_object", "all_reduce_grads", "all_reduce_sums",
           "reduce_then_broadcast", "broadcast_params", "row_split", "ShardedAdam", "sharded_adam",
           "fail_if_asked"]

FAIL_ENV = "SGFD_FAST_FAIL_AT"


def launched() -> bool:
    """True when torchrun (or another launcher) has set this process's rank and world size."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def active() -> bool:
    """True inside :func:`process_group` (a torch.distributed group is initialised)."""
    return _distributed() is not None


def backend() -> str | None:
    """The process group's backend (``gloo``, ``nccl``); None outside :func:`process_group`."""
    dist = _distributed()
    return dist.get_backend() if dist is not None else None


@contextmanager
def process_group(backend: str = "auto", timeout_s: int = 600, device: str = "auto"):
    """Join the torchrun job for the duration of the block (nothing when not launched by one, or
    when the caller has initialised a group already).

    Args:
        backend: ``auto`` (NCCL when ``device`` resolves to CUDA, else gloo), ``nccl`` or ``gloo``.
        timeout_s: seconds any collective may wait for a peer before failing.
        device: the run's ``device``; on CUDA each process uses ``cuda:LOCAL_RANK``.
    Raises:
        ConfigError: NCCL asked for a CPU run, or fewer GPUs than local ranks.
    """
    if not launched() or active():
        yield
        return
    import torch.distributed as dist

    dev = resolve_device(device)
    if dev.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", 0))
        if local >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local} has no GPU (this machine has "
                              f"{torch.cuda.device_count()}); start at most that many processes "
                              f"per node (--nproc_per_node)")
        torch.cuda.set_device(local)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend == "nccl" and dev.type != "cuda":
        raise ConfigError("dist_backend=nccl needs CUDA devices; use dist_backend=gloo (or auto) "
                          "for device=cpu")
    # torch.distributed.nn.functional binds `group=group.WORLD` as its collectives' default when
    # imported, and so does torch.distributed.optim's ZeroRedundancyOptimizer module (its
    # `_broadcast_object`). Imported inside the group (the first Adam imports torch._dynamo,
    # which imports the former; sharded_adam imports the latter), those defaults hold the group
    # for the life of the process: destroy_process_group() then frees nothing, gloo's threads
    # outlive it, and a gloo group still alive at interpreter shutdown aborts the process now
    # and then ("terminate called without an active exception", exit 1 or SIGABRT after a
    # finished run). Imported first, the defaults are None.
    # (`from` imports: `import torch.distributed.nn` here would make `torch` a local name of this
    # function, unbound in the CUDA branch above)
    from torch.distributed import nn as _nn, optim as _optim  # noqa: F401

    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    try:
        yield
    except BaseException:
        dist.destroy_process_group()
        raise
    dist.barrier()  # every rank done communicating before any rank's group goes
    dist.destroy_process_group()


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """``[lo, hi)`` of rank ``rank``'s contiguous share of ``n`` rows (sizes differ by <= 1)."""
    return n * rank // world, n * (rank + 1) // world


def _comm_device() -> torch.device:
    """Where tensors handed to collectives live: the current GPU for NCCL, else the CPU."""
    dist = _distributed()
    if dist is not None and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (``obj`` itself outside a process group)."""
    dist = _distributed()
    if dist is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn):
    """``fn()`` on rank 0 and None on the others (outside a process group: on the main process,
    :func:`runtime.is_main`). A user error (``SGFDError``) that ``fn`` raises is raised on every
    rank, so that the job reports rank 0's message from each process, not rank 0's and then the
    others' lost connection to it (what a rank-0-only step such as creating or locking the run
    directory did)."""
    dist = _distributed()
    if dist is None:
        return fn() if runtime.is_main() else None
    from ..errors import SGFDError

    out = err = None
    if dist.get_rank() == 0:
        try:
            out = fn()
        except SGFDError as e:
            err = e
    err = broadcast_object(err)
    if err is not None:
        raise err
    return out


def all_gather_object(obj) -> list:
    """Every rank's ``obj``, in rank order (``[obj]`` outside a process group)."""
    dist = _distributed()
    if dist is None:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_params(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (they are built from one seed already;
    this makes it a guarantee rather than an assumption about identical initialisation)."""
    dist = _distributed()
    if dist is None:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        buf = t.data.to(_comm_device())
        dist.broadcast(buf, src=0)
        t.data.copy_(buf)


def all_reduce_grads(params: list[torch.nn.Parameter], owners: dict | None = None) -> int:
    """Sum the gradients of ``params`` over the ranks, one flat collective per dtype (and owner);
    a parameter whose gradient is None on every rank stays None (one process would leave it None
    too).

    ``owners`` (``{parameter: rank}``, a sharded optimizer's ``_param_to_rank``): only the rank
    that updates a parameter needs its summed gradient, so each owner's gradients are reduced to
    it (half an all-reduce's traffic) and the other ranks' ``.grad`` become None. Returns the
    bytes this rank sent (ring estimates: ``2 (W-1)/W`` of an all-reduced buffer, ``(W-1)/W`` of
    a reduced one)."""
    dist = _distributed()
    if dist is None:
        return 0
    dev = _comm_device()
    w, me, sent = dist.get_world_size(), dist.get_rank(), 0
    groups: dict = {}
    for p in params:
        groups.setdefault((None if owners is None else owners[p], p.dtype), []).append(p)
    for (owner, dtype), group in groups.items():
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                          .to(dev) for p in group]
                         + [torch.tensor([p.grad is not None for p in group], dtype=dtype,
                                         device=dev)])
        if owner is None:
            dist.all_reduce(flat)
            sent += 2 * (w - 1) * flat.numel() * flat.element_size() // w
        else:
            dist.reduce(flat, dst=owner)
            sent += (w - 1) * flat.numel() * flat.element_size() // w
            if owner != me:
                for p in group:
                    p.grad = None
                continue
        used = flat[-len(group):].tolist()
        offset = 0
        for p, u in zip(group, used):
            g = flat[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
            p.grad = g.to(p.device).clone() if u > 0 else None
    return sent


def all_reduce_sums(sums: dict) -> dict:
    """``{name: value}`` summed over the ranks in float64 (a name missing on a rank counts 0);
    outside a process group the values as floats."""
    dist = _distributed()
    if dist is None:
        return {k: float(v) for k, v in sums.items()}
    names = list(dict.fromkeys(k for part in all_gather_object(list(sums)) for k in part))
    vec = torch.tensor([float(sums.get(k, 0.0)) for k in names], dtype=torch.float64,
                       device=_comm_device())
    dist.all_reduce(vec)
    return dict(zip(names, vec.tolist()))


def reduce_then_broadcast(vec: torch.Tensor) -> torch.Tensor:
    """The sum of ``vec`` over the ranks, as rank 0 computed it, on every rank (identical bits
    everywhere, so decisions taken from it never diverge)."""
    dist = _distributed()
    if dist is None:
        return vec
    buf = vec.to(_comm_device())
    dist.all_reduce(buf)
    dist.broadcast(buf, src=0)
    return buf.to(vec.device)


def row_split():
    """This rank's :class:`~sgfd_fast.models.split.RowSplit` of the whole-graph work (the models
    compute their rows of each propagation and gather them), on the default group."""
    from ..models.split import RowSplit

    dist = _distributed()
    return RowSplit(dist.get_rank(), dist.get_world_size())


class ShardedAdam:
    """Adam whose step is divided between the ranks (:func:`sharded_adam`).

    * Parameters the model declares split by rows (``Recommender.split_rows``: their gradient
      is whole on this rank's rows of the split and zero elsewhere): each rank runs
      ``torch.optim.Adam`` on its rows (views into the parameter, updated in place) and the
      rows are broadcast by their owners after the step. Their gradients are not summed
      (except on a step that ran unsplit, :meth:`reduce_grads`). Those the model also
      declares local (``Recommender.split_local``: no rank reads another's rows under the
      split, as SGFD's collapse reads its own rows of the teacher's first layer) are not
      broadcast after the step: the other ranks' rows stay stale until :meth:`sync`, which the
      trainer calls before anything reads them whole (an unsplit step, the end of an epoch).
      At the paper's shapes that is the 4096 x 1024 layer, 16 MiB a step on gloo.
    * The others: torch's ``ZeroRedundancyOptimizer`` gives each rank whole parameters (about
      1/W of the elements), whose Adam state it alone holds and updates, then broadcasts them;
      their summed gradients go to that owner only (:meth:`reduce_grads`).

    Adam is elementwise, so the step equals one process's given the same gradients. The state
    dict is one process's ``torch.optim.Adam`` state over ``params`` (global indices) after
    :meth:`consolidate_state_dict` on every rank, and :meth:`load_state_dict` takes one
    process's, so checkpoints move between world sizes.
    """

    def __init__(self, params: list, split=None, rows=(), local=(), **adam):
        from torch.distributed.optim import ZeroRedundancyOptimizer

        self.params, self.split = list(params), split
        self._rows = {}  # parameter -> (its rows [a, b) here, n, offset)
        for p, n, offset in rows if split is not None else ():
            if p.requires_grad:
                a, b = (min(max(v - offset, 0), p.shape[0]) for v in split.bounds(n))
                self._rows[p] = (a, b, n, offset)
        # row-split parameters broadcast only by sync(); ``_stale``: updated since the last
        # (the same on every rank: every rank holds the gradient or none does)
        self._local = {p for p in local if p in self._rows}
        self._stale: set = set()
        self._views = {p: p.data[a:b] for p, (a, b, _, _) in self._rows.items() if b > a}
        self._steps = dict.fromkeys(self._rows, 0)
        shared = [p for p in self.params if p not in self._rows]
        # parameters_as_bucket_view: each rank's parameters live in one flat buffer per dtype,
        # so the step ends with one broadcast per rank and dtype, not one per parameter
        self.zero = ZeroRedundancyOptimizer(shared, optimizer_class=torch.optim.Adam,
                                            parameters_as_bucket_view=True, **adam)
        # a placeholder keeps an Adam with nothing to update valid (its hyper-parameters)
        self.local = torch.optim.Adam(list(self._views.values()) or [torch.zeros(0)], **adam)
        w = _distributed().get_world_size()
        #: bytes this rank broadcasts per step (its ZeRO share and its rows, to W-1 ranks)
        self.sent_per_step = (w - 1) * (
            sum(p.numel() * p.element_size() for g in self.zero.optim.param_groups
                for p in g["params"])
            + sum(v.numel() * v.element_size() for p, v in self._views.items()
                  if p not in self._local))

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None if set_to_none else (p.grad.zero_() if p.grad is not None else None)

    def reduce_grads(self, split_step: bool = True) -> int:
        """Sum each shared parameter's gradient to its ZeRO owner (:func:`all_reduce_grads`);
        the row-split parameters' too, over all ranks, on a step that ran unsplit
        (``split_step`` false: a global batch smaller than the world). Returns bytes sent."""
        owners = dict(self.zero._param_to_rank)
        params = [p for p in self.params if p in owners or not split_step]
        return all_reduce_grads(params, {**owners, **dict.fromkeys(self._rows)})

    @torch.no_grad()
    def step(self) -> None:
        self.zero.step()
        for p, v in self._views.items():
            v.grad = None if p.grad is None else p.grad[self._rows[p][0]:self._rows[p][1]]
        self.local.step()
        for v in self._views.values():  # a view kept alive would keep the model from reusing
            v.grad = None               # its gradient buffers (models.bm3._Encode)
        for p, (a, b, n, offset) in self._rows.items():
            # every rank holds the gradient (the row-split work runs on all) or none does
            if p.grad is not None:
                self._steps[p] += 1
                if p in self._local:
                    self._stale.add(p)
                else:
                    self.split.broadcast_rows(p.data, n, offset)

    @torch.no_grad()
    def sync(self) -> int:
        """Broadcast the rows of the local parameters (``Recommender.split_local``) updated
        since the last sync from their owners, so that every rank holds them whole; a no-op
        when none is stale. Every rank must call it at the same point. Returns bytes sent."""
        sent = 0
        for p, (a, b, n, offset) in self._rows.items():  # one order on every rank
            if p in self._stale:
                self.split.broadcast_rows(p.data, n, offset)
                sent += (self.split.world - 1) * (b - a) * p[0].numel() * p.element_size()
        self._stale.clear()
        return sent

    # --- one process's state dict ----------------------------------------------------------
    def consolidate_state_dict(self, to: int = 0) -> None:
        """Collect the whole state on rank ``to`` (every rank must call it), for one
        :meth:`state_dict` there. Brings the local parameters' rows up to date first
        (:meth:`sync`): the model's state dict is taken with it."""
        self.sync()
        self.zero.consolidate_state_dict(to=to)
        self._full = {}
        for p, (a, b, n, offset) in self._rows.items():
            if not self._steps[p]:
                continue
            here = self.local.state.get(self._views.get(p), {})
            full = {}
            for k in ("exp_avg", "exp_avg_sq"):
                t = torch.empty_like(p)
                if b > a:
                    t[a:b] = here[k]
                self.split.broadcast_rows(t, n, offset)
                full[k] = t
            if self.split.rank == to:
                self._full[p] = {"step": torch.tensor(float(self._steps[p])), **full}

    def state_dict(self) -> dict:
        zero = self.zero.state_dict()
        index = {p: i for i, p in enumerate(self.params)}
        shared = [p for p in self.params if p not in self._rows]
        state = {index[shared[i]]: s for i, s in zero["state"].items()}
        full, self._full = self._full, {}  # held only until the state dict is taken
        state.update({index[p]: s for p, s in full.items()})
        group, = zero["param_groups"]
        return {"state": dict(sorted(state.items())),
                "param_groups": [{**group, "params": list(range(len(self.params)))}]}

    def load_state_dict(self, state: dict) -> None:
        shared = [i for i, p in enumerate(self.params) if p not in self._rows]
        group, = state["param_groups"]
        self.zero.load_state_dict({
            "state": {j: state["state"][i] for j, i in enumerate(shared) if i in state["state"]},
            "param_groups": [{**group, "params": list(range(len(shared)))}]})
        hyper = {k: v for k, v in group.items() if k != "params"}
        self.local.param_groups[0].update(hyper)
        for i, p in enumerate(self.params):
            if p not in self._rows:
                continue
            s = state["state"].get(i)
            self._steps[p] = int(s["step"]) if s else 0
            v = self._views.get(p)
            if v is not None:
                self.local.state.pop(v, None)
                if s:
                    a, b = self._rows[p][:2]
                    self.local.state[v] = {"step": s["step"].clone().float(),
                                           **{k: s[k][a:b].to(v).clone()
                                              for k in ("exp_avg", "exp_avg_sq")}}


def sharded_adam(params: list, split=None, rows=(), local=(), **adam) -> ShardedAdam:
    """:class:`ShardedAdam` over ``params`` (``torch.optim.Adam`` keywords ``adam``); ``rows``
    and ``local``: the model's ``split_rows()`` and ``split_local()`` under ``split`` (a
    ``models.split.RowSplit``)."""
    return ShardedAdam(params, split, rows, local, **adam)


def fail_if_asked(step: int) -> None:
    """Test hook (``SGFD_FAST_FAIL_AT=RANK:STEP``): exit this process with status 1, at once and
    without cleanup, as a crashed peer would, when it is that rank at that training step."""
    spec = os.environ.get(FAIL_ENV)
    if spec and active():
        r, b = (int(x) for x in spec.split(":"))
        if r == _distributed().get_rank() and b == step:
            os._exit(1)
