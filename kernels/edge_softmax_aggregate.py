"""edge_softmax_aggregate in Triton: one program per (row, block of output columns).

Forward (see sgfd_fast.ops.edge_softmax_aggregate for the formula), per row r, in BLOCK_E-edge
tiles of gathered neighbour rows:

* pass 1: scores ``<query[r], key[c_e]>`` (the dot product loops over d in BLOCK_K chunks), the
  row maximum m and the softmax denominator l, rescaled online as m grows;
* pass 2: scores again, ``alpha = exp(score - m) / l``, and ``out[r, cols] += alpha * value``;
  the program of column block 0 stores alpha.

Backward (row-local part), per row r and block of dquery columns:

* pass 1: ``g[e] = dalpha[e] + <dout[r], value[c_e]>`` and ``w = sum_e alpha[e] g[e]``;
* pass 2: g again, ``dscore = alpha (g - w)`` (stored by column block 0) and
  ``dquery[r, cols] += dscore * key[c_e, cols]``.

Pass 2 recomputes the dot products instead of re-reading them from the output buffer: reading
back what other threads of the same program stored would need a barrier per tile, and the column
blocks > 0 could not read them at all. Each output element has one owner and a fixed reduction
order (no atomics), so results are deterministic. Accumulation is float32 for float32 inputs and
float64 for float64 inputs.
"""

import torch
import triton
import triton.language as tl

from .._tensors import new_output


