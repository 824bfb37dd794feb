"""knn_graph: every item's k nearest items by cosine similarity of its feature rows, blockwise.

    u[i]         = x[i] / max(‖x[i]‖₂, 1e-12)              (F.normalize: a zero row stays zero)
    s[i, j]      = u[i] · u[j]                              (cosine similarity, i itself included)
    col[i], val[i] = the k best (s[i, j], j) pairs of row i, best first

This is the item–item graph FREEDOM, LATTICE and MGCN build from raw item features (MMRec's
``build_sim`` then ``torch.topk(sim, knn_k)``, ``knn_k = 10``): every row keeps exactly k
neighbours (rowptr is implicit, ``rowptr[i] = i·k``) and the item itself is one of them, as in
MMRec (its cosine of 1 is the row's best unless an identical row with a lower id ties with it).

Shapes: x (n, d) float32 or float64. Returns ``col`` (n, k) int64 and ``val`` (n, k) float32.

Contract (every backend, that of :mod:`~sgfd_fast.ops.masked_topk`): scores are computed in the
input dtype and ranked as float32 (the values returned; -0.0 and +0.0 are one score); ties go to
the lower id (MMRec's ``torch.topk`` leaves them unspecified); a score of NaN or -inf is absent;
slots beyond the candidates hold col -1 and val -inf (k > n, or a row of NaN). Deliberate
differences from MMRec, which divides by the norm unguarded: a zero row has cosine 0 with every
item (MMRec: NaN, which ``torch.topk`` ranks first, so every item would link to it); a
non-finite feature is refused (``validate``) rather than spreading NaN. The n×n score matrix
never exists. Not differentiable (indices are discrete): LATTICE's differentiable values on the
pattern are the same cosines gathered edge by edge, ``sddmm_csr(rowptr, col.view(-1), u, u)``
with ``u = F.normalize(x)`` and ``rowptr = arange(0, n·k + 1, k)`` (tested to equal ``val``).

Backends: reference (row blocks of scores, stable descending sort: the tie rule made exact),
cpp (the ``masked_topk`` kernel with an empty mask: register-blocked score tiles and
``topk_buffer.h``'s per-row candidate buffer), triton (tiles of rows × items with ``tl.dot``
over chunks of the width, a running top-k per row merged by bitonic networks; CUDA, and CPU
inside the interpreter). The C++ kernel is bitwise reproducible.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _backend, _ext
from .._tensors import FLOAT_NAMES, INDEX_NAMES, dense, new_output
from ._common import MAX_TOPK_ITEMS, check

__all__ = ["knn_graph", "knn_graph_reference"]

# Rows scored per block by the reference: a (block, n) float32 score slab, never n × n.
_REFERENCE_BLOCK = 1024


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, p=2.0, dim=1, eps=1e-12)


def knn_graph_reference(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = x.shape[0]
    u = _unit_rows(x)
    cols, vals = [], []
    for r0 in range(0, n, _REFERENCE_BLOCK):
        scores = (u[r0:r0 + _REFERENCE_BLOCK] @ u.T).float()
        scores = torch.where(scores.isnan(), float("-inf"), scores)
        # A stable descending sort keeps equal scores in ascending id order: lower id first.
        val, col = torch.sort(scores, dim=1, descending=True, stable=True)
        vals.append(val[:, :k])
        cols.append(col[:, :k])
    val = torch.cat(vals) if vals else x.new_empty(0, min(k, n), dtype=torch.float32)
    col = torch.cat(cols) if cols else x.new_empty(0, min(k, n), dtype=torch.int64)
    if k > n:
        val = torch.cat([val, val.new_full((n, k - n), float("-inf"))], 1)
        col = torch.cat([col, col.new_full((n, k - n), -1)], 1)
    return torch.where(val == float("-inf"), -1, col).contiguous(), val.contiguous()


@torch.library.custom_op("sgfd_fast::knn_graph", mutates_args=())
def _knn_graph(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return knn_graph_reference(x, k)


@_knn_graph.register_fake
def _knn_graph_fake(x, k):
    return (x.new_empty(x.shape[0], k, dtype=torch.int64),
            x.new_empty(x.shape[0], k, dtype=torch.float32))


def _knn_graph_cpp(x, k):
    u = dense(_unit_rows(x))
    n = u.shape[0]
    val = new_output(n, k, like=u, dtype=torch.float32)
    col = new_output(n, k, like=u, dtype=torch.int64)
    no_mask = torch.zeros(n + 1, dtype=torch.int64)  # masked_topk with nothing masked
    _ext.cpu.masked_topk(users=u.data_ptr(), items=u.data_ptr(), rowptr=no_mask.data_ptr(),
                         col=no_mask.data_ptr(), n_users=n, n_items=n, d=u.shape[1], k=k,
                         has_mask_value=False, mask_value=0.0, out_values=val.data_ptr(),
                         out_indices=col.data_ptr(), index_dtype=INDEX_NAMES[no_mask.dtype],
                         dtype=FLOAT_NAMES[u.dtype], precision="fp32")
    return col, val


def _knn_graph_triton(x, k):
    from ..kernels import knn_graph as kernel

    if k > (kernel.MAX_K_FP64 if x.dtype == torch.float64 else kernel.MAX_K):
        return knn_graph_reference(x, k)  # the kernel's registers would spill
    return kernel.knn_graph_triton(dense(_unit_rows(x)), k)


_backend.define("knn_graph", _knn_graph, knn_graph_reference)
_backend.register("knn_graph", "cpu", "cpp", _knn_graph_cpp)
_backend.register("knn_graph", "cuda", "triton", _knn_graph_triton)
_backend.register("knn_graph", "cpu", "triton", _knn_graph_triton)


def knn_graph(x: torch.Tensor, k: int = 10, *,
              validate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest items of every item by cosine similarity, itself included (MMRec's kNN).

    Args:
        x: (n, d) float32/float64 item features (one row per item; MMRec's ``v_feat``/``t_feat``).
        k: neighbours per item (MMRec's ``knn_k``, 10 by default); may exceed n.
        validate: refuse non-finite features (one pass and a host sync).

    Returns:
        ``(col, val)``: (n, k) int64 neighbour ids and (n, k) float32 cosines, best first, ties
        to the lower id; col -1 / val -inf in the slots beyond n candidates. As a CSR:
        ``rowptr = arange(0, n·k + 1, k)``, ``col.view(-1)``.

    Raises:
        InputError: x not a 2-D float32/float64 tensor; k not a non-negative int; more than
            2^32 - 1 items (the fused kernels pack an id into 32 bits); with ``validate``, a NaN
            or infinite feature (its row is named).
    """
    op = "knn_graph"
    check(isinstance(x, torch.Tensor) and x.dim() == 2 and x.dtype in FLOAT_NAMES, op,
          "x must be an (n, d) float32 or float64 tensor, got "
          + (f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__))
    check(isinstance(k, int) and not isinstance(k, bool) and k >= 0, op,
          f"k must be a non-negative int, got {k!r}")
    check(x.shape[0] <= MAX_TOPK_ITEMS, op, f"at most 2^32 - 1 items, got {x.shape[0]}")
    if validate and x.numel():
        bad = (~torch.isfinite(x)).any(dim=1)
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            check(False, op, f"x has a NaN or infinite feature in row {row} "
                             f"({int(bad.sum())} such rows): clean or drop them first")
    return _knn_graph(x, k)
