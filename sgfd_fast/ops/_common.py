"""Argument checks shared by op files (each failure is one :class:`InputError` naming the op), and
the CSR transpose the sparse ops' backwards share.

Raw-buffer plumbing (dtype names, addresses, outputs) lives in :mod:`sgfd_fast._tensors`."""

from __future__ import annotations

import math
import numbers

import torch

from .._tensors import INDEX_NAMES
from ..errors import InputError


def check(condition: bool, op: str, message: str) -> None:
    """Raise one clear InputError naming the op when ``condition`` is false."""
    if not condition:
        raise InputError(f"sgfd_fast.ops.{op}: {message}")


def check_csr(op: str, rowptr: torch.Tensor, col: torch.Tensor, val: torch.Tensor | None,
              n_cols: int | None = None, validate_values: bool = False) -> None:
    """Shapes and dtypes of a CSR triple; ``validate_values`` also checks index ranges (one sync)."""
    check(rowptr.dim() == 1 and rowptr.numel() >= 1, op,
          f"rowptr must be 1-D with n_rows + 1 entries, got shape {tuple(rowptr.shape)}")
    check(col.dim() == 1, op, f"col must be 1-D, got shape {tuple(col.shape)}")
    check(rowptr.dtype in INDEX_NAMES and col.dtype == rowptr.dtype, op,
          f"rowptr and col must share an int32 or int64 dtype, got {rowptr.dtype} and {col.dtype}")
    check(rowptr.device == col.device, op, "rowptr and col must be on the same device")
    if val is not None:
        check(val.shape == col.shape, op,
              f"val must have one entry per column index: {tuple(val.shape)} vs {tuple(col.shape)}")
        check(val.device == col.device, op, "val must be on the same device as col")
    if validate_values:
        diffs = rowptr.diff()
        check(int(rowptr[0]) == 0 and int(rowptr[-1]) == col.numel(), op,
              f"rowptr must start at 0 and end at nnz={col.numel()}")
        check(bool((diffs >= 0).all()), op, "rowptr must be non-decreasing")
        if col.numel() and n_cols is not None:
            lo, hi = int(col.min()), int(col.max())
            check(lo >= 0 and hi < n_cols, op,
                  f"column indices must lie in [0, {n_cols}), found range [{lo}, {hi}]")


# The fused top-k kernels pack an item id into 32 bits of a 64-bit sort key.
MAX_TOPK_ITEMS = (1 << 32) - 1
_FLOAT32_MAX = 3.4028234663852886e38


def check_topk(op: str, n_items: int, k, mask_value, rowptr: torch.Tensor, col: torch.Tensor,
               validate: bool) -> float | None:
    """The arguments every full-ranking top-k op shares (``masked_topk``,
    ``attentive_distance_topk``): the item count, ``k``, ``mask_value`` (returned as a float, or
    None) and, with ``validate``, columns sorted ascending within each mask row."""
    check(n_items <= MAX_TOPK_ITEMS, op, f"at most 2^32 - 1 items can be ranked, got {n_items}")
    check(isinstance(k, int) and not isinstance(k, bool) and k >= 0, op,
          f"k must be a non-negative int, got {k!r}")
    if mask_value is not None:
        ok = isinstance(mask_value, numbers.Real) and not isinstance(mask_value, bool)
        check(ok and (math.isnan(mask_value) or math.isinf(mask_value)
                      or abs(mask_value) <= _FLOAT32_MAX), op,
              f"mask_value must be None or a number a float32 holds (|v| <= 3.4e38, inf or "
              f"nan), got {mask_value!r}")
        mask_value = float(mask_value)
    if validate and col.numel() > 1:
        step = col.diff()
        row_start = torch.zeros_like(step, dtype=torch.bool)
        starts = rowptr[1:-1].long()
        row_start[starts[(starts > 0) & (starts < col.numel())] - 1] = True
        check(bool(((step >= 0) | row_start).all()), op,
              "mask_col must be sorted ascending within each row (sort each user's items)")
    return mask_value


def csr_transpose(rowptr: torch.Tensor, col: torch.Tensor, n_cols: int):
    """(t_rowptr, t_col, t_perm) of Aᵀ: edge k of Aᵀ is edge t_perm[k] of A."""
    n_rows = rowptr.numel() - 1
    row = torch.repeat_interleave(torch.arange(n_rows, device=col.device, dtype=col.dtype),
                                  rowptr.diff().long(), output_size=col.numel())
    t_perm = torch.argsort(col, stable=True)  # stable: rows stay ascending inside each column
    counts = torch.bincount(col.long(), minlength=n_cols)
    t_rowptr = torch.zeros(n_cols + 1, dtype=rowptr.dtype, device=rowptr.device)
    t_rowptr[1:] = counts.cumsum(0)
    return t_rowptr, row[t_perm].contiguous(), t_perm
