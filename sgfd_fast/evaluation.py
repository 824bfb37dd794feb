"""Full-ranking evaluation: top-K per user with known items masked, then ranking metrics.

Two protocols (docs/DESIGN.md §3.6):

* ``standard``: users with >= 1 item in the split and >= 1 training item; the user's training
  items (and, for ``split="test"``, validation items) are excluded from the ranking; per-user
  Recall, NDCG (ideal DCG over ``min(|truth|, K)`` positions), Precision, MAP (normalised by
  ``min(|truth|, K)``) and Hit, averaged over users.
* ``legacy``: the released code's choices (docs/RELEASED_CODE.md §4.6-4.7, §5.5, §6.3):
  validation = test; BM3 reports micro-averaged Recall (all hits / all test pairs) and ``ndcg2_``
  (IDCG from the hits in the first K-1 positions, DCG over the whole top-``max(topk)`` list;
  the released config uses ``topk: [10, 20]``), Hit = any hit in the first 20 positions for every
  K; GRCN/MAML report per-user Recall and NDCG normalised by the number of hits, and GRCN scores
  training items 1e-5 instead of excluding them. A model declares which it follows in its class
  attributes ``legacy_metrics`` (:data:`LEGACY_METRICS`: ``mmrec`` for BM3's, the default;
  ``hit_normalized`` for GRCN/MAML's) and ``legacy_mask_value``.

Everything runs as batched tensor code on the model's device: never a per-user Python loop, never
the full users x items score matrix. :func:`top_k_items` ranks (evaluation and ``api.recommend``
share it): dot-product models with ``ops.masked_topk`` and models with a fused ranking op through
``ranking_topk`` (MAML: ``ops.attentive_distance_topk``), neither with a score block; other models
score ``eval_batch_size`` users at a time via ``score_users``.

One ranking rule on every path (``ops.masked_topk``'s contract): higher scores first, ties to the
lower item id; a NaN score counts as -inf, and an item scoring -inf (or NaN, or masked out) is never
returned, so a user's trailing slots hold index -1 / value -inf when fewer than k items remain.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import ops
from .choices import METRICS, PROTOCOLS
from .errors import ConfigError, DataError, InputError
from .graph import CSR

__all__ = ["ranking_metrics", "evaluate", "top_k_items", "METRICS", "LEGACY_HIT_DEPTH",
           "LEGACY_METRICS"]

#: the ``protocol: legacy`` metric definitions a model may declare (``Recommender.legacy_metrics``)
LEGACY_METRICS = ("mmrec", "hit_normalized")

# the released BM3 ``hk_`` looks at the first 20 positions whatever K is
LEGACY_HIT_DEPTH = 20


def _hit_matrix(topk: torch.Tensor, truth_rowptr: torch.Tensor,
                truth_items: torch.Tensor) -> torch.Tensor:
    """(U, L) bool: whether ``topk[u, j]`` is one of user u's truth items (-1 slots never hit)."""
    n_users, _ = topk.shape
    counts = truth_rowptr.diff()
    width = int(max(int(topk.max()) if topk.numel() else 0,
                    int(truth_items.max()) if truth_items.numel() else 0)) + 1
    rows = torch.repeat_interleave(torch.arange(n_users, device=topk.device), counts)
    keys = torch.sort(rows * width + truth_items).values
    query = torch.arange(n_users, device=topk.device)[:, None] * width + topk
    if keys.numel() == 0:
        return torch.zeros_like(topk, dtype=torch.bool)
    pos = torch.searchsorted(keys, query).clamp_(max=keys.numel() - 1)
    return (keys[pos] == query) & (topk >= 0)


