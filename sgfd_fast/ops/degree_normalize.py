"""degree_normalize: the weighted-degree normalisation of a CSR graph, differentiable in its values.

    deg[i] = eps + Σ_{e in row i} val[e]                       (weighted degree: row sums)
    sym:  out[e] = deg[r]^-1/2 · val[e] · deg[c]^-1/2           (D^-1/2 A D^-1/2)
    rw:   out[e] = deg[r]^-1 · val[e]                           (D^-1 A)
    with r = row(e), c = col[e]; a zero degree contributes 0 (MMRec: the inf is set to 0).

This is MMRec's ``compute_normalized_laplacian`` / ``get_sparse_laplacian`` (``norm_type`` 'sym'
or 'rw'), which LATTICE applies to its learned kNN graph (cosine values, the degree of row i its
row sum, on both sides, even though a kNN graph is not symmetric) and MGCN and LATTICE to their
frozen ones; FREEDOM applies 'sym' to a kNN pattern of ones with ``eps = 1e-7`` (values 1/k).
A negative degree (a row of negative cosines) gives NaN in 'sym', as ``torch.pow`` does in MMRec.

Backward (g = dout, s = deg^-1/2 or deg^-1, s' = ds/ddeg, both 0 where deg = 0):
    sym: dval[e] = g[e]·s[r]·s[c] + s'[r]·(R[r] + C[r]),
         R[i] = Σ_{row(e)=i} g[e]·val[e]·s[col e],  C[i] = Σ_{col(e)=i} g[e]·val[e]·s[row e]
    rw:  dval[e] = g[e]·s[r] + s'[r]·Σ_{row(e)=r} g·val
(deg[r] depends on every value of row r, and s[i] reaches the edges of row i and column i.)

Shapes: rowptr (n_rows + 1,), col (nnz,) sharing int32/int64; val (nnz,) float32/float64 (the
dtype of the result). 'sym' needs a square graph (col < n_rows).

Backends: reference (PyTorch gathers and index_add; its autograd is the oracle of the formula),
cpp (OpenMP over rows for the degrees and edges; the column sums C of the backward in one
sequential pass: bitwise reproducible). Forward and backward are both custom ops.
"""

from __future__ import annotations

import numbers

import torch

from .. import _backend, _ext
from .._tensors import FLOAT_NAMES, INDEX_NAMES, dense, new_output
from ._common import check, check_csr

__all__ = ["degree_normalize", "degree_normalize_reference"]

NORMALIZATIONS = ("sym", "rw")


def _rows(rowptr, col):
    return torch.repeat_interleave(torch.arange(rowptr.numel() - 1, device=col.device),
                                   rowptr.diff().long(), output_size=col.numel())


def _scales(deg, normalization):
    """s and s' of the degrees, pinned to 0 where deg == 0 (without NaN in autograd)."""
    zero = deg == 0
    safe = torch.where(zero, 1.0, deg)
    power = -0.5 if normalization == "sym" else -1.0
    s = torch.where(zero, 0.0, safe.pow(power))
    ds = torch.where(zero, 0.0, power * safe.pow(power - 1.0))
    return s, ds


def degree_normalize_reference(rowptr: torch.Tensor, col: torch.Tensor, val: torch.Tensor,
                               normalization: str = "sym", eps: float = 0.0) -> torch.Tensor:
    row = _rows(rowptr, col)
    deg = val.new_zeros(rowptr.numel() - 1).index_add(0, row, val) + eps
    s, _ = _scales(deg, normalization)
    if normalization == "sym":
        return s[row] * val * s[col.long()]
    return s[row] * val


def _degree_normalize_backward_reference(rowptr, col, val, grad, normalization, eps):
    row, c = _rows(rowptr, col), col.long()
    n = rowptr.numel() - 1
    deg = val.new_zeros(n).index_add(0, row, val) + eps
    s, ds = _scales(deg, normalization)
    gv = grad * val
    if normalization == "sym":
        around = gv.new_zeros(n).index_add(0, row, gv * s[c]).index_add(0, c, gv * s[row])
        return grad * s[row] * s[c] + ds[row] * around[row]
    return grad * s[row] + ds[row] * gv.new_zeros(n).index_add(0, row, gv)[row]


@torch.library.custom_op("sgfd_fast::degree_normalize", mutates_args=())
def _degree_normalize(rowptr: torch.Tensor, col: torch.Tensor, val: torch.Tensor,
                      normalization: str, eps: float) -> torch.Tensor:
    return degree_normalize_reference(rowptr, col, val, normalization, eps)


