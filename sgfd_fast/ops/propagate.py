"""propagate: LightGCN-style multi-layer propagation with the layer mean fused.

    out = 1/(L+1) * sum_{k=0}^{L} A^k x

A is a symmetric normalized adjacency in CSR (rowptr, col, val) — e.g. D^-1/2 A D^-1/2 of the
user–item bipartite graph. Because A = Aᵀ and the map is linear, the backward is the same
propagation applied to the incoming gradient: no transpose, no saved activations. ``val`` is a
constant (no gradient). Shapes: x (N, d), out (N, d); n_layers >= 0 (0 returns x).

Backends: reference (spmm_csr_reference per layer); cpp (OpenMP, one parallel region for all
layers, contiguous row ranges of equal nnz, register-blocked over the width, the layer mean fused
into the epilogue); cuda (a group of lanes per row, 16-byte loads, one launch per layer,
ping-pong layer buffers, the running sum in ``out``); triton (spmm_csr's Triton scheme with the
fused epilogue: a fallback on CUDA; CI runs it under the interpreter).

Contract: the caller guarantees symmetry (``sgfd_fast.graph.CSR.symmetric`` says so); isolated
nodes (empty rows) propagate zeros after layer 0; every output element is written; cpp, cuda and
triton are bitwise reproducible run to run (one owner per output element, fixed summation order,
no atomics), cpp also across thread counts. ``out=`` writes a non-differentiable result into a
caller's buffer (a model's per-step buffer, reused across steps: ``models/bm3.py``).
"""

from __future__ import annotations

from typing import Sequence

import torch

from .. import _backend, _ext
from .._tensors import FLOAT_NAMES, INDEX_NAMES, addr, cuda_stream, dense, new_output
from ._common import check, check_csr
from .spmm_csr import spmm_csr_reference

__all__ = ["propagate", "propagate_reference"]


def propagate_reference(rowptr: torch.Tensor, col: torch.Tensor, val: torch.Tensor,
                        x: torch.Tensor, n_layers: int) -> torch.Tensor:
    layer, total = x, x
    for _ in range(n_layers):
        layer = spmm_csr_reference(rowptr, col, val, layer)
        total = total + layer
    return total / (n_layers + 1)


@torch.library.custom_op("sgfd_fast::propagate", mutates_args=())
def _propagate(rowptr: torch.Tensor, col: torch.Tensor, val: torch.Tensor, x: torch.Tensor,
               n_layers: int) -> torch.Tensor:
    return propagate_reference(rowptr, col, val, x, n_layers)


@_propagate.register_fake
def _propagate_fake(rowptr, col, val, x, n_layers):
    return torch.empty_like(x)


def _buffers(x, n_layers, scratch=()):
    """Ping-pong layer buffers: layer k < L is stored for layer k + 1; the last is never stored.
    ``scratch``: a caller's buffers, used first."""
    need = min(max(n_layers - 1, 0), 2)
    bufs = list(scratch[:need]) + [torch.empty_like(x) for _ in range(need - len(scratch))]
    return tuple(bufs + [None] * (2 - need))


def _propagate_cpp(rowptr, col, val, x, n_layers, out=None, scratch=()):
    x = dense(x)
    if n_layers == 0:
        return x.clone() if out is None else out.copy_(x)
    out = new_output(*x.shape, like=x) if out is None else out
    buf0, buf1 = _buffers(x, n_layers, scratch)
    _ext.cpu.propagate(rowptr=rowptr.data_ptr(), col=col.data_ptr(), val=val.data_ptr(),
                       x=x.data_ptr(), out=out.data_ptr(), buf0=addr(buf0), buf1=addr(buf1),
                       n_rows=x.shape[0], d=x.shape[1], n_layers=n_layers,
                       index_dtype=INDEX_NAMES[rowptr.dtype], dtype=FLOAT_NAMES[x.dtype])
    return out


def _propagate_cuda(rowptr, col, val, x, n_layers, out=None, scratch=()):
    x = dense(x)
    if n_layers == 0:
        return x.clone() if out is None else out.copy_(x)
    out = new_output(*x.shape, like=x) if out is None else out
    buf0, buf1 = _buffers(x, n_layers, scratch)
    with torch.cuda.device(x.device):
        _ext.cuda.propagate(rowptr=rowptr.data_ptr(), col=col.data_ptr(), val=val.data_ptr(),
                            x=x.data_ptr(), out=out.data_ptr(), buf0=addr(buf0), buf1=addr(buf1),
                            n_rows=x.shape[0], d=x.shape[1], n_layers=n_layers,
                            index_dtype=INDEX_NAMES[rowptr.dtype], dtype=FLOAT_NAMES[x.dtype],
                            stream=cuda_stream(x))
    return out


def _propagate_triton(rowptr, col, val, x, n_layers):
    from ..kernels.propagate import propagate_triton

    return propagate_triton(rowptr, col, val, dense(x), n_layers)


