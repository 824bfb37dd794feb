"""Deterministic splits.

``carve_valid`` — the validation split used when a dataset has none (SGFD's release has none; the
official code validates on test). For every user with at least 2 training interactions it moves
``k = max(1, floor(valid_ratio * n + 0.5))`` of their n training items to validation, capped at
``n - 1`` so every such user keeps at least one training item; users with a single training item
keep it. Which items move is decided by ``numpy.random.default_rng(seed)``: one uniform key per
training row, the k smallest keys of each user move. Same input rows + same seed = same split, on
every platform (NumPy's PCG64 stream is stable).

``random_split`` — for raw interaction files with no split: per user, shuffle with the seed and cut
``train:valid:test`` by ratio (default ``8:1:1``); each part's size is ``floor(ratio * n + 0.5)``
for valid and test, every user keeps at least one training item (test is shrunk first, then valid).

``ordered_split`` — per user, in a given order (time for a chronological split), the first items
to train, the next to valid, the last to test, with MMRec's counts (its
``preprocessing/1splitting.ipynb``, there for ``8:1:1``): of a user's n items,
``held = floor((r_valid + r_test) * n)`` leave train, ``n_valid = floor(held * r_valid /
(r_valid + r_test))``, ``n_test = held - n_valid``; each of n_valid, n_test is then at least 1
(when its ratio is positive), and if fewer than one training item would remain, valid is lowered
first, then test. With ``8:1:1`` this is MMRec's rule for every n >= 3 (n < 10: the last item is
test, the one before valid, the rest train; n >= 10: ``floor(0.2 n)`` held out, half of it,
rounded down, valid); a user with 2 items keeps 1 in train and 1 in test, a user with 1 item
keeps it in train. So every user is in train.
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError

__all__ = ["carve_valid", "random_split", "ordered_split", "ordered_x_label", "split_counts", "parse_ratios"]


def _per_user_rank(users: np.ndarray, n_users: int, rng: np.random.Generator):
    """Each row's rank among its user's rows (by a uniform key) and, per row, its user's row
    count; sized by the rows, never by the user ids' values (``n_users`` is not needed)."""
    keys = rng.random(users.shape[0])
    order = np.lexsort((keys, users))
    _, first, inverse, counts = np.unique(users[order], return_index=True, return_inverse=True,
                                          return_counts=True)
    rank = np.empty(users.shape[0], dtype=np.int64)
    rank[order] = np.arange(users.shape[0]) - first[inverse.reshape(-1)]
    per_row = np.empty(users.shape[0], dtype=np.int64)
    per_row[order] = counts[inverse.reshape(-1)]
    return rank, per_row


def carve_valid(train: np.ndarray, n_users: int, valid_ratio: float = 0.1, seed: int = 2023):
    """Split ``train`` rows into ``(train, valid)``; original row order is kept within each."""
    if not (0.0 <= float(valid_ratio) < 1.0):
        raise DataError(f"valid_ratio must be in [0, 1), got {valid_ratio}")
    train = np.asarray(train, dtype=np.int64)
    if valid_ratio == 0 or train.shape[0] == 0:
        return train, np.zeros((0, 2), dtype=np.int64)
    rng = np.random.default_rng(seed)
    users = train[:, 0]
    rank, counts = _per_user_rank(users, n_users, rng)
    k = np.floor(valid_ratio * counts + 0.5).astype(np.int64)
    k = np.maximum(k, 1)
    k = np.minimum(k, counts - 1)  # leave >= 1 train item; users with 1 item get k = 0
    to_valid = rank < k
    return (np.ascontiguousarray(train[~to_valid]), np.ascontiguousarray(train[to_valid]))


def parse_ratios(split) -> tuple[float, float, float]:
    if isinstance(split, str):
        parts = split.split(":")
        try:
            vals = [float(p) for p in parts]
        except ValueError:
            vals = []
    else:
        vals = [float(v) for v in split]
    if len(vals) != 3 or any(v < 0 for v in vals) or vals[0] <= 0:
        raise DataError(f"split {split!r} is invalid; give train:valid:test ratios such as '8:1:1'")
    s = sum(vals)
    return vals[0] / s, vals[1] / s, vals[2] / s


