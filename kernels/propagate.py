"""propagate in Triton: one launch per layer, one program per (row, column block).

Each program sums its row's neighbours with spmm_csr's gather loop (``_csr_row_sum``) and fuses
the layer mean into its epilogue: it stores the layer only when the next layer reads it and
writes ``out = base + layer`` (base = x on layer 1, then the running sum in ``out``), divided
by L + 1 on the last layer. Deterministic: every output element has one
owner and a fixed reduction order; no atomics.
"""

import torch
import triton
import triton.language as tl

from .._tensors import new_output
from .spmm_csr import _csr_row_sum


@triton.jit
def _propagate_fwd_kernel(
    rowptr_ptr,  # (n + 1,) row offsets
    col_ptr,  # (nnz,) column indices
    val_ptr,  # (nnz,) edge weights
    src_ptr,  # (n, d) layer k-1, row-major
    layer_ptr,  # (n, d) layer k (written only when STORE_LAYER)
    base_ptr,  # (n, d) running sum before layer k (x on layer 1; may alias out_ptr)
    out_ptr,  # (n, d) running sum after layer k
    d,
    n_terms,  # L + 1: the last layer divides the running sum by it
    LAST: tl.constexpr,
    STORE_LAYER: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < d
    acc = _csr_row_sum(rowptr_ptr, col_ptr, val_ptr, src_ptr, d, row, cols, col_mask, True,
                       BLOCK_E, BLOCK_D)
    at = row * d + cols
    if STORE_LAYER:
        tl.store(layer_ptr + at, acc.to(layer_ptr.dtype.element_ty), mask=col_mask)
    total = tl.load(base_ptr + at, mask=col_mask, other=0.0).to(acc.dtype) + acc
    if LAST:  # divided in the accumulator dtype (a Python float would reach a GPU as fp32)
        if acc.dtype == tl.float32:
            total = tl.math.div_rn(total, n_terms.to(tl.float32))  # as torch, not approximate
        else:
            total = total / n_terms.to(tl.float64)
    tl.store(out_ptr + at, total.to(out_ptr.dtype.element_ty), mask=col_mask)


def propagate_triton(rowptr: torch.Tensor, col: torch.Tensor, val: torch.Tensor, x: torch.Tensor,
                     n_layers: int) -> torch.Tensor:
    """Mean of ``x, A x, ..., A^L x`` for a row-major x (see sgfd_fast.ops.propagate)."""
    n, d = x.shape
    if n_layers == 0:
        return x.clone()
    out = new_output(n, d, like=x)
    if n == 0 or d == 0:
        return out
    bufs = [torch.empty_like(x) if n_layers >= 2 else None,
            torch.empty_like(x) if n_layers >= 3 else None]
    block_d = min(128, triton.next_power_of_2(d))
    grid = (n, triton.cdiv(d, block_d))
    for k in range(1, n_layers + 1):
        src = x if k == 1 else bufs[(k - 2) % 2]
        layer = bufs[(k - 1) % 2] if k < n_layers else None
        base = x if k == 1 else out
        _propagate_fwd_kernel[grid](
            rowptr, col, val, src, layer if layer is not None else out, base, out, d,
            n_layers + 1, LAST=k == n_layers, STORE_LAYER=layer is not None, BLOCK_E=16,
            BLOCK_D=block_d)
    return out