@triton.jit
def _edge_dots(row_ptr, table_ptr, nbr, edge_mask, width,
               BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr):
    """[BLOCK_E] dot products of the row vector at row_ptr with table rows nbr (width columns)."""
    acc_t = tl.float32 if table_ptr.dtype.element_ty != tl.float64 else tl.float64
    dots = tl.zeros([BLOCK_E], dtype=acc_t)
    for k0 in range(0, width, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < width
        a = tl.load(row_ptr + ks, mask=k_mask, other=0.0).to(acc_t)
        tile = tl.load(table_ptr + nbr[:, None] * width + ks[None, :],
                       mask=edge_mask[:, None] & k_mask[None, :], other=0.0).to(acc_t)
        dots += tl.sum(tile * a[None, :], axis=1)
    return dots


@triton.jit
def _edge_softmax_aggregate_fwd_kernel(
    rowptr_ptr,  # (n_rows + 1,) row offsets
    col_ptr,  # (nnz,) source ids
    query_ptr,  # (n_rows, d)
    key_ptr,  # (n_cols, d)
    value_ptr,  # (n_cols, dv)
    out_ptr,  # (n_rows, dv)
    alpha_ptr,  # (nnz,)
    d,
    dv,
    BLOCK_E: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    block = tl.program_id(1)
    cols = block * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < dv
    start = tl.load(rowptr_ptr + row).to(tl.int64)
    end = tl.load(rowptr_ptr + row + 1).to(tl.int64)
    q_row = query_ptr + row * d
    acc_t = tl.float32 if value_ptr.dtype.element_ty != tl.float64 else tl.float64

    row_max = tl.full([], float("-inf"), dtype=acc_t)
    denom = tl.zeros([], dtype=acc_t)
    for e0 in range(start, end, BLOCK_E):
        edges = e0 + tl.arange(0, BLOCK_E)
        edge_mask = edges < end
        nbr = tl.load(col_ptr + edges, mask=edge_mask, other=0).to(tl.int64)
        score = _edge_dots(q_row, key_ptr, nbr, edge_mask, d, BLOCK_E, BLOCK_K)
        score = tl.where(edge_mask, score, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(score, axis=0))  # finite: the tile has an edge
        denom = denom * tl.exp(row_max - new_max) + tl.sum(tl.exp(score - new_max), axis=0)
        row_max = new_max

    acc = tl.zeros([BLOCK_D], dtype=acc_t)
    for e0 in range(start, end, BLOCK_E):
        edges = e0 + tl.arange(0, BLOCK_E)
        edge_mask = edges < end
        nbr = tl.load(col_ptr + edges, mask=edge_mask, other=0).to(tl.int64)
        score = _edge_dots(q_row, key_ptr, nbr, edge_mask, d, BLOCK_E, BLOCK_K)
        alpha = tl.exp(tl.where(edge_mask, score, float("-inf")) - row_max) / denom
        tl.store(alpha_ptr + edges, alpha.to(alpha_ptr.dtype.element_ty),
                 mask=edge_mask & (block == 0))
        tile = tl.load(value_ptr + nbr[:, None] * dv + cols[None, :],
                       mask=edge_mask[:, None] & col_mask[None, :], other=0.0).to(acc_t)
        acc += tl.sum(tile * alpha[:, None], axis=0)
    tl.store(out_ptr + row * dv + cols, acc.to(out_ptr.dtype.element_ty), mask=col_mask)


@triton.jit
def _edge_softmax_aggregate_bwd_kernel(
    rowptr_ptr,  # (n_rows + 1,) row offsets
    col_ptr,  # (nnz,) source ids
    key_ptr,  # (n_cols, d)
    value_ptr,  # (n_cols, dv)
    alpha_ptr,  # (nnz,) forward attention
    grad_out_ptr,  # (n_rows, dv)
    grad_alpha_ptr,  # (nnz,) (ignored unless HAS_GRAD_ALPHA)
    grad_score_ptr,  # (nnz,) output
    grad_query_ptr,  # (n_rows, d) output
    d,
    dv,
    HAS_GRAD_ALPHA: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    block = tl.program_id(1)
    cols = block * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < d
    start = tl.load(rowptr_ptr + row).to(tl.int64)
    end = tl.load(rowptr_ptr + row + 1).to(tl.int64)
    go_row = grad_out_ptr + row * dv
    acc_t = tl.float32 if key_ptr.dtype.element_ty != tl.float64 else tl.float64

    weighted = tl.zeros([], dtype=acc_t)
    for e0 in range(start, end, BLOCK_E):
        edges = e0 + tl.arange(0, BLOCK_E)
        edge_mask = edges < end
        nbr = tl.load(col_ptr + edges, mask=edge_mask, other=0).to(tl.int64)
        g = _edge_dots(go_row, value_ptr, nbr, edge_mask, dv, BLOCK_E, BLOCK_K)
        if HAS_GRAD_ALPHA:
            g += tl.load(grad_alpha_ptr + edges, mask=edge_mask, other=0.0).to(acc_t)
        alpha = tl.load(alpha_ptr + edges, mask=edge_mask, other=0.0).to(acc_t)
        weighted += tl.sum(alpha * g, axis=0)

    acc = tl.zeros([BLOCK_D], dtype=acc_t)
    for e0 in range(start, end, BLOCK_E):
        edges = e0 + tl.arange(0, BLOCK_E)
        edge_mask = edges < end
        nbr = tl.load(col_ptr + edges, mask=edge_mask, other=0).to(tl.int64)
        g = _edge_dots(go_row, value_ptr, nbr, edge_mask, dv, BLOCK_E, BLOCK_K)
        if HAS_GRAD_ALPHA:
            g += tl.load(grad_alpha_ptr + edges, mask=edge_mask, other=0.0).to(acc_t)
        alpha = tl.load(alpha_ptr + edges, mask=edge_mask, other=0.0).to(acc_t)
        dscore = alpha * (g - weighted)
        tl.store(grad_score_ptr + edges, dscore.to(grad_score_ptr.dtype.element_ty),
                 mask=edge_mask & (block == 0))
        tile = tl.load(key_ptr + nbr[:, None] * d + cols[None, :],
                       mask=edge_mask[:, None] & col_mask[None, :], other=0.0).to(acc_t)
        acc += tl.sum(tile * dscore[:, None], axis=0)
    tl.store(grad_query_ptr + row * d + cols, acc.to(grad_query_ptr.dtype.element_ty),
             mask=col_mask)


def _blocks(width: int) -> int:
    return min(128, triton.next_power_of_2(max(width, 1)))


def edge_softmax_aggregate_triton(rowptr: torch.Tensor, col: torch.Tensor, query: torch.Tensor,
                                  key: torch.Tensor, value: torch.Tensor):
    """``(out, alpha)`` for row-major query/key/value (see sgfd_fast.ops.edge_softmax_aggregate)."""
    n_rows, d, dv = rowptr.numel() - 1, query.shape[1], value.shape[1]
    out = new_output(n_rows, dv, like=value)
    alpha = new_output(col.numel(), like=query)
    if n_rows == 0:
        return out, alpha
    block_d = _blocks(dv)
    grid = (n_rows, max(1, triton.cdiv(dv, block_d)))  # dv = 0 still owes alpha
    _edge_softmax_aggregate_fwd_kernel[grid](
        rowptr, col, query, key, value, out, alpha, d, dv,
        BLOCK_E=16, BLOCK_K=_blocks(d), BLOCK_D=block_d)
    return out, alpha


def edge_softmax_aggregate_backward_triton(rowptr: torch.Tensor, col: torch.Tensor,
                                           key: torch.Tensor, value: torch.Tensor,
                                           alpha: torch.Tensor, grad_out: torch.Tensor,
                                           grad_alpha):
    """``(dscore, dquery)``, the row-local part of the backward, for row-major inputs."""
    n_rows, d, dv = rowptr.numel() - 1, key.shape[1], value.shape[1]
    grad_score = new_output(col.numel(), like=alpha)
    grad_query = new_output(n_rows, d, like=key)
    if n_rows == 0:
        return grad_score, grad_query
    block_d = _blocks(d)
    grid = (n_rows, max(1, triton.cdiv(d, block_d)))  # d = 0 still owes dscore
    _edge_softmax_aggregate_bwd_kernel[grid](
        rowptr, col, key, value, alpha, grad_out,
        grad_alpha if grad_alpha is not None else alpha, grad_score, grad_query, d, dv,
        HAS_GRAD_ALPHA=grad_alpha is not None, BLOCK_E=16, BLOCK_K=_blocks(dv), BLOCK_D=block_d)
    return grad_score, grad_query
