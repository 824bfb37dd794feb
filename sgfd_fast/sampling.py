"""Uniform negative sampling that never returns a training positive.

For every user id b of a batch and every slot k < n_neg, the item is uniform over
``[0, n_items)`` minus the user's training positives, drawn by rejection from a counter-based
stream: draw t of output slot ``s = b * n_neg + k`` is a pure function of ``(seed, s, t)``
(splitmix64's mixer, ``csrc/sample_negatives_rng.h``). The result therefore depends only on the
inputs and the seed — not on the thread count, the schedule, or the device: the C++ (OpenMP), CUDA
and NumPy reference implementations return identical arrays. Item ids come from the high 32 bits of
each hash scaled to ``n_items`` (relative bias below ``n_items / 2**32``).

Positives are given as a user → item CSR (``train_rowptr``, ``train_items``) with items ascending
within each user, e.g. from :func:`positives_csr`; membership is a binary search (the C++ kernel
scans rows of up to 32 positives instead).
"""

from __future__ import annotations

import numpy as np
import torch

from . import _backend, _ext
from ._tensors import INDEX_NAMES, cuda_stream
from .errors import InputError
from .graph import CSR

__all__ = ["NegativeSampler", "positives_csr", "sample_negatives", "sample_negatives_reference"]

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_SLOT_STEP = 0x9E3779B97F4A7C15
_ATTEMPT_STEP = 0xD1B54A32D192ED03