def _setup_context(ctx, inputs, output):
    rowptr, col, val, _, n_layers = inputs
    ctx.save_for_backward(rowptr, col, val)
    ctx.n_layers = n_layers


def _propagate_backward(ctx, grad):
    rowptr, col, val = ctx.saved_tensors
    return None, None, None, _propagate(rowptr, col, val, grad, ctx.n_layers), None


_propagate.register_autograd(_propagate_backward, setup_context=_setup_context)
_backend.define("propagate", _propagate, propagate_reference)
_backend.register("propagate", "cpu", "cpp", _propagate_cpp)
_backend.register("propagate", "cuda", "cuda", _propagate_cuda)
_backend.register("propagate", "cuda", "triton", _propagate_triton, priority=1)
_backend.register("propagate", "cpu", "triton", _propagate_triton)


def propagate(rowptr: torch.Tensor, col: torch.Tensor, val: torch.Tensor, x: torch.Tensor,
              n_layers: int, *, validate: bool = True, out: torch.Tensor | None = None,
              scratch: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    """Mean of ``x, A x, ..., A^L x`` for a symmetric CSR matrix A.

    Args:
        rowptr, col, val: CSR of the symmetric (N, N) matrix A (int32/int64 indices, val with
            ``x``'s dtype).
        x: (N, d) float32/float64 node embeddings.
        n_layers: number of propagation layers L >= 0.
        validate: check index ranges (one pass and a host sync); graph objects pass False.
        out: an (N, d) contiguous buffer of x's dtype and device, not overlapping x, to write the
            result into (a caller's buffer reused across steps: a fresh (N, d) output of a large
            graph is mapped and page-faulted in again on every call). Not differentiable: only
            where x needs no gradient or grad mode is off (e.g. inside an autograd.Function).
            The cpp and cuda backends write into it; reference and triton compute, then copy.
            Bitwise the same values as without ``out``.
        scratch: with ``out``, up to two more such buffers for the layers the cpp and cuda
            kernels keep between layers (L >= 2 needs one, L >= 3 two; what is missing is
            allocated per call).

    Returns:
        (N, d) layer mean (``out`` itself when given).
    """
    check(x.dim() == 2, "propagate", f"x must be 2-D (N, d), got shape {tuple(x.shape)}")
    check(x.dtype in FLOAT_NAMES, "propagate", f"x must be float32 or float64, got {x.dtype}")
    check(int(n_layers) >= 0, "propagate", f"n_layers must be >= 0, got {n_layers}")
    check(rowptr.numel() - 1 == x.shape[0], "propagate",
          f"A has {rowptr.numel() - 1} rows but x has {x.shape[0]}: A must be square (N, N)")
    check_csr("propagate", rowptr, col, val, x.shape[0], validate_values=validate)
    check(val.dtype == x.dtype and val.device == x.device, "propagate",
          f"val ({val.dtype}, {val.device}) must match x ({x.dtype}, {x.device})")
    rowptr, col, val = rowptr.contiguous(), col.contiguous(), val.contiguous()
    check(out is not None or not scratch, "propagate", "scratch is only used with out=")
    if out is None:
        return _propagate(rowptr, col, val, x, int(n_layers))
    check(not (torch.is_grad_enabled() and x.requires_grad), "propagate",
          "out= is not differentiable: call it under torch.no_grad() or inside an "
          "autograd.Function, or leave out unset")
    check(len(scratch) <= 2, "propagate", f"scratch holds at most 2 buffers, got {len(scratch)}")
    buffers = {"out": out, **{f"scratch[{k}]": b for k, b in enumerate(scratch)}}
    for name, b in buffers.items():
        check(b.shape == x.shape and b.dtype == x.dtype and b.device == x.device
              and b.is_contiguous(), "propagate",
              f"{name} must be a contiguous {tuple(x.shape)} {x.dtype} tensor on {x.device}, "
              f"got {tuple(b.shape)} {b.dtype} on {b.device}"
              f"{'' if b.is_contiguous() else ' (not contiguous)'}")
    seen = {"x": x}
    for name, b in buffers.items():
        for other, c in seen.items():
            check(not _overlap(b, c), "propagate", f"{name} must not share memory with {other}")
        seen[name] = b
    fn = _backend.implementation("propagate", x.device.type)
    if fn in (_propagate_cpp, _propagate_cuda):
        return fn(rowptr, col, val, x, int(n_layers), out=out, scratch=tuple(scratch))
    return out.copy_(fn(rowptr, col, val, x, int(n_layers)))  # reference, triton


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the memory spans of a and b intersect."""
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    a0, b0 = a.data_ptr(), b.data_ptr()
    return a0 < b0 + b.numel() * b.element_size() and b0 < a0 + a.numel() * a.element_size()
