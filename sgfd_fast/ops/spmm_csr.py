"""spmm_csr: sparse (CSR) times dense, for weighted non-symmetric graphs.

    out[r, :] = sum_{e = rowptr[r]}^{rowptr[r+1]-1} val[e] * x[col[e], :]

Shapes: rowptr (n_rows + 1,), col (nnz,), val (nnz,) or None for unit weights, x (n_cols, d),
out (n_rows, d). rowptr/col share int32 or int64; val and x share float32 or float64.

Backward: dx = Aᵀ·dy through the same op on the transposed CSR, and
dval[e] = <dy[row e], x[col e]> through ``sddmm_csr`` (no (nnz, d) intermediate).
Pass ``transpose=(t_rowptr, t_col, t_perm)`` (``CSR.transpose()`` caches it once per graph); without
it the backward builds the transpose itself (a sort per backward call).

Backends: reference (PyTorch index_add), cpp (OpenMP), cuda (warp per row), triton (row-block
gather). Contract: empty rows give zero rows; every backend writes every output element; cpp and
cuda are bitwise reproducible run to run (one owner per output row, fixed summation order).
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _backend, _ext
from .._tensors import FLOAT_NAMES, INDEX_NAMES, addr, cuda_stream, dense, new_output
from ._common import check, check_csr, csr_transpose
from .sddmm_csr import _sddmm_csr

__all__ = ["spmm_csr", "spmm_csr_reference"]


def spmm_csr_reference(rowptr: torch.Tensor, col: torch.Tensor, val: Optional[torch.Tensor],
                       x: torch.Tensor) -> torch.Tensor:
    n_rows = rowptr.numel() - 1
    row = torch.repeat_interleave(torch.arange(n_rows, device=x.device), rowptr.diff().long(),
                                  output_size=col.numel())
    msg = x.index_select(0, col.long())
    if val is not None:
        msg = msg * val.unsqueeze(1)
    return x.new_zeros(n_rows, x.shape[1]).index_add_(0, row, msg)


@torch.library.custom_op("sgfd_fast::spmm_csr", mutates_args=())
def _spmm_csr(rowptr: torch.Tensor, col: torch.Tensor, val: Optional[torch.Tensor],
              x: torch.Tensor, t_rowptr: Optional[torch.Tensor], t_col: Optional[torch.Tensor],
              t_perm: Optional[torch.Tensor]) -> torch.Tensor:
    return spmm_csr_reference(rowptr, col, val, x)


def _reference(rowptr, col, val, x, t_rowptr, t_col, t_perm):
    return spmm_csr_reference(rowptr, col, val, x)


@_spmm_csr.register_fake
def _spmm_csr_fake(rowptr, col, val, x, t_rowptr, t_col, t_perm):
    return x.new_empty(rowptr.shape[0] - 1, x.shape[1])


def _spmm_csr_cpp(rowptr, col, val, x, t_rowptr, t_col, t_perm):
    x, val = dense(x), None if val is None else dense(val)  # a backward may pass expanded grads
    out = new_output(rowptr.numel() - 1, x.shape[1], like=x)
    _ext.cpu.spmm_csr(rowptr=rowptr.data_ptr(), col=col.data_ptr(), val=addr(val), x=x.data_ptr(),
                      out=out.data_ptr(), n_rows=out.shape[0], d=out.shape[1], ld_x=x.shape[1],
                      ld_out=out.shape[1], index_dtype=INDEX_NAMES[rowptr.dtype],
                      dtype=FLOAT_NAMES[x.dtype])
    return out


def _spmm_csr_cuda(rowptr, col, val, x, t_rowptr, t_col, t_perm):
    x, val = dense(x), None if val is None else dense(val)  # a backward may pass expanded grads
    out = new_output(rowptr.numel() - 1, x.shape[1], like=x)
    with torch.cuda.device(x.device):
        _ext.cuda.spmm_csr(rowptr=rowptr.data_ptr(), col=col.data_ptr(), val=addr(val),
                           x=x.data_ptr(), out=out.data_ptr(), n_rows=out.shape[0],
                           d=out.shape[1], ld_x=x.shape[1], ld_out=out.shape[1],
                           index_dtype=INDEX_NAMES[rowptr.dtype], dtype=FLOAT_NAMES[x.dtype],
                           stream=cuda_stream(x))
    return out


def _spmm_csr_triton(rowptr, col, val, x, t_rowptr, t_col, t_perm):
    from ..kernels.spmm_csr import spmm_csr_triton

    return spmm_csr_triton(rowptr, col, val, dense(x))


def _setup_context(ctx, inputs, output):
    rowptr, col, val, x, t_rowptr, t_col, t_perm = inputs
    ctx.save_for_backward(rowptr, col, val, x, t_rowptr, t_col, t_perm)


def _spmm_csr_backward(ctx, grad):
    rowptr, col, val, x, t_rowptr, t_col, t_perm = ctx.saved_tensors
    grad_val = grad_x = None
    if ctx.needs_input_grad[3]:
        if t_rowptr is None:
            t_rowptr, t_col, t_perm = csr_transpose(rowptr, col, x.shape[0])
        t_val = None if val is None else val[t_perm]
        back = None  # edge k of A is edge back[k] of Aᵀ: only a double backward reads it
        if val is not None and torch.is_grad_enabled():
            back = torch.empty_like(t_perm)
            back[t_perm] = torch.arange(t_perm.numel(), device=t_perm.device)
        grad_x = _spmm_csr(t_rowptr, t_col, t_val, grad, rowptr, col, back)
    if val is not None and ctx.needs_input_grad[2]:
        grad_val = _sddmm_csr(rowptr, col, grad, x, t_rowptr, t_col, t_perm)
    return None, None, grad_val, grad_x, None, None, None


_spmm_csr.register_autograd(_spmm_csr_backward, setup_context=_setup_context)
_backend.define("spmm_csr", _spmm_csr, _reference)
_backend.register("spmm_csr", "cpu", "cpp", _spmm_csr_cpp)
_backend.register("spmm_csr", "cuda", "cuda", _spmm_csr_cuda)
_backend.register("spmm_csr", "cuda", "triton", _spmm_csr_triton, priority=1)
_backend.register("spmm_csr", "cpu", "triton", _spmm_csr_triton)


def spmm_csr(rowptr: torch.Tensor, col: torch.Tensor, val: Optional[torch.Tensor],
             x: torch.Tensor, *, transpose=None, validate: bool = True) -> torch.Tensor:
    """Sparse-dense product ``A @ x`` for a CSR matrix A.

    Args:
        rowptr: (n_rows + 1,) int32/int64 row offsets.
        col: (nnz,) column indices, same dtype as ``rowptr``.
        val: (nnz,) edge weights with ``x``'s dtype, or None for unit weights.
        x: (n_cols, d) dense float32/float64 matrix; views are copied to row-major once.
        transpose: optional cached ``(t_rowptr, t_col, t_perm)`` from :func:`csr_transpose`,
            used by the backward instead of sorting on every call.
        validate: check index ranges (one pass and a host sync). Graph objects that validated
            at construction pass False.

    Returns:
        (n_rows, d) tensor ``A @ x``.
    """
    check(x.dim() == 2, "spmm_csr", f"x must be 2-D (n_cols, d), got shape {tuple(x.shape)}")
    check(x.dtype in FLOAT_NAMES, "spmm_csr", f"x must be float32 or float64, got {x.dtype}")
    check_csr("spmm_csr", rowptr, col, val, x.shape[0], validate_values=validate)
    check(rowptr.device == x.device, "spmm_csr",
          f"graph is on {rowptr.device} but x is on {x.device}")
    check(val is None or val.dtype == x.dtype, "spmm_csr",
          f"val dtype {None if val is None else val.dtype} must match x dtype {x.dtype}")
    t_rowptr, t_col, t_perm = transpose if transpose is not None else (None, None, None)
    return _spmm_csr(rowptr.contiguous(), col.contiguous(),
                     None if val is None else val.contiguous(), x, t_rowptr, t_col, t_perm)