@_degree_normalize.register_fake
def _degree_normalize_fake(rowptr, col, val, normalization, eps):
    return val.new_empty(val.shape)


@torch.library.custom_op("sgfd_fast::degree_normalize_backward", mutates_args=())
def _degree_normalize_backward_op(rowptr: torch.Tensor, col: torch.Tensor, val: torch.Tensor,
                                  grad: torch.Tensor, normalization: str,
                                  eps: float) -> torch.Tensor:
    return _degree_normalize_backward_reference(rowptr, col, val, grad, normalization, eps)


@_degree_normalize_backward_op.register_fake
def _degree_normalize_backward_fake(rowptr, col, val, grad, normalization, eps):
    return val.new_empty(val.shape)


def _cpp(backward):
    def run(rowptr, col, val, *rest):
        grad = dense(rest[0]) if backward else None
        normalization, eps = rest[-2:]
        val = dense(val)
        out = new_output(val.numel(), like=val)
        _ext.cpu.degree_normalize(rowptr=rowptr.data_ptr(), col=col.data_ptr(),
                                  val=val.data_ptr(), grad=0 if grad is None else grad.data_ptr(),
                                  out=out.data_ptr(), n_rows=rowptr.numel() - 1,
                                  symmetric=normalization == "sym", eps=eps,
                                  index_dtype=INDEX_NAMES[rowptr.dtype],
                                  dtype=FLOAT_NAMES[val.dtype])
        return out
    return run


def _setup_context(ctx, inputs, output):
    rowptr, col, val, normalization, eps = inputs
    ctx.save_for_backward(rowptr, col, val)
    ctx.normalization, ctx.eps = normalization, eps


def _degree_normalize_backward(ctx, grad):
    rowptr, col, val = ctx.saved_tensors
    grad_val = _degree_normalize_backward_op(rowptr, col, val, grad.contiguous(),
                                             ctx.normalization, ctx.eps)
    return None, None, grad_val, None, None


_degree_normalize.register_autograd(_degree_normalize_backward, setup_context=_setup_context)
_backend.define("degree_normalize", _degree_normalize, degree_normalize_reference)
_backend.register("degree_normalize", "cpu", "cpp", _cpp(backward=False))
_backend.define("degree_normalize_backward", _degree_normalize_backward_op,
                _degree_normalize_backward_reference)
_backend.register("degree_normalize_backward", "cpu", "cpp", _cpp(backward=True))


def degree_normalize(rowptr: torch.Tensor, col: torch.Tensor, val: torch.Tensor,
                     normalization: str = "sym", eps: float = 0.0, *,
                     validate: bool = True) -> torch.Tensor:
    """Values of D^-1/2 A D^-1/2 ('sym') or D^-1 A ('rw') on A's pattern, D = row sums of A + eps.

    Args:
        rowptr: (n_rows + 1,) int32/int64 row offsets.
        col: (nnz,) column indices, same dtype ('sym': below n_rows).
        val: (nnz,) float32/float64 edge values; the result is differentiable in them.
        normalization: ``"sym"`` or ``"rw"`` (MMRec's ``norm_type``).
        eps: added to every degree (FREEDOM: 1e-7; LATTICE, MGCN: 0).
        validate: check the CSR (offsets, column range; one pass and a host sync).

    Returns:
        (nnz,) normalised values of val's dtype; 0 on the rows of zero degree.

    Raises:
        InputError: malformed CSR, val not (nnz,) float32/float64 on col's device, an unknown
            normalization, eps not a finite number.
    """
    op = "degree_normalize"
    check(isinstance(val, torch.Tensor) and val.dtype in FLOAT_NAMES, op,
          f"val must be a float32 or float64 tensor, got "
          f"{val.dtype if isinstance(val, torch.Tensor) else type(val).__name__}")
    check(normalization in NORMALIZATIONS, op,
          f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
    check(isinstance(eps, numbers.Real) and not isinstance(eps, bool)
          and abs(float(eps)) < float("inf"), op, f"eps must be a finite number, got {eps!r}")
    n_rows = rowptr.numel() - 1
    check_csr(op, rowptr, col, val, n_rows if normalization == "sym" else None,
              validate_values=validate)
    return _degree_normalize(rowptr.contiguous(), col.contiguous(), val, normalization,
                             float(eps))
