"""Raw-buffer plumbing between torch tensors and the compiled kernels (C++, CUDA, Triton).

The bottom of the import graph: it imports only torch, so ``sgfd_fast.ops``, ``sgfd_fast.kernels``
(the Triton launchers), ``sampling`` and ``graph`` all share it without importing each other.
Kernels never see a torch type: callers pass row-major buffers (:func:`dense`), their addresses
(:func:`addr`), dtype names (:data:`FLOAT_NAMES`, :data:`INDEX_NAMES`) and, on CUDA, the stream
handle (:func:`cuda_stream`), and allocate outputs with :func:`new_output`.
"""

from __future__ import annotations

import os

import torch

# oneDNN, which runs torch's bf16 matrix products on CPU, caches up to 1,024 primitives by default,
# and a cached bf16 GEMM primitive keeps its scratchpad (a packed copy of an operand: 8 MiB for a
# 1,044 x 4,096 one). A training step's shapes follow its batch's distinct items, so the cache
# almost never hit and grew by about 7 MiB a step (BM3+SGFD on office-synthetic in bf16) up to
# gigabytes. Uncached, a bf16 epoch is as fast (docs/BENCHMARKS.md, "Peak resident set"). oneDNN
# reads the variable when it creates its first primitive; a value the user set is kept.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "0")

# Dtype names the compiled modules dispatch on (csrc/common.h).
FLOAT_NAMES = {torch.float32: "float32", torch.float64: "float64"}
INDEX_NAMES = {torch.int32: "int32", torch.int64: "int64"}


def dense(x: torch.Tensor) -> torch.Tensor:
    """Kernels read row-major buffers: views (transposes, expands, slices) are copied once."""
    return x if x.is_contiguous() else x.contiguous()


def addr(t: torch.Tensor | None) -> int:
    """Address of ``t``'s first element, or 0 (a null pointer) for an absent optional input."""
    return 0 if t is None else t.data_ptr()


def cuda_stream(t: torch.Tensor) -> int:
    """Handle of the current CUDA stream on ``t``'s device, for kernels that launch on it."""
    return torch.cuda.current_stream(t.device).cuda_stream


def new_output(*shape: int, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Uninitialised output for a kernel to fill.

    With ``SGFD_FAST_POISON=1`` (the test suite sets it) outputs start as NaN (or -1 for integer
    outputs) so that an element a kernel forgets to write fails the comparison.
    """
    dtype = dtype or like.dtype
    if os.environ.get("SGFD_FAST_POISON") == "1":
        fill = float("nan") if dtype.is_floating_point else -1
        return torch.full(shape, fill, dtype=dtype, device=like.device)
    return torch.empty(shape, dtype=dtype, device=like.device)


def bf16_linear(x: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` as a bf16 product: x (N, F) and weight (D, F) rounded to
    bfloat16 (no copy for a bfloat16 x), multiplied by torch's GEMM (oneDNN on CPU, cuBLAS on
    CUDA: float32 accumulation, its (N, D) output rounded once to bfloat16), widened to float32,
    then the float32 bias (D,) added. Returns (N, D) float32. Under autograd the backward products
    run in bf16 too and the gradients of float32 inputs arrive in float32 (the casts'
    backward). What ``precision: bf16`` means by a dense product (``models.heads.Linear``,
    ``ops.feature_head``, ``ops.collapse_linear_stack``)."""
    bf16 = torch.bfloat16
    out = torch.nn.functional.linear(x.to(bf16), weight.to(bf16)).float()
    return out if bias is None else out + bias