def ranking_metrics(topk_indices: torch.Tensor, truth_rowptr: torch.Tensor,
                    truth_items: torch.Tensor, ks, protocol: str = "standard",
                    legacy_metrics: str = "mmrec") -> dict[str, float]:
    """Ranking metrics from top-L lists and the users' held-out items.

    Args:
        topk_indices: (U, L) int64 ranked item ids per evaluated user, best first; -1 marks an
            empty slot (fewer than L rankable items). L >= max(ks).
        truth_rowptr: (U + 1,) int64 offsets into ``truth_items``; every user needs >= 1 item.
        truth_items: (nnz,) int64 held-out item ids, grouped per user (any order within a user).
        ks: cut-offs, e.g. [10, 20, 50].
        protocol: ``"standard"`` or ``"legacy"``; legacy_metrics: under legacy, ``"mmrec"``
            selects the MMRec/BM3 definitions, ``"hit_normalized"`` GRCN/MAML's hit-normalised
            NDCG (a model's ``legacy_metrics`` attribute).

    Returns:
        ``{"recall@k", "ndcg@k", "precision@k", "map@k", "hit@k"}`` for every k, as floats.
    """
    return {name: float(num / den) for name, (num, den) in _metric_sums(
        topk_indices, truth_rowptr, truth_items, ks, protocol, legacy_metrics).items()}


def _metric_sums(topk_indices, truth_rowptr, truth_items, ks, protocol, legacy_metrics):
    """Per metric ``(numerator, denominator)`` (a sum over users and the user count; legacy BM3
    recall: all hits and all truth pairs), so that shards of the users add up exactly."""
    ks = [int(k) for k in ks]
    if topk_indices.dim() != 2:
        raise InputError(f"ranking_metrics: topk_indices must be (U, L), got "
                         f"{tuple(topk_indices.shape)}")
    n_users, depth = topk_indices.shape
    if not ks or min(ks) < 1 or max(ks) > depth:
        raise InputError(f"ranking_metrics: every k must lie in [1, {depth}] (the top-L width), "
                         f"got {ks}")
    if truth_rowptr.numel() != n_users + 1:
        raise InputError(f"ranking_metrics: truth_rowptr must have {n_users + 1} entries, got "
                         f"{truth_rowptr.numel()}")
    if protocol not in PROTOCOLS:
        raise InputError(f"ranking_metrics: protocol must be one of {', '.join(PROTOCOLS)}, got "
                         f"{protocol!r}")
    if legacy_metrics not in LEGACY_METRICS:
        raise InputError(f"ranking_metrics: legacy_metrics must be one of "
                         f"{', '.join(LEGACY_METRICS)}, got {legacy_metrics!r}")
    if n_users == 0:
        raise InputError("ranking_metrics: no users to evaluate")
    n_truth = truth_rowptr.diff().to(torch.float64)
    if bool((n_truth < 1).any()):
        raise InputError("ranking_metrics: every evaluated user needs at least one truth item")

    dev = topk_indices.device
    hits = _hit_matrix(topk_indices, truth_rowptr.to(dev), truth_items.to(dev)).to(torch.float64)
    cum = hits.cumsum(1)                                              # hits within the first j+1
    positions = torch.arange(1, depth + 1, device=dev, dtype=torch.float64)
    disc = 1.0 / torch.log(positions + 1)                             # 1/ln(j+2); ratios = log2's
    dcg = (hits * disc).cumsum(1)
    idcg = disc.cumsum(0)
    ap = (cum / positions * hits).cumsum(1)
    legacy_bm3 = protocol == "legacy" and legacy_metrics == "mmrec"
    legacy_hitnorm = protocol == "legacy" and not legacy_bm3

    n = float(n_users)
    out = {}
    for k in ks:
        h = cum[:, k - 1]
        at_most_k = n_truth.clamp(max=k)
        if legacy_bm3:
            recall = (h.sum(), n_truth.sum())                            # micro: all hits / pairs
            h_prev = cum[:, k - 2] if k >= 2 else torch.zeros_like(h)   # hits in first k-1
            ideal = idcg[(h_prev - 1).clamp(min=0).long()]
            ndcg = torch.where(h_prev > 0, dcg[:, -1] / ideal, 0.0)     # DCG over the full list
            hit = (cum[:, min(LEGACY_HIT_DEPTH, depth) - 1] > 0).to(torch.float64)
        elif legacy_hitnorm:
            recall = h / n_truth
            ideal = idcg[(h - 1).clamp(min=0).long()]
            ndcg = torch.where(h > 0, dcg[:, k - 1] / ideal, 0.0)
            hit = (h > 0).to(torch.float64)
        else:
            recall = h / n_truth
            ndcg = dcg[:, k - 1] / idcg[at_most_k.long() - 1]
            hit = (h > 0).to(torch.float64)
        out[f"recall@{k}"] = recall if legacy_bm3 else (recall.sum(), n)
        out[f"ndcg@{k}"] = (ndcg.sum(), n)
        out[f"precision@{k}"] = ((h / k).sum(), n)
        out[f"map@{k}"] = ((ap[:, k - 1] / at_most_k).sum(), n)
        out[f"hit@{k}"] = (hit.sum(), n)
    return {key: (float(num), float(den)) for key, (num, den) in out.items()}


