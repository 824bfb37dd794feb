"""spmm_csr in Triton: one program per (row, column block), gathering BLOCK_E neighbour rows at a
time as a [BLOCK_E, BLOCK_D] tile and reducing it over the edge axis. Deterministic: every output
element is owned by one program and summed in edge order per tile."""

import torch
import triton
import triton.language as tl

from .._tensors import new_output


@triton.jit
def _csr_row_sum(rowptr_ptr, col_ptr, val_ptr, x_ptr, stride_x_row, row, cols, col_mask,
                 HAS_VAL: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr):
    """sum over row's edges e of val[e] * x[col[e], cols], in edge order, accumulated in float32
    (float64 for float64 x). Shared by spmm_csr and propagate."""
    start = tl.load(rowptr_ptr + row).to(tl.int64)
    end = tl.load(rowptr_ptr + row + 1).to(tl.int64)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32 if x_ptr.dtype.element_ty != tl.float64
                   else tl.float64)
    for e0 in range(start, end, BLOCK_E):
        edges = e0 + tl.arange(0, BLOCK_E)
        edge_mask = edges < end
        nbr = tl.load(col_ptr + edges, mask=edge_mask, other=0).to(tl.int64)
        tile = tl.load(x_ptr + nbr[:, None] * stride_x_row + cols[None, :],
                       mask=edge_mask[:, None] & col_mask[None, :], other=0.0).to(acc.dtype)
        if HAS_VAL:
            w = tl.load(val_ptr + edges, mask=edge_mask, other=0.0).to(acc.dtype)
            tile = tile * w[:, None]
        acc += tl.sum(tile, axis=0)
    return acc


@triton.jit
def _spmm_csr_fwd_kernel(
    rowptr_ptr,  # (n_rows + 1,) row offsets
    col_ptr,  # (nnz,) column indices
    val_ptr,  # (nnz,) edge weights (ignored when HAS_VAL is False)
    x_ptr,  # (n_cols, d) dense input, row-major
    out_ptr,  # (n_rows, d) output, row-major
    d,
    stride_x_row,
    stride_out_row,
    HAS_VAL: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < d
    acc = _csr_row_sum(rowptr_ptr, col_ptr, val_ptr, x_ptr, stride_x_row, row, cols, col_mask,
                       HAS_VAL, BLOCK_E, BLOCK_D)
    tl.store(out_ptr + row * stride_out_row + cols, acc.to(out_ptr.dtype.element_ty), mask=col_mask)


def spmm_csr_triton(rowptr: torch.Tensor, col: torch.Tensor, val, x: torch.Tensor) -> torch.Tensor:
    n_rows, d = rowptr.numel() - 1, x.shape[1]
    out = new_output(n_rows, d, like=x)
    if n_rows == 0 or d == 0:
        return out
    block_d = min(128, triton.next_power_of_2(d))
    grid = (n_rows, triton.cdiv(d, block_d))
    _spmm_csr_fwd_kernel[grid](
        rowptr, col, val if val is not None else x, x, out, d, x.stride(0), out.stride(0),
        HAS_VAL=val is not None, BLOCK_E=16, BLOCK_D=block_d)
    return out
