"""feature_head epilogue in Triton: a block of BLOCK_N rows per program, the whole (padded) row
width in one tile.

forward   a = y + b;  h = a if a > 0 else slope·a;  n = max(‖h‖, eps);  out = h / n
backward  g_h = (g - out·<g, out>) / n   (g / n where the norm was clamped: the clamp has no grad)
          g_a = g_h if out > 0 else slope·g_h        (slope >= 0: out and a share their sign)
"""

import torch
import triton
import triton.language as tl

from .._tensors import new_output

EPS = tl.constexpr(1e-12)  # F.normalize's clamp; a constexpr so kernels may read it


@triton.jit
def _feature_head_fwd_kernel(
    y_ptr,  # (N, D) x @ weight.T, row-major
    bias_ptr,  # (D,)
    out_ptr,  # (N, D) output, row-major
    norm_ptr,  # (N,) clamped row norms (written when NORMALIZE)
    n_rows,
    d,
    slope_ptr,  # (1,) leaky-ReLU slope in y's dtype (read when HAS_ACT)
    HAS_ACT: tl.constexpr,
    NORMALIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_D)
    ok = (rows < n_rows)[:, None] & (cols < d)[None, :]
    acc_t = tl.float64 if y_ptr.dtype.element_ty == tl.float64 else tl.float32
    eps = tl.full([], EPS, acc_t)  # in the accumulator dtype
    at = rows[:, None] * d + cols[None, :]
    h = tl.load(y_ptr + at, mask=ok, other=0.0).to(acc_t)
    h += tl.load(bias_ptr + cols, mask=cols < d, other=0.0).to(acc_t)[None, :]
    if HAS_ACT:
        h = tl.where(h > 0, h, h * tl.load(slope_ptr).to(acc_t))
    h = tl.where(ok, h, 0.0)
    if NORMALIZE:
        # a NaN norm stays NaN (F.normalize's clamp keeps it; the GPU's default max would drop it)
        norm = tl.maximum(tl.sqrt(tl.sum(h * h, axis=1)), eps, propagate_nan=tl.PropagateNan.ALL)
        h = h / norm[:, None]
        tl.store(norm_ptr + rows, norm, mask=rows < n_rows)
    tl.store(out_ptr + at, h, mask=ok)


@triton.jit
def _feature_head_bwd_kernel(
    grad_ptr,  # (N, D) incoming gradient, row-major
    out_ptr,  # (N, D) forward output
    norm_ptr,  # (N,) clamped row norms (read when NORMALIZE)
    grad_a_ptr,  # (N, D) gradient w.r.t. the pre-activation x @ weight.T + bias
    n_rows,
    d,
    slope_ptr,  # (1,) leaky-ReLU slope in y's dtype (read when HAS_ACT)
    HAS_ACT: tl.constexpr,
    NORMALIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_D)
    ok = (rows < n_rows)[:, None] & (cols < d)[None, :]
    acc_t = tl.float64 if grad_ptr.dtype.element_ty == tl.float64 else tl.float32
    eps = tl.full([], EPS, acc_t)
    at = rows[:, None] * d + cols[None, :]
    g = tl.load(grad_ptr + at, mask=ok, other=0.0).to(acc_t)
    out = tl.load(out_ptr + at, mask=ok, other=0.0).to(acc_t)
    if NORMALIZE:
        norm = tl.load(norm_ptr + rows, mask=rows < n_rows, other=1.0).to(acc_t)
        radial = tl.where(norm > eps, tl.sum(g * out, axis=1), 0.0)
        g = (g - out * radial[:, None]) / norm[:, None]
    if HAS_ACT:
        g = tl.where(out > 0, g, g * tl.load(slope_ptr).to(acc_t))
    tl.store(grad_a_ptr + at, g, mask=ok)


def _slope(negative_slope, like):
    # a tensor, not a Python float: Triton passes Python floats to a GPU kernel as fp32
    return like if negative_slope is None else torch.full((1,), negative_slope, dtype=like.dtype,
                                                           device=like.device)


def _blocks(n_rows, d, device):
    block_d = triton.next_power_of_2(max(d, 1))
    # about 4k elements per program on GPUs; small programs keep interpreter grids readable
    block_n = max(1, min(64, 4096 // block_d)) if device.type != "cpu" else 16
    return block_n, block_d, (triton.cdiv(n_rows, block_n),)


def feature_head_triton(y: torch.Tensor, bias: torch.Tensor, negative_slope, normalize: bool):
    """(out, norm) of the epilogue applied to ``y = x @ weight.T`` (contiguous)."""
    n_rows, d = y.shape
    out = new_output(n_rows, d, like=y)
    norm = new_output(n_rows if normalize else 0, like=y)
    if n_rows == 0:
        return out, norm
    block_n, block_d, grid = _blocks(n_rows, d, y.device)
    _feature_head_fwd_kernel[grid](
        y, bias, out, norm if normalize else out, n_rows, d, _slope(negative_slope, y),
        HAS_ACT=negative_slope is not None, NORMALIZE=normalize, BLOCK_N=block_n,
        BLOCK_D=block_d)
    return out, norm


def feature_head_backward_triton(grad: torch.Tensor, out: torch.Tensor, norm: torch.Tensor,
                                 negative_slope, normalize: bool):
    n_rows, d = out.shape
    grad_a = new_output(n_rows, d, like=out)
    if n_rows == 0:
        return grad_a
    block_n, block_d, grid = _blocks(n_rows, d, out.device)
    _feature_head_bwd_kernel[grid](
        grad, out, norm if normalize else out, grad_a, n_rows, d, _slope(negative_slope, out),
        HAS_ACT=negative_slope is not None, NORMALIZE=normalize, BLOCK_N=block_n,
        BLOCK_D=block_d)
    return grad_a