# ----------------------------------------------------------------------------------------------
# top-K with masking
# ----------------------------------------------------------------------------------------------


def _masked_topk_dense(scores: torch.Tensor, mask_rowptr: torch.Tensor, mask_col: torch.Tensor,
                       k: int, mask_value: float | None):
    """Top-k of a dense (U, n_items) score block with each row's masked items excluded (or set to
    ``mask_value``), by the module's ranking rule: ties go to the lower item id, NaN counts as
    -inf and -inf is never returned; missing slots are (-inf, -1).

    ``torch.topk`` breaks ties arbitrarily, so it only gives the k-th value t: the result is every
    item scoring above t plus the lowest-id items scoring exactly t, ordered by a stable sort of
    the (U, k) block (linear passes over the scores; no full sort of the catalogue).
    """
    n_rows, n_items = scores.shape
    dev = scores.device
    rows = torch.repeat_interleave(torch.arange(n_rows, device=dev), mask_rowptr.diff())
    # torch.topk ranks NaN above everything: a NaN k-th value would select nothing
    scores = torch.where(scores.isnan(), -math.inf, scores)
    scores[rows, mask_col] = -math.inf if mask_value is None else mask_value
    available = scores > -math.inf
    kk = min(k, n_items)
    indices = torch.full((n_rows, k), -1, dtype=torch.long, device=dev)
    values = torch.full((n_rows, k), -math.inf, dtype=scores.dtype, device=dev)
    if kk == 0 or n_rows == 0:
        return values, indices
    kth = torch.topk(scores, kk, dim=1).values[:, -1:]
    above = (scores > kth) & available
    tie = (scores == kth) & available
    need = kk - above.sum(1, keepdim=True)
    chosen = above | tie
    crowded = (tie.sum(1, keepdim=True) > need).squeeze(1)  # more items tie at t than fit
    if bool(crowded.any()):
        sub = tie[crowded]
        chosen[crowded] = above[crowded] | (sub & (sub.cumsum(1) <= need[crowded]))
    r, c = chosen.nonzero(as_tuple=True)                     # row-major: ids ascending per row
    starts = torch.zeros(n_rows + 1, dtype=torch.long, device=dev)
    starts[1:] = chosen.sum(1).cumsum(0)
    slot = torch.arange(r.numel(), device=dev) - starts[r]
    indices[r, slot] = c
    values[r, slot] = scores[r, c]
    # stable: among equal scores the lower id (earlier slot) stays first; empty slots stay last
    values, order = torch.sort(values, dim=1, descending=True, stable=True)
    return values, indices.gather(1, order)


def top_k_items(model, users: torch.Tensor, mask: CSR, k: int, batch_size: int,
                mask_value: float | None = None):
    """The k best items of each user, ``batch_size`` users at a time, by the module's ranking rule.

    Args:
        model: a :class:`~sgfd_fast.models.Recommender` (put it in eval mode first).
        users: (U,) int64 internal user ids on the model's device.
        mask: a :class:`~sgfd_fast.graph.CSR` over all users (``n_users`` rows) of the items to
            exclude per user (or score ``mask_value``), columns ascending within a row.
        k: items per user; batch_size: users ranked at once (memory: dot-product models never
            form a score block; ``score_users`` models form one (batch_size, n_items) block).
    Returns:
        ``(values, indices)``: (U, k) float32 scores and int64 item ids, best first, (-inf, -1)
        in slots beyond the rankable items.
    """
    values, indices = [], []
    with torch.no_grad():
        emb = model.ranking_embeddings()
        for start in range(0, users.numel(), batch_size):
            b = users[start:start + batch_size]
            m = mask.select_rows(b)
            if emb is not None:   # the (batch x n_items) score block never exists
                v, i = ops.masked_topk(emb[0][b], emb[1], m.rowptr, m.col, k, mask_value,
                                       validate=False)
            elif (fused := model.ranking_topk(b, m.rowptr, m.col, k, mask_value)) is not None:
                v, i = fused      # nor here (e.g. MAML's attentive_distance_topk)
            else:
                v, i = _masked_topk_dense(model.score_users(b), m.rowptr, m.col, k, mask_value)
            values.append(v.float())
            indices.append(i)
    if not indices:
        return (torch.empty(0, k, device=users.device),
                torch.empty(0, k, dtype=torch.long, device=users.device))
    return torch.cat(values), torch.cat(indices)