def _mix64(z):
    """splitmix64's output mixer on a uint64 NumPy array (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _mix64_int(z: int) -> int:
    return int(_mix64(np.array([z & _MASK], dtype=np.uint64))[0])


def positives_csr(n_users: int, n_items: int, pairs) -> tuple[torch.Tensor, torch.Tensor]:
    """User → item CSR ``(rowptr (n_users + 1,), items (nnz,))`` of int64, items ascending and
    distinct within each user, from (n, 2) [user, item] pairs (duplicates are dropped).

    Raises:
        InputError: an id outside ``[0, n_users) x [0, n_items)`` (from :meth:`CSR.from_coo`).
    """
    if isinstance(pairs, torch.Tensor):
        pairs = pairs.detach().cpu().numpy()
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    csr = CSR.from_coo(pairs[:, 0], pairs[:, 1], None, n_users, n_items, duplicates="drop")
    return csr.rowptr, csr.col


def sample_negatives_reference(user_ids, n_items: int, train_rowptr, train_items, n_neg: int = 1,
                               seed: int = 0) -> torch.Tensor:
    """Vectorised NumPy version of the same stream (all pending slots redraw together)."""
    users = torch.as_tensor(user_ids).cpu().numpy().astype(np.int64).reshape(-1)
    rowptr = torch.as_tensor(train_rowptr).cpu().numpy().astype(np.int64)
    items = torch.as_tensor(train_items).cpu().numpy().astype(np.int64)
    n_users = rowptr.size - 1
    # Positives as globally ascending keys user * n_items + item (rows are ascending already).
    owner = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(rowptr))
    keys = owner * n_items + items
    n_slots = users.size * n_neg
    slot_user = np.repeat(users, n_neg)
    key = _mix64(np.array([(seed + _GOLDEN) & _MASK], dtype=np.uint64))[0]
    slots = np.arange(n_slots, dtype=np.uint64)
    out = np.empty(n_slots, dtype=np.int64)
    pending = np.arange(n_slots)
    attempt = 0
    while pending.size:
        h = _mix64(key + slots[pending] * np.uint64(_SLOT_STEP)
                   + np.uint64((attempt * _ATTEMPT_STEP) & _MASK))
        draw = (((h >> np.uint64(32)) * np.uint64(n_items)) >> np.uint64(32)).astype(np.int64)
        query = slot_user[pending] * n_items + draw
        pos = np.minimum(np.searchsorted(keys, query), max(keys.size - 1, 0))
        hit = keys[pos] == query if keys.size else np.zeros(pending.size, dtype=bool)
        out[pending[~hit]] = draw[~hit]
        pending = pending[hit]
        attempt += 1
    return torch.from_numpy(out.reshape(users.size, n_neg))


def sample_negatives(user_ids, n_items: int, train_rowptr: torch.Tensor,
                     train_items: torch.Tensor, n_neg: int = 1, seed: int = 0, *,
                     validate: bool = True) -> torch.Tensor:
    """Uniform negatives: ``(len(user_ids), n_neg)`` int64 items, none a training positive.

    Args:
        user_ids: (B,) user ids (tensor, array or list); the result is on its device (CUDA
            tensors are served by the CUDA kernel, CPU ones by C++/OpenMP, as
            ``python -m sgfd_fast.info`` lists; ``use_backend("sample_negatives=reference")``
            selects the NumPy reference).
        n_items: number of items (ids drawn from ``[0, n_items)``, n_items < 2**32).
        train_rowptr, train_items: user → item CSR of the training positives (int32 or int64,
            items ascending within a user), e.g. from :func:`positives_csr`; on the device of
            ``user_ids``.
        n_neg: negatives per user id.
        seed: any integer; the same seed and inputs give the same items on every backend,
            device and thread count.
        validate: check id ranges and that no requested user has every item as a positive
            (a host sync on CUDA; :class:`NegativeSampler` checks all users once and skips it).
            The C++ kernel always checks, at no extra cost.

    Raises:
        InputError: bad shapes/dtypes, ids out of range, or a user with no possible negative.
    """
    users = torch.as_tensor(user_ids)
    if users.dtype != torch.int64:
        users = users.long()
    users = users.reshape(-1).contiguous()
    n_users = train_rowptr.numel() - 1
    _check(train_rowptr.dim() == 1 and n_users >= 0 and train_items.dim() == 1,
           "train_rowptr and train_items must be 1-D")
    _check(train_rowptr.dtype in (torch.int32, torch.int64)
           and train_items.dtype == train_rowptr.dtype,
           f"train_rowptr and train_items must share int32 or int64, got {train_rowptr.dtype} "
           f"and {train_items.dtype}")
    _check(users.device == train_rowptr.device == train_items.device,
           f"user_ids ({users.device}) and the positives ({train_rowptr.device}) must be on one "
           "device")
    _check(0 < int(n_items) < 2**32, f"n_items must lie in [1, 2**32), got {n_items}")
    _check(int(n_neg) >= 0, f"n_neg must be >= 0, got {n_neg}")
    n_items, n_neg, seed = int(n_items), int(n_neg), int(seed) & _MASK
    train_rowptr, train_items = train_rowptr.contiguous(), train_items.contiguous()
    sample = _backend.implementation("sample_negatives", users.device.type)
    if users.numel() == 0 or n_neg == 0:
        if validate:
            _validate(users, n_users, n_items, train_rowptr)
        return torch.empty(users.numel(), n_neg, dtype=torch.int64, device=users.device)
    return sample(users, n_items, train_rowptr, train_items, n_neg, seed, validate)


def _sample_negatives_numpy(users, n_items, rowptr, items, n_neg, seed, validate):
    """The ``reference`` backend: the checks asked for, then :func:`sample_negatives_reference`."""
    if validate:
        _validate(users, rowptr.numel() - 1, n_items, rowptr)
    return sample_negatives_reference(users, n_items, rowptr, items, n_neg, seed).to(users.device)


def _sample_negatives_cpp(users, n_items, rowptr, items, n_neg, seed, validate):
    # The kernel checks every user itself (range, a possible negative) at no extra pass, whatever
    # ``validate`` says.
    n_users = rowptr.numel() - 1
    out = torch.empty(users.numel(), n_neg, dtype=torch.int64, device=users.device)
    bad = _ext.cpu.sample_negatives(users=users.data_ptr(), n_batch=users.numel(), n_neg=n_neg,
                                    n_users=n_users, n_items=n_items, rowptr=rowptr.data_ptr(),
                                    items=items.data_ptr(), index_dtype=INDEX_NAMES[rowptr.dtype],
                                    seed=seed, out=out.data_ptr())
    if bad >= 0:
        _validate(users[bad:bad + 1], n_users, n_items, rowptr)
    return out


def _sample_negatives_cuda(users, n_items, rowptr, items, n_neg, seed, validate):
    if validate:
        _validate(users, rowptr.numel() - 1, n_items, rowptr)
    out = torch.empty(users.numel(), n_neg, dtype=torch.int64, device=users.device)
    with torch.cuda.device(users.device):
        _ext.cuda.sample_negatives(users=users.data_ptr(), n_batch=users.numel(), n_neg=n_neg,
                                   n_items=n_items, rowptr=rowptr.data_ptr(),
                                   items=items.data_ptr(), index_dtype=INDEX_NAMES[rowptr.dtype],
                                   seed=seed, out=out.data_ptr(), stream=cuda_stream(users))
    return out


_backend.declare("sample_negatives", _sample_negatives_numpy)
_backend.register("sample_negatives", "cpu", "cpp", _sample_negatives_cpp)
_backend.register("sample_negatives", "cuda", "cuda", _sample_negatives_cuda)


def _validate(users: torch.Tensor, n_users: int, n_items: int, rowptr: torch.Tensor) -> None:
    if not users.numel():
        return
    lo, hi = int(users.min()), int(users.max())
    _check(lo >= 0 and hi < n_users, f"user ids must lie in [0, {n_users}), found range "
                                     f"[{lo}, {hi}]")
    full = (rowptr[users + 1] - rowptr[users]) >= n_items
    if bool(full.any()):
        user = int(users[full.nonzero()[0, 0]])
        raise InputError(f"sample_negatives: user {user} has all {n_items} items as training "
                         "positives, so no negative exists; drop such users from training")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise InputError(f"sample_negatives: {message}")


class NegativeSampler:
    """Stateful sampler for a training loop: every call draws from a fresh stream
    ``(seed, step)`` and advances ``step``, so resuming from :meth:`state_dict` reproduces the
    remaining batches exactly.

    Args:
        n_items: number of items.
        train_rowptr, train_items: user → item CSR of the positives (see :func:`positives_csr`);
            moved to ``device``.
        n_neg: negatives per user id.
        seed: base seed.
        device: where the positives live and the samples are produced (default: their device).

    Raises:
        InputError: a user has every item as a positive (reported once, at construction).
    """

    def __init__(self, n_items: int, train_rowptr: torch.Tensor, train_items: torch.Tensor,
                 n_neg: int = 1, seed: int = 0, device=None):
        device = torch.device(device) if device is not None else train_rowptr.device
        self.n_items, self.n_neg, self.seed, self.step = int(n_items), int(n_neg), int(seed), 0
        self.rowptr = train_rowptr.to(device).contiguous()
        self.items = train_items.to(device).contiguous()
        degree = self.rowptr.diff()
        full = (degree >= self.n_items).nonzero()
        if full.numel():
            raise InputError(f"NegativeSampler: user {int(full[0, 0])} has all {self.n_items} "
                             "items as training positives, so no negative exists; drop such "
                             "users from training")

    @classmethod
    def from_pairs(cls, n_users: int, n_items: int, pairs, **kwargs) -> "NegativeSampler":
        """Build from (n, 2) [user, item] training pairs."""
        rowptr, items = positives_csr(n_users, n_items, pairs)
        return cls(n_items, rowptr, items, **kwargs)

    def sample(self, user_ids) -> torch.Tensor:
        """``(len(user_ids), n_neg)`` negatives for this step; advances the step."""
        seed = _mix64_int(_mix64_int(self.seed) + self.step)
        self.step += 1
        users = torch.as_tensor(user_ids, device=self.rowptr.device)
        return sample_negatives(users, self.n_items, self.rowptr, self.items, self.n_neg, seed,
                                validate=False)

    __call__ = sample

    def state_dict(self) -> dict:
        return {"seed": self.seed, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.step = int(state["seed"]), int(state["step"])