def random_split(pairs: np.ndarray, n_users: int, split="8:1:1", seed: int = 2023):
    """Per-user random ``train:valid:test`` split of raw interactions. Returns three arrays."""
    _, rv, rt = parse_ratios(split)
    pairs = np.asarray(pairs, dtype=np.int64)
    rng = np.random.default_rng(seed)
    users = pairs[:, 0]
    rank, counts = _per_user_rank(users, n_users, rng)
    n_test = np.floor(rt * counts + 0.5).astype(np.int64)
    n_valid = np.floor(rv * counts + 0.5).astype(np.int64)
    over = np.maximum(n_test + n_valid - (counts - 1), 0)
    cut = np.minimum(over, n_test)
    n_test -= cut
    n_valid -= over - cut
    n_valid = np.maximum(n_valid, 0)
    r = rank
    is_test = r < n_test
    is_valid = (~is_test) & (r < n_test + n_valid)
    is_train = ~(is_test | is_valid)
    return (np.ascontiguousarray(pairs[is_train]), np.ascontiguousarray(pairs[is_valid]),
            np.ascontiguousarray(pairs[is_test]))


def split_counts(counts, split="8:1:1"):
    """Per user ``(n_train, n_valid, n_test)`` of ``ordered_split`` for ``counts`` (int array of
    items per user); see the module docstring for the rule."""
    _, rv, rt = parse_ratios(split)
    n = np.asarray(counts, dtype=np.int64)
    eps = 1e-9  # 0.2 * 15 must floor to 3 whatever the float rounding of the ratio
    held = np.floor((rv + rt) * n + eps).astype(np.int64) if rv + rt > 0 else np.zeros_like(n)
    n_valid = np.floor(held * (rv / (rv + rt)) + eps).astype(np.int64) if rv + rt > 0 else held
    n_test = held - n_valid
    if rv > 0:
        n_valid = np.maximum(n_valid, 1)
    if rt > 0:
        n_test = np.maximum(n_test, 1)
    over = np.maximum(n_valid + n_test - np.maximum(n - 1, 0), 0)
    cut = np.minimum(over, n_valid)
    n_valid = n_valid - cut
    n_test = np.maximum(n_test - (over - cut), 0)
    return n - n_valid - n_test, n_valid, n_test


def ordered_x_label(users: np.ndarray, order, n_users: int, split="8:1:1") -> np.ndarray:
    """MMRec's ``x_label`` (0 = train, 1 = valid, 2 = test) of each row: per user, in the order
    of ``order`` (n sortable keys, e.g. timestamps; ties keep row order), the earliest rows
    train, then valid, the latest test, with :func:`split_counts`."""
    users = np.asarray(users, dtype=np.int64)
    order = np.asarray(order)
    if order.shape[0] != users.shape[0]:
        raise DataError(f"ordered split: {order.shape[0]} order keys for {users.shape[0]} rows")
    idx = np.lexsort((np.arange(users.shape[0]), order, users))
    counts = np.bincount(users, minlength=n_users)
    starts = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    n_train, n_valid, _ = split_counts(counts, split)
    u = users[idx]
    pos = np.arange(idx.shape[0]) - starts[u]
    x_label = np.empty(users.shape[0], dtype=np.int64)
    x_label[idx] = np.where(pos < n_train[u], 0, np.where(pos < (n_train + n_valid)[u], 1, 2))
    return x_label


def ordered_split(pairs: np.ndarray, order, n_users: int, split="8:1:1"):
    """Per-user ``train:valid:test`` split of ``pairs`` ((n, 2) [user, item]) in the order of
    ``order`` (see :func:`ordered_x_label`). Returns three arrays, each in (user, order) order."""
    pairs = np.asarray(pairs, dtype=np.int64)
    x_label = ordered_x_label(pairs[:, 0], order, n_users, split)
    idx = np.lexsort((np.arange(pairs.shape[0]), np.asarray(order), pairs[:, 0]))
    return tuple(np.ascontiguousarray(pairs[idx][x_label[idx] == k]) for k in (0, 1, 2))
