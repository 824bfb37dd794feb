"""masked_topk: full-ranking top-k per user with training items masked, without a score matrix.

    scores[u, i] = users[u] · items[i]
    masked items (those listed in row u of the mask CSR) are excluded (``mask_value=None``) or
    scored ``mask_value`` (the legacy GRCN protocol uses 1e-5, so they can still be ranked)
    values[u], indices[u] = the k best (score, item) pairs of user u, best first

Shapes: users (U, d), items (I, d) sharing float32 or float64; mask_rowptr (U + 1,), mask_col
(nnz,) sharing int32 or int64, column indices sorted ascending within each row. Returns values
(U, k) float32 and indices (U, k) int64.

Contract (every backend): scores are computed in the input dtype and ranked as float32 (the
values returned; -0.0 and +0.0 are one score, returned as either); ties are broken by the lower
item id; an excluded item, and any score of -inf
or NaN (NaN counts as -inf), is absent and never displaces a valid item; when fewer than k
candidates remain, the trailing slots hold index -1 and value -inf. Every ranking path of the
package follows this rule (``evaluation.top_k_items``, ``api.TrainedModel.recommend``). Not
differentiable (indices are discrete; use the scores themselves for training).

Backends: reference (dense scores, mask, stable descending sort: the tie rule made exact), cpp
(OpenMP over user blocks, register-blocked score tiles, per user a buffer of candidates above the
k-th best so far, cut back to k by selection on (score, id) packed into one integer; the U×I score
matrix never exists, and the C++ kernel is bitwise reproducible), triton (tiles of users × items
with ``tl.dot``; a running top-k per user kept on chip, merged tile by tile with bitonic sorts on
packed (score, id) keys; 16 users per program; k > 256 or d > 128 (float64: 64, 64) go to the
reference, where the kernel's registers would spill). ``precision="bf16"`` (and ``"auto"`` where
it pays): the cpp backend ranks through an exact bf16 filter on CPUs with AVX512-BF16
(``ops._bf16_filter``); every other backend and CPU computes the fp32 path, the same result.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _backend, _ext
from .._tensors import FLOAT_NAMES, INDEX_NAMES, dense, new_output
from . import _bf16_filter
from ._common import check, check_csr, check_topk

__all__ = ["masked_topk", "masked_topk_reference", "PRECISIONS"]

PRECISIONS = ("auto", "fp32", "bf16")


def masked_topk_reference(users: torch.Tensor, items: torch.Tensor, mask_rowptr: torch.Tensor,
                          mask_col: torch.Tensor, k: int, mask_value: Optional[float] = None,
                          precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    # every precision returns the fp32 path's result, which this is
    n_users, n_items = users.shape[0], items.shape[0]
    scores = (users @ items.T).float()
    row = torch.repeat_interleave(torch.arange(n_users, device=users.device),
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


@torch.library.custom_op("sgfd_fast::masked_topk", mutates_args=())
def _masked_topk(users: torch.Tensor, items: torch.Tensor, mask_rowptr: torch.Tensor,
                 mask_col: torch.Tensor, k: int, mask_value: Optional[float],
                 precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    return masked_topk_reference(users, items, mask_rowptr, mask_col, k, mask_value)


@_masked_topk.register_fake
def _masked_topk_fake(users, items, mask_rowptr, mask_col, k, mask_value, precision="fp32"):
    return (users.new_empty(users.shape[0], k, dtype=torch.float32),
            users.new_empty(users.shape[0], k, dtype=torch.int64))


def _cpp_call(users, items, mask_rowptr, mask_col, k, mask_value, precision):
    """The C++ kernel: ``(values, indices, rescored)``, ``rescored`` the (user, item) pairs the
    bf16 filter re-scored in fp32, -1 where the fp32 path served (``ops._bf16_filter``)."""
    users, items = dense(users), dense(items)
    values = new_output(users.shape[0], k, like=users, dtype=torch.float32)
    indices = new_output(users.shape[0], k, like=users, dtype=torch.int64)
    rescored = _ext.cpu.masked_topk(users=users.data_ptr(), items=items.data_ptr(),
                         rowptr=mask_rowptr.data_ptr(), col=mask_col.data_ptr(),
                         n_users=users.shape[0], n_items=items.shape[0], d=users.shape[1], k=k,
                         has_mask_value=mask_value is not None,
                         mask_value=0.0 if mask_value is None else float(mask_value),
                         out_values=values.data_ptr(), out_indices=indices.data_ptr(),
                         index_dtype=INDEX_NAMES[mask_rowptr.dtype],
                         dtype=FLOAT_NAMES[users.dtype], precision=precision)
    return values, indices, rescored


def _masked_topk_cpp(users, items, mask_rowptr, mask_col, k, mask_value, precision="fp32"):
    return _cpp_call(users, items, mask_rowptr, mask_col, k, mask_value, precision)[:2]


def _masked_topk_triton(users, items, mask_rowptr, mask_col, k, mask_value, precision="fp32"):
    from ..kernels import masked_topk as kernel

    fp64 = users.dtype == torch.float64
    if (k > (kernel.MAX_K_FP64 if fp64 else kernel.MAX_K)
            or users.shape[1] > (kernel.MAX_D_FP64 if fp64 else kernel.MAX_D)):
        # the kernel's registers would spill
        return masked_topk_reference(users, items, mask_rowptr, mask_col, k, mask_value)
    return kernel.masked_topk_triton(dense(users), dense(items), mask_rowptr, mask_col, k,
                                     mask_value)


_backend.define("masked_topk", _masked_topk, masked_topk_reference)
_backend.register("masked_topk", "cpu", "cpp", _masked_topk_cpp)
_backend.register("masked_topk", "cuda", "triton", _masked_topk_triton)
_backend.register("masked_topk", "cpu", "triton", _masked_topk_triton)


def masked_topk(users: torch.Tensor, items: torch.Tensor, mask_rowptr: torch.Tensor,
                mask_col: torch.Tensor, k: int, mask_value: Optional[float] = None, *,
                validate: bool = True,
                precision: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k items per user by dot-product score, with each user's mask row excluded or re-scored.

    Args:
        users: (U, d) float32/float64 user representations.
        items: (I, d) item representations, same dtype and width.
        mask_rowptr: (U + 1,) int32/int64 row offsets of the mask (e.g. training interactions).
        mask_col: (nnz,) item ids, same dtype, sorted ascending within each row.
        k: number of items to return per user (may exceed the number of candidates).
        mask_value: None excludes masked items; a float gives them that score instead.
        validate: check index ranges and per-row sortedness (one pass and a host sync).
        precision: how the result is computed, never what it is: ``"fp32"`` scores every pair
            in the input dtype; ``"bf16"`` ranks through a bf16 filter whose result is the fp32
            path's, ids and scores bit for bit (``ops._bf16_filter``: the C++ backend on a CPU
            with AVX512-BF16, float32 inputs; elsewhere the fp32 path runs); ``"auto"`` (default)
            is ``"bf16"`` where k <= items / 10, the shapes where the filter measured faster
            (``ops._bf16_filter``, "Speed"), else ``"fp32"``.

    Returns:
        ``(values, indices)``: (U, k) float32 scores and (U, k) int64 item ids, best first, ties
        to the lower id, index -1 / value -inf where fewer than k candidates exist.

    Raises:
        InputError: wrong ranks, shapes, dtypes or devices; a malformed or unsorted mask; k not
            a non-negative int; mask_value not a number a float32 holds; more than 2^32 - 1
            items (the fused kernels pack an item id into 32 bits); precision not auto, fp32
            or bf16.
    """
    op = "masked_topk"
    check(users.dim() == 2 and items.dim() == 2, op,
          f"users and items must be 2-D, got {tuple(users.shape)} and {tuple(items.shape)}")
    check(users.dtype in FLOAT_NAMES and items.dtype == users.dtype, op,
          f"users and items must share float32 or float64, got {users.dtype} and {items.dtype}")
    check(users.shape[1] == items.shape[1], op,
          f"users and items must have the same width, got {users.shape[1]} and {items.shape[1]}")
    check(users.device == items.device == mask_rowptr.device, op,
          "users, items and the mask must be on the same device")
    check_csr(op, mask_rowptr, mask_col, None, items.shape[0], validate_values=validate)
    check(mask_rowptr.numel() == users.shape[0] + 1, op,
          f"mask_rowptr must have U + 1 = {users.shape[0] + 1} entries, got {mask_rowptr.numel()}")
    mask_value = check_topk(op, items.shape[0], k, mask_value, mask_rowptr, mask_col, validate)
    check(precision in PRECISIONS, op,
          f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        precision = "bf16" if _bf16_filter.pays(items.shape[0], k) else "fp32"
    return _masked_topk(users, items, mask_rowptr.contiguous(), mask_col.contiguous(), k,
                        mask_value, precision)
