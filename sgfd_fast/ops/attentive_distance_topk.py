"""attentive_distance_topk: full-ranking top-k by MAML's attentive distance, training items masked,
without a users × items score matrix (or a users × items × hidden tensor).

For user row u, item row v_i and item-feature row f_i (all width D), with the attention MLP
W1 (H, 3D), b1 (H,), W2 (D, H), b2 (D,) (MAML, Liu et al. MM 2019; the released ``MAML/MAML.py``)::

    t       = tanh(W1 · l2n([u; v_i; f_i]) + b1)                         (H,)
    a       = D * softmax(relu(W2 · l2n(t) + b2))                        (D,)
    d(u, i) = sum_k (a_k u_k - a_k v_ik)^2,        score[u, i] = -d(u, i)
    l2n(x)  = x / max(||x||, 1e-12)

masked items (row u of the mask CSR) are excluded (``mask_value=None``) or scored ``mask_value``;
values[u], indices[u] = the k best (score, item) pairs of user u, best first.

The first layer is split by blocks of W1 = [W_u | W_v | W_f]: ``W1 · l2n([u; v; f]) = (P_u + Q_i)
/ sqrt(|u|^2 + |v_i|^2 + |f_i|^2)`` with ``P = users W_u^T`` (U, H) and ``Q = items W_v^T +
item_features W_f^T`` (I, H), computed once per call with torch (O((U + I) D H)); every backend
then works per (user, item) pair on P_u + Q_i, so no concatenation is ever built. Per pair the
cost is H tanh and a H × D product: ``2 H D`` flops, the op's floor (MAML: H = 5D).

Shapes: users (U, D), items (I, D), item_features (I, D), w1 (H, 3D), b1 (H,), w2 (D, H), b2
(D,) sharing float32 or float64; mask_rowptr (U + 1,), mask_col (nnz,) sharing int32 or int64,
columns sorted ascending within each row. Returns values (U, k) float32 and indices (U, k) int64.

Contract (every backend; ``masked_topk``'s): scores are computed in the input dtype and ranked as
float32; ties go to the lower item id; an excluded item, and any score of -inf or NaN, is absent;
when fewer than k candidates remain, the trailing slots hold index -1 and value -inf. Not
differentiable. Backends agree with the reference up to float rounding of the scores (their tanh
and exp are vectorised polynomial forms, accurate to a few ulp).

Backends: reference (the scores in blocks of users, then a stable descending sort); cpp (OpenMP
over users; per user, items in tiles of 32 pairs: tanh of the pair's hidden row into an L1/L2
tile, a register-blocked tile × W2^T product, the softmax-weighted distance, a top-k buffer;
bitwise reproducible); triton (one program per user: item tiles, the hidden axis in chunks through
``tl.dot`` with W2^T, the running top-k kept on chip and merged like ``masked_topk``'s kernel;
k > 64 or d > 128 (float64: 32, 64) go to the reference, where the kernel's registers would spill).
``precision="bf16"`` (and ``"auto"`` where k <= items / 10): the cpp backend ranks through an exact
bf16 filter on CPUs with AVX512-BF16 (the second layer's product in bf16 brackets each distance;
the fp32 path's own code re-scores the few candidates; ``ops._bf16_filter``, last section); every
other backend and CPU computes the fp32 path, the same result.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _backend, _ext
from .._tensors import FLOAT_NAMES, INDEX_NAMES, dense, new_output
from . import _bf16_filter
from ._common import check, check_csr, check_topk
from .masked_topk import PRECISIONS

__all__ = ["attentive_distance_topk", "attentive_distance_topk_reference"]

# elements of one (users x items x H) block in the reference (float32: 16 MiB)
_REFERENCE_BLOCK = 1 << 22


def _projections(users, items, item_features, w1):
    """``(P (U, H), Q (I, H), |u|^2 (U,), |v|^2 + |f|^2 (I,))``: the first layer split by input."""
    w_u, w_v, w_f = w1.split(users.shape[1], dim=1)
    return (users @ w_u.T, items @ w_v.T + item_features @ w_f.T, users.pow(2).sum(1),
            items.pow(2).sum(1) + item_features.pow(2).sum(1))


def _rank(scores, mask_rowptr, mask_col, k, mask_value):
    """masked_topk's ranking of a dense (U, I) float32 score block."""
    n_users, n_items = scores.shape
    row = torch.repeat_interleave(torch.arange(n_users, device=scores.device),
                                  mask_rowptr.diff().long(), output_size=mask_col.numel())
    scores[row, mask_col.long()] = float("-inf") if mask_value is None else float(mask_value)
    scores = torch.where(scores.isnan(), float("-inf"), scores)
    # A stable descending sort keeps equal scores in ascending item order: lower id first.
    values, indices = torch.sort(scores, dim=1, descending=True, stable=True)
    values, indices = values[:, :k].contiguous(), indices[:, :k].contiguous()
    if k > n_items:
        values = torch.cat([values, values.new_full((n_users, k - n_items), float("-inf"))], 1)
        indices = torch.cat([indices, indices.new_full((n_users, k - n_items), -1)], 1)
    return values, torch.where(values == float("-inf"), -1, indices)