def evaluate(model, dataset, split: str, config: dict, *, shard: tuple[int, int] = (0, 1),
             reduce=None) -> dict[str, float]:
    """Rank all items for the split's users and return the metrics (keys ``"recall@20"``, ...).

    Args:
        model: a :class:`~sgfd_fast.models.Recommender`; evaluated in eval mode, restored after.
        dataset: the :class:`~sgfd_fast.data.Dataset` it was trained on.
        split: ``"valid"`` or ``"test"`` (legacy protocol: both mean test).
        config: a resolved config (checked by :func:`sgfd_fast.config.load_config`); reads
            ``topk``, ``eval_batch_size`` and ``protocol``. The legacy metric definitions are the
            model's ``legacy_metrics``.
        shard: ``(rank, world)``: rank only the rank-th of ``world`` contiguous shares of the
            evaluated users (several processes, ``sgfd_fast.training.distributed``).
        reduce: with ``shard``, a function that sums a float64 vector over the processes
            (every metric's sum over users and user count are added, never averages).
    """
    ks, batch, protocol = config["topk"], config["eval_batch_size"], config["protocol"]
    if split not in ("valid", "test"):
        raise ConfigError(f"evaluation: split must be 'valid' or 'test', got {split!r}")
    if protocol == "legacy":
        split = "test"
    truth = dataset.test if split == "test" else dataset.valid
    if truth.shape[0] == 0:
        raise DataError(f"dataset {dataset.name!r} has no {split} interactions to evaluate"
                        + ("" if split == "test" else " (give it a validation split: a valid "
                           "file, or valid_ratio > 0 when loading it)"))
    known = dataset.train
    if split == "test" and dataset.valid.shape[0]:
        known = np.concatenate([known, dataset.valid])

    has_train = np.bincount(dataset.train[:, 0], minlength=dataset.n_users) > 0
    users = np.unique(truth[:, 0])
    users = users[has_train[users]]
    if users.size == 0:
        raise DataError(f"dataset {dataset.name!r}: no {split} user has a training interaction")
    # user -> item sets: a repeated pair (possible in a Dataset built by hand) counts once
    truth_csr, known_csr = (
        CSR.from_coo(p[:, 0], p[:, 1], None, dataset.n_users, dataset.n_items,
                     duplicates="drop").to(model.device) for p in (truth, known))
    rank, world = shard
    users = users[users.size * rank // world:users.size * (rank + 1) // world]
    users_t = torch.from_numpy(users).to(model.device)
    truth_csr = truth_csr.select_rows(users_t)
    depth = max(ks)
    mask_value = model.legacy_mask_value if protocol == "legacy" else None

    names = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg", "precision", "map", "hit")]
    sums = dict.fromkeys(names, (0.0, 0.0))   # a share without users adds nothing
    # a model split across processes (models.split) computes its ranking embeddings together
    # with the other ranks: a rank without users joins that forward all the same
    if users.size or getattr(model, "split", None) is not None:
        was_training = model.training
        model.eval()
        try:
            top = top_k_items(model, users_t, known_csr, depth, batch, mask_value)[1]
        finally:
            model.train(was_training)
    if users.size:
        sums = _metric_sums(top, truth_csr.rowptr, truth_csr.col, ks, protocol,
                            model.legacy_metrics)
    if reduce is not None:
        total = reduce(torch.tensor([sums[n] for n in names], dtype=torch.float64))
        sums = dict(zip(names, total.tolist()))
    return {n: num / den for n, (num, den) in sums.items()}
