"""sddmm_csr: sampled dense-dense product over the edges of a CSR pattern.

    out[e] = <a[row(e), :], b[col[e], :]>    for e = 0 .. nnz - 1

Shapes: rowptr (n_rows + 1,), col (nnz,) sharing int32 or int64; a (n_rows, d), b (n_cols, d) of
one dtype (float32 or float64); out (nnz,). It is the edge-weight gradient of ``spmm_csr``
(``a`` = the output gradient, ``b`` = the input) and needs no (nnz, d) intermediate.

Backward: da = A_g @ b and db = A_gᵀ @ a with edge values g = dout, through ``spmm_csr``; the
transpose of the pattern comes from the caller when it has one cached (``spmm_csr``'s backward,
``transpose=``), else it is built per call.

Backends: reference (PyTorch gathers), cpp (OpenMP, one thread per row), cuda (warp per row,
shuffle reduction). Contract: every output element is written; cpp and cuda are bitwise
reproducible run to run (fixed summation order, no atomics).
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _backend, _ext
from .._tensors import FLOAT_NAMES, INDEX_NAMES, cuda_stream, dense, new_output
from ._common import check, check_csr, csr_transpose

__all__ = ["sddmm_csr", "sddmm_csr_reference"]


def sddmm_csr_reference(rowptr: torch.Tensor, col: torch.Tensor, a: torch.Tensor,
                        b: torch.Tensor) -> torch.Tensor:
    row = torch.repeat_interleave(torch.arange(rowptr.numel() - 1, device=a.device),
                                  rowptr.diff().long(), output_size=col.numel())
    return (a.index_select(0, row) * b.index_select(0, col.long())).sum(1)


@torch.library.custom_op("sgfd_fast::sddmm_csr", mutates_args=())
def _sddmm_csr(rowptr: torch.Tensor, col: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
               t_rowptr: Optional[torch.Tensor], t_col: Optional[torch.Tensor],
               t_perm: Optional[torch.Tensor]) -> torch.Tensor:
    return sddmm_csr_reference(rowptr, col, a, b)


def _reference(rowptr, col, a, b, t_rowptr, t_col, t_perm):
    return sddmm_csr_reference(rowptr, col, a, b)


@_sddmm_csr.register_fake
def _sddmm_csr_fake(rowptr, col, a, b, t_rowptr, t_col, t_perm):
    return a.new_empty(col.shape[0])


def _sddmm_csr_cpp(rowptr, col, a, b, t_rowptr, t_col, t_perm):
    a, b = dense(a), dense(b)
    out = new_output(col.numel(), like=a)
    _ext.cpu.sddmm_csr(rowptr=rowptr.data_ptr(), col=col.data_ptr(), a=a.data_ptr(),
                       b=b.data_ptr(), out=out.data_ptr(), n_rows=a.shape[0], d=a.shape[1],
                       index_dtype=INDEX_NAMES[rowptr.dtype], dtype=FLOAT_NAMES[a.dtype])
    return out


def _sddmm_csr_cuda(rowptr, col, a, b, t_rowptr, t_col, t_perm):
    a, b = dense(a), dense(b)
    out = new_output(col.numel(), like=a)
    with torch.cuda.device(a.device):
        _ext.cuda.sddmm_csr(rowptr=rowptr.data_ptr(), col=col.data_ptr(), a=a.data_ptr(),
                            b=b.data_ptr(), out=out.data_ptr(), n_rows=a.shape[0], d=a.shape[1],
                            index_dtype=INDEX_NAMES[rowptr.dtype], dtype=FLOAT_NAMES[a.dtype],
                            stream=cuda_stream(a))
    return out


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _sddmm_csr_backward(ctx, grad):
    # spmm_csr's backward calls this op and this backward calls spmm_csr: the pair is reached
    # through the dispatcher (both are registered once sgfd_fast.ops is imported), not by import
    _spmm_csr = torch.ops.sgfd_fast.spmm_csr
    rowptr, col, a, b, t_rowptr, t_col, t_perm = ctx.saved_tensors
    grad = grad.contiguous()  # e.g. the expanded ones of a .sum()
    grad_a = grad_b = None
    if ctx.needs_input_grad[2]:
        grad_a = _spmm_csr(rowptr, col, grad, b, None, None, None)
    if ctx.needs_input_grad[3]:
        if t_rowptr is None:
            t_rowptr, t_col, t_perm = csr_transpose(rowptr, col, b.shape[0])
        grad_b = _spmm_csr(t_rowptr, t_col, grad[t_perm], a, None, None, None)
    return None, None, grad_a, grad_b, None, None, None


_sddmm_csr.register_autograd(_sddmm_csr_backward, setup_context=_setup_context)
_backend.define("sddmm_csr", _sddmm_csr, _reference)
_backend.register("sddmm_csr", "cpu", "cpp", _sddmm_csr_cpp)
_backend.register("sddmm_csr", "cuda", "cuda", _sddmm_csr_cuda)


def sddmm_csr(rowptr: torch.Tensor, col: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *,
              transpose=None, validate: bool = True) -> torch.Tensor:
    """Per-edge dot products ``<a[row e], b[col e]>`` over a CSR pattern.

    Args:
        rowptr: (n_rows + 1,) int32/int64 row offsets.
        col: (nnz,) column indices, same dtype as ``rowptr``.
        a: (n_rows, d) float32/float64 row features; views are copied to row-major once.
        b: (n_cols, d) column features with ``a``'s dtype and width.
        transpose: optional cached ``(t_rowptr, t_col, t_perm)`` of the pattern from
            :func:`csr_transpose`, used by the backward of ``b`` instead of sorting on every call.
        validate: check index ranges (one pass and a host sync).

    Returns:
        (nnz,) tensor of dot products, differentiable in ``a`` and ``b``.
    """
    check(a.dim() == 2 and b.dim() == 2, "sddmm_csr",
          f"a and b must be 2-D, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    check(a.dtype in FLOAT_NAMES and b.dtype == a.dtype, "sddmm_csr",
          f"a and b must share float32 or float64, got {a.dtype} and {b.dtype}")
    check(a.shape[1] == b.shape[1], "sddmm_csr",
          f"a and b must have the same width, got {a.shape[1]} and {b.shape[1]}")
    check(rowptr.numel() - 1 == a.shape[0], "sddmm_csr",
          f"the pattern has {rowptr.numel() - 1} rows but a has {a.shape[0]}")
    check_csr("sddmm_csr", rowptr, col, None, b.shape[0], validate_values=validate)
    check(a.device == b.device == rowptr.device, "sddmm_csr",
          "rowptr, col, a and b must be on one device")
    t_rowptr, t_col, t_perm = transpose if transpose is not None else (None, None, None)
    return _sddmm_csr(rowptr.contiguous(), col.contiguous(), a, b, t_rowptr, t_col, t_perm)