def attentive_distance_topk_reference(users, items, item_features, w1, b1, w2, b2, mask_rowptr,
                                      mask_col, k: int, mask_value: Optional[float] = None,
                                      precision: str = "fp32"):
    # every precision returns the fp32 path's result, which this is up to float rounding
    n_users, n_items = users.shape[0], items.shape[0]
    p, q, user_sq, item_sq = _projections(users, items, item_features, w1)
    scores = torch.empty(n_users, n_items, dtype=torch.float32, device=users.device)
    step = max(1, _REFERENCE_BLOCK // max(1, n_items * w1.shape[0]))
    for s in range(0, n_users, step):
        sl = slice(s, s + step)
        norm = (user_sq[sl, None] + item_sq[None]).sqrt().clamp(min=1e-12)
        t = torch.tanh((p[sl, None] + q[None]) / norm.unsqueeze(-1) + b1)
        a = torch.relu(torch.nn.functional.normalize(t, dim=-1) @ w2.T + b2)
        a = a.shape[-1] * torch.softmax(a, dim=-1)
        scores[sl] = -(a * users[sl, None] - a * items[None]).pow(2).sum(-1)
    return _rank(scores, mask_rowptr, mask_col, k, mask_value)


@torch.library.custom_op("sgfd_fast::attentive_distance_topk", mutates_args=())
def _attentive_distance_topk(users: torch.Tensor, items: torch.Tensor,
                             item_features: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor,
                             w2: torch.Tensor, b2: torch.Tensor, mask_rowptr: torch.Tensor,
                             mask_col: torch.Tensor, k: int, mask_value: Optional[float],
                             precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    return attentive_distance_topk_reference(users, items, item_features, w1, b1, w2, b2,
                                             mask_rowptr, mask_col, k, mask_value)


@_attentive_distance_topk.register_fake
def _attentive_distance_topk_fake(users, items, item_features, w1, b1, w2, b2, mask_rowptr,
                                  mask_col, k, mask_value, precision="fp32"):
    return (users.new_empty(users.shape[0], k, dtype=torch.float32),
            users.new_empty(users.shape[0], k, dtype=torch.int64))


def _cpp_call(users, items, item_features, w1, b1, w2, b2, mask_rowptr, mask_col, k, mask_value,
              precision):
    """The C++ kernel: ``(values, indices, rescored)``, ``rescored`` the (user, item) pairs the
    bf16 filter re-scored in fp32, -1 where the fp32 path served (``ops._bf16_filter``)."""
    users, items = dense(users), dense(items)
    p, q, user_sq, item_sq = (dense(x) for x in _projections(users, items, item_features, w1))
    b1, w2t, b2 = dense(b1), w2.T.contiguous(), dense(b2)
    values = new_output(users.shape[0], k, like=users, dtype=torch.float32)
    indices = new_output(users.shape[0], k, like=users, dtype=torch.int64)
    rescored = _ext.cpu.attentive_distance_topk(
        users=users.data_ptr(), items=items.data_ptr(), p=p.data_ptr(), q=q.data_ptr(),
        user_sq=user_sq.data_ptr(), item_sq=item_sq.data_ptr(), b1=b1.data_ptr(),
        w2t=w2t.data_ptr(), b2=b2.data_ptr(), rowptr=mask_rowptr.data_ptr(),
        col=mask_col.data_ptr(), n_users=users.shape[0], n_items=items.shape[0],
        d=users.shape[1], hidden=w1.shape[0], k=k, has_mask_value=mask_value is not None,
        mask_value=0.0 if mask_value is None else float(mask_value),
        out_values=values.data_ptr(), out_indices=indices.data_ptr(),
        index_dtype=INDEX_NAMES[mask_rowptr.dtype], dtype=FLOAT_NAMES[users.dtype],
        precision=precision)
    return values, indices, rescored


def _attentive_distance_topk_cpp(users, items, item_features, w1, b1, w2, b2, mask_rowptr,
                                 mask_col, k, mask_value, precision="fp32"):
    return _cpp_call(users, items, item_features, w1, b1, w2, b2, mask_rowptr, mask_col, k,
                     mask_value, precision)[:2]


def _attentive_distance_topk_triton(users, items, item_features, w1, b1, w2, b2, mask_rowptr,
                                    mask_col, k, mask_value, precision="fp32"):
    from ..kernels import attentive_distance_topk as kernel

    fp64 = users.dtype == torch.float64
    if (k > (kernel.MAX_K_FP64 if fp64 else kernel.MAX_K)
            or users.shape[1] > (kernel.MAX_D_FP64 if fp64 else kernel.MAX_D)):
        # the kernel's registers would spill
        return attentive_distance_topk_reference(users, items, item_features, w1, b1, w2, b2,
                                                 mask_rowptr, mask_col, k, mask_value)
    users, items = dense(users), dense(items)
    p, q, user_sq, item_sq = (dense(x) for x in _projections(users, items, item_features, w1))
    return kernel.attentive_distance_topk_triton(users, items, p, q, user_sq, item_sq, dense(b1),
                                          w2.T.contiguous(), dense(b2), mask_rowptr, mask_col,
                                          k, mask_value)


_backend.define("attentive_distance_topk", _attentive_distance_topk,
                attentive_distance_topk_reference)
_backend.register("attentive_distance_topk", "cpu", "cpp", _attentive_distance_topk_cpp)
_backend.register("attentive_distance_topk", "cuda", "triton", _attentive_distance_topk_triton)
_backend.register("attentive_distance_topk", "cpu", "triton", _attentive_distance_topk_triton)


def attentive_distance_topk(users: torch.Tensor, items: torch.Tensor, item_features: torch.Tensor,
                            w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                            mask_rowptr: torch.Tensor, mask_col: torch.Tensor, k: int,
                            mask_value: Optional[float] = None, *, validate: bool = True,
                            precision: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k items per user by MAML's attentive distance (score ``-d(u, i)``), mask applied.

    Args:
        users: (U, D) float32/float64 user embeddings (the rows to rank for).
        items: (I, D) item embeddings; item_features: (I, D) item feature projections.
        w1, b1: (H, 3D), (H,) first attention layer (input ``[u; v; f]``).
        w2, b2: (D, H), (D,) second attention layer (its width is the embedding width D).
        mask_rowptr: (U + 1,) int32/int64 row offsets of the mask (e.g. training interactions).
        mask_col: (nnz,) item ids, same dtype, sorted ascending within each row.
        k: number of items to return per user (may exceed the number of candidates).
        mask_value: None excludes masked items; a float gives them that score instead.
        validate: check index ranges and per-row sortedness (one pass and a host sync).
        precision: how the result is computed, never what it is: ``"fp32"`` scores every pair
            in the input dtype; ``"bf16"`` ranks through a bf16 filter whose result is the fp32
            path's, ids and scores bit for bit (``ops._bf16_filter``: the C++ backend on a CPU
            with AVX512-BF16, float32 inputs; elsewhere the fp32 path runs); ``"auto"`` (default)
            is ``"bf16"`` where k <= items / 10, else ``"fp32"``.

    Returns:
        ``(values, indices)``: (U, k) float32 scores ``-d`` and (U, k) int64 item ids, best
        first, ties to the lower id, index -1 / value -inf where fewer than k candidates exist.

    Raises:
        InputError: wrong ranks, shapes, dtypes or devices; a malformed or unsorted mask; k not
            a non-negative int; mask_value not a number a float32 holds; more than 2^32 - 1
            items; precision not auto, fp32 or bf16.
    """
    op = "attentive_distance_topk"
    tensors = {"users": users, "items": items, "item_features": item_features, "w1": w1,
               "b1": b1, "w2": w2, "b2": b2}
    for name, t in tensors.items():
        check(t.dtype in FLOAT_NAMES and t.dtype == users.dtype, op,
              f"{name} must be float32 or float64"
              + (f" like users ({users.dtype})" if t is not users else "") + f", got {t.dtype}")
        check(t.device == users.device, op, f"{name} must be on {users.device}, got {t.device}")
    check(users.dim() == 2 and items.dim() == 2 and item_features.dim() == 2, op,
          f"users, items and item_features must be 2-D, got {tuple(users.shape)}, "
          f"{tuple(items.shape)} and {tuple(item_features.shape)}")
    d = users.shape[1]
    check(items.shape[1] == d and item_features.shape == items.shape, op,
          f"items and item_features must be (I, {d}) like users' width, got "
          f"{tuple(items.shape)} and {tuple(item_features.shape)}")
    check(w1.dim() == 2 and w1.shape[1] == 3 * d and w1.shape[0] >= 1, op,
          f"w1 must be (H, 3D) = (H, {3 * d}), got {tuple(w1.shape)}")
    hidden = w1.shape[0]
    check(tuple(b1.shape) == (hidden,) and tuple(w2.shape) == (d, hidden)
          and tuple(b2.shape) == (d,), op,
          f"b1, w2, b2 must be ({hidden},), ({d}, {hidden}), ({d},), got {tuple(b1.shape)}, "
          f"{tuple(w2.shape)}, {tuple(b2.shape)}")
    check(mask_rowptr.device == users.device, op, "the mask must be on the same device as users")
    check_csr(op, mask_rowptr, mask_col, None, items.shape[0], validate_values=validate)
    check(mask_rowptr.numel() == users.shape[0] + 1, op,
          f"mask_rowptr must have U + 1 = {users.shape[0] + 1} entries, got {mask_rowptr.numel()}")
    mask_value = check_topk(op, items.shape[0], k, mask_value, mask_rowptr, mask_col, validate)
    check(precision in PRECISIONS, op,
          f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        precision = "bf16" if _bf16_filter.pays(items.shape[0], k) else "fp32"
    return _attentive_distance_topk(users, items, item_features, w1, b1, w2, b2,
                                    mask_rowptr.contiguous(), mask_col.contiguous(), k,
                                    mask_value, precision)
