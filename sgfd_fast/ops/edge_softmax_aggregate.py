"""edge_softmax_aggregate: dot-product attention over the edges of a CSR graph (GRCN's GAT).

For row r (a message target) with edges e = rowptr[r] .. rowptr[r+1]-1 to columns c_e (sources)::

    score[e] = <query[r], key[c_e]>
    alpha[e] = exp(score[e] - max_r) / sum_{e' in row r} exp(score[e'] - max_r)
    out[r]   = sum_{e in row r} alpha[e] * value[c_e]

Returns ``(out (n_rows, d_v), alpha (nnz,))``. Shapes: rowptr (n_rows + 1,), col (nnz,) sharing
int32 or int64; query (n_rows, d), key (n_cols, d), value (n_cols, d_v), all float32 or all float64.

Backward (both outputs differentiable; ``g[e] = dalpha[e] + <dout[r], value[c_e]>``)::

    dscore[e] = alpha[e] * (g[e] - sum_{e' in row r} alpha[e'] g[e'])
    dquery    = A_dscore @ key,   dkey = A_dscoreᵀ @ query,   dvalue = A_alphaᵀ @ dout

where ``A_w`` is the CSR matrix with edge values w. ``dscore`` and ``dquery`` are row-local and
come from the op ``edge_softmax_aggregate_backward``; ``dkey`` and ``dvalue`` are ``spmm_csr``
products on the transpose. Pass ``transpose=(t_rowptr, t_col, t_perm)`` (``csr_transpose``) to
avoid a sort per backward call.

The row-local part of the backward (``dscore``, ``dquery``) is its own op,
``edge_softmax_aggregate_backward``, with the same backends.

Backends: reference (PyTorch: gathers, segment max/sum via scatter, index_add; materialises
(nnz, d) products), cpp (OpenMP, one thread per row: scores, softmax and the weighted sum in one
pass over the row's edges, no (nnz, d) intermediate; bitwise reproducible for any thread count),
triton (CUDA; one program per row and block of output columns, two passes over the row's edges
for a numerically safe softmax without an (nnz, d) intermediate; deterministic, no atomics).
Contract: an empty row gives a zero output row and owns no alpha; the row maximum is subtracted
before ``exp`` so large scores do not overflow; duplicates of a column in one row are separate
edges.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _backend, _ext
from .._tensors import FLOAT_NAMES, INDEX_NAMES, addr, dense, new_output
from ._common import check, check_csr, csr_transpose
from .spmm_csr import _spmm_csr

__all__ = ["edge_softmax_aggregate", "edge_softmax_aggregate_reference",
           "edge_softmax_aggregate_backward_reference"]


def _rows(rowptr: torch.Tensor, nnz: int, device) -> torch.Tensor:
    n_rows = rowptr.numel() - 1
    return torch.repeat_interleave(torch.arange(n_rows, device=device), rowptr.diff().long(),
                                   output_size=nnz)


def edge_softmax_aggregate_reference(rowptr: torch.Tensor, col: torch.Tensor,
                                     query: torch.Tensor, key: torch.Tensor,
                                     value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n_rows = rowptr.numel() - 1
    col = col.long()
    row = _rows(rowptr, col.numel(), query.device)
    score = (query.index_select(0, row) * key.index_select(0, col)).sum(1)
    row_max = score.new_full((n_rows,), -torch.inf).scatter_reduce(0, row, score, "amax")
    ex = torch.exp(score - row_max.index_select(0, row))
    denom = score.new_zeros(n_rows).index_add_(0, row, ex)
    alpha = ex / denom.index_select(0, row)
    out = value.new_zeros(n_rows, value.shape[1]).index_add_(
        0, row, value.index_select(0, col) * alpha.unsqueeze(1))
    return out, alpha


@torch.library.custom_op("sgfd_fast::edge_softmax_aggregate", mutates_args=())
def _edge_softmax_aggregate(rowptr: torch.Tensor, col: torch.Tensor, query: torch.Tensor,
                            key: torch.Tensor, value: torch.Tensor,
                            t_rowptr: Optional[torch.Tensor], t_col: Optional[torch.Tensor],
                            t_perm: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return edge_softmax_aggregate_reference(rowptr, col, query, key, value)


def _reference(rowptr, col, query, key, value, t_rowptr, t_col, t_perm):
    return edge_softmax_aggregate_reference(rowptr, col, query, key, value)


@_edge_softmax_aggregate.register_fake
def _edge_softmax_aggregate_fake(rowptr, col, query, key, value, t_rowptr, t_col, t_perm):
    return (value.new_empty(rowptr.shape[0] - 1, value.shape[1]),
            query.new_empty(col.shape[0]))


def _edge_softmax_aggregate_cpp(rowptr, col, query, key, value, t_rowptr, t_col, t_perm):
    query, key, value = dense(query), dense(key), dense(value)
    out = new_output(rowptr.numel() - 1, value.shape[1], like=value)
    alpha = new_output(col.numel(), like=query)
    _ext.cpu.edge_softmax_aggregate(rowptr=rowptr.data_ptr(), col=col.data_ptr(),
                                    query=query.data_ptr(), key=key.data_ptr(),
                                    value=value.data_ptr(), out=out.data_ptr(),
                                    alpha=alpha.data_ptr(), n_rows=out.shape[0],
                                    d=query.shape[1], dv=value.shape[1],
                                    index_dtype=INDEX_NAMES[rowptr.dtype],
                                    dtype=FLOAT_NAMES[query.dtype])
    return out, alpha


def _edge_softmax_aggregate_triton(rowptr, col, query, key, value, t_rowptr, t_col, t_perm):
    from ..kernels.edge_softmax_aggregate import edge_softmax_aggregate_triton

    return edge_softmax_aggregate_triton(rowptr, col, dense(query), dense(key), dense(value))


def edge_softmax_aggregate_backward_reference(rowptr, col, key, value, alpha, grad_out,
                                              grad_alpha):
    """``(dscore (nnz,), dquery (n_rows, d))``: the row-local part of the backward."""
    n_rows = rowptr.numel() - 1
    col = col.long()
    row = _rows(rowptr, col.numel(), alpha.device)
    g = (grad_out.index_select(0, row) * value.index_select(0, col)).sum(1)
    if grad_alpha is not None:
        g = g + grad_alpha
    weighted = alpha.new_zeros(n_rows).index_add_(0, row, alpha * g)
    dscore = alpha * (g - weighted.index_select(0, row))
    dquery = key.new_zeros(n_rows, key.shape[1]).index_add_(
        0, row, key.index_select(0, col) * dscore.unsqueeze(1))
    return dscore, dquery


@torch.library.custom_op("sgfd_fast::edge_softmax_aggregate_backward", mutates_args=())
def _edge_softmax_aggregate_backward_op(rowptr: torch.Tensor, col: torch.Tensor,
                                        key: torch.Tensor, value: torch.Tensor,
                                        alpha: torch.Tensor, grad_out: torch.Tensor,
                                        grad_alpha: Optional[torch.Tensor]
                                        ) -> tuple[torch.Tensor, torch.Tensor]:
    return edge_softmax_aggregate_backward_reference(rowptr, col, key, value, alpha, grad_out,
                                                     grad_alpha)


@_edge_softmax_aggregate_backward_op.register_fake
def _edge_softmax_aggregate_backward_fake(rowptr, col, key, value, alpha, grad_out, grad_alpha):
    return alpha.new_empty(col.shape[0]), key.new_empty(rowptr.shape[0] - 1, key.shape[1])


def _edge_softmax_aggregate_backward_cpp(rowptr, col, key, value, alpha, grad_out, grad_alpha):
    key, value, grad_out = dense(key), dense(value), dense(grad_out)
    grad_alpha = None if grad_alpha is None else dense(grad_alpha)
    dscore = new_output(col.numel(), like=alpha)
    dquery = new_output(rowptr.numel() - 1, key.shape[1], like=key)
    _ext.cpu.edge_softmax_aggregate_backward(
        rowptr=rowptr.data_ptr(), col=col.data_ptr(), key=key.data_ptr(), value=value.data_ptr(),
        alpha=alpha.data_ptr(), grad_out=grad_out.data_ptr(), grad_alpha=addr(grad_alpha),
        grad_score=dscore.data_ptr(), grad_query=dquery.data_ptr(), n_rows=dquery.shape[0],
        d=key.shape[1], dv=value.shape[1], index_dtype=INDEX_NAMES[rowptr.dtype],
        dtype=FLOAT_NAMES[key.dtype])
    return dscore, dquery


def _edge_softmax_aggregate_backward_triton(rowptr, col, key, value, alpha, grad_out, grad_alpha):
    from ..kernels.edge_softmax_aggregate import edge_softmax_aggregate_backward_triton

    return edge_softmax_aggregate_backward_triton(
        rowptr, col, dense(key), dense(value), dense(alpha), dense(grad_out),
        None if grad_alpha is None else dense(grad_alpha))


def _setup_context(ctx, inputs, output):
    rowptr, col, query, key, value, t_rowptr, t_col, t_perm = inputs
    ctx.save_for_backward(rowptr, col, query, key, value, t_rowptr, t_col, t_perm, output[1])


def _edge_softmax_aggregate_backward(ctx, grad_out, grad_alpha):
    rowptr, col, query, key, value, t_rowptr, t_col, t_perm, alpha = ctx.saved_tensors
    if t_rowptr is None:
        t_rowptr, t_col, t_perm = csr_transpose(rowptr, col, key.shape[0])
    if grad_out is None:
        grad_out = value.new_zeros(rowptr.numel() - 1, value.shape[1])
    dscore, grad_query = _edge_softmax_aggregate_backward_op(
        rowptr, col, key, value, alpha, grad_out.contiguous(), grad_alpha)
    grad_key = grad_value = None
    if ctx.needs_input_grad[3]:
        grad_key = _spmm_csr(t_rowptr, t_col, dscore[t_perm], query, rowptr, col, None)
    if ctx.needs_input_grad[4]:
        grad_value = _spmm_csr(t_rowptr, t_col, alpha[t_perm], grad_out.contiguous(), rowptr,
                               col, None)
    grad_query = grad_query if ctx.needs_input_grad[2] else None
    return None, None, grad_query, grad_key, grad_value, None, None, None


_edge_softmax_aggregate.register_autograd(_edge_softmax_aggregate_backward,
                                          setup_context=_setup_context)
_backend.define("edge_softmax_aggregate", _edge_softmax_aggregate, _reference)
_backend.register("edge_softmax_aggregate", "cpu", "cpp", _edge_softmax_aggregate_cpp)
_backend.register("edge_softmax_aggregate", "cuda", "triton", _edge_softmax_aggregate_triton)
_backend.register("edge_softmax_aggregate", "cpu", "triton", _edge_softmax_aggregate_triton)
_backend.define("edge_softmax_aggregate_backward", _edge_softmax_aggregate_backward_op,
                edge_softmax_aggregate_backward_reference)
_backend.register("edge_softmax_aggregate_backward", "cpu", "cpp",
                  _edge_softmax_aggregate_backward_cpp)
_backend.register("edge_softmax_aggregate_backward", "cuda", "triton",
                  _edge_softmax_aggregate_backward_triton)
_backend.register("edge_softmax_aggregate_backward", "cpu", "triton",
                  _edge_softmax_aggregate_backward_triton)


def edge_softmax_aggregate(rowptr: torch.Tensor, col: torch.Tensor, query: torch.Tensor,
                           key: torch.Tensor, value: torch.Tensor, *, transpose=None,
                           validate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of every CSR row over its edges, and the attention-weighted sum.

    Args:
        rowptr: (n_rows + 1,) int32/int64 row offsets; rows are the message targets.
        col: (nnz,) source (column) ids, same dtype as ``rowptr``.
        query: (n_rows, d) float32/float64, one per target row.
        key: (n_cols, d) and value: (n_cols, d_v), one per source; same dtype as ``query``.
            GRCN's GAT passes the same node matrix as query, key and value.
        transpose: optional cached ``(t_rowptr, t_col, t_perm)`` from ``csr_transpose``.
        validate: check index ranges (one pass and a host sync); graphs validated once pass False.

    Returns:
        ``(out (n_rows, d_v), alpha (nnz,))``: aggregated messages and the attention weight of
        every edge in CSR order (each non-empty row's alphas sum to 1).
    """
    op = "edge_softmax_aggregate"
    for name, t in (("query", query), ("key", key), ("value", value)):
        check(t.dim() == 2, op, f"{name} must be 2-D, got shape {tuple(t.shape)}")
        check(t.dtype in FLOAT_NAMES, op, f"{name} must be float32 or float64, got {t.dtype}")
        check(t.dtype == query.dtype, op,
              f"query, key and value must share a dtype, got {query.dtype} and {t.dtype} ({name})")
        check(t.device == rowptr.device, op,
              f"graph is on {rowptr.device} but {name} is on {t.device}")
    check(query.shape[0] == rowptr.numel() - 1, op,
          f"query must have one row per CSR row ({rowptr.numel() - 1}), got {query.shape[0]}")
    check(key.shape[1] == query.shape[1], op,
          f"key width {key.shape[1]} must equal query width {query.shape[1]}")
    check(value.shape[0] == key.shape[0], op,
          f"value must have one row per key row ({key.shape[0]}), got {value.shape[0]}")
    check_csr(op, rowptr, col, None, key.shape[0], validate_values=validate)
    t_rowptr, t_col, t_perm = transpose if transpose is not None else (None, None, None)
    return _edge_softmax_aggregate(rowptr.contiguous(), col.contiguous(), query.contiguous(),
                                   key.contiguous(), value.contiguous(), t_rowptr, t_col, t_perm)
