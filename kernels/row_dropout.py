"""row_dropout in Triton: a (BLOCK_N rows × BLOCK_D columns) tile per program, each element's
hash in uint64 registers — the same mask bits as the reference (ops/row_dropout.py)."""

import torch
import triton
import triton.language as tl

from .._tensors import new_output


@triton.jit
def _mix64(z):
    """splitmix64's output mixer on uint64 (wrapping multiplies, logical shifts)."""
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    return z ^ (z >> 31)


# key is never specialised: Triton turns an int argument equal to 1 into a constexpr, which has
# no .to() (tests/aot_sm90.py compiles key = 1 for sm_90).
@triton.jit(do_not_specialize=["key"])
def _row_dropout_fwd_kernel(
    x_ptr,  # (N, D) row-major
    ids_ptr,  # (N,) int64
    scale_ptr,  # (1,) 1 - p in x's dtype
    out_ptr,  # (N, D) row-major
    n_rows,
    d,
    p,  # float32, as the reference compares
    key,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_ok = rows < n_rows
    ok = row_ok[:, None] & (cols < d)[None, :]
    ids = tl.load(ids_ptr + rows, mask=row_ok, other=0).to(tl.uint64, bitcast=True)
    k = key.to(tl.int64).to(tl.uint64, bitcast=True)
    row_hash = _mix64(k + ids * 0x9E3779B97F4A7C15)
    h = _mix64(row_hash[:, None] + cols.to(tl.uint64)[None, :] * 0xD1B54A32D192ED03)
    uniform = (h >> 40).to(tl.float32) * 5.9604644775390625e-08  # 2^-24
    at = rows[:, None] * d + cols[None, :]
    x = tl.load(x_ptr + at, mask=ok, other=0.0)
    scale = tl.load(scale_ptr)
    keep = (uniform >= p).to(x.dtype)
    # correctly rounded, as torch's CPU division (Triton's default fp32 "/" is approximate)
    out = tl.math.div_rn(x * keep, scale) if x.dtype == tl.float32 else x * keep / scale
    tl.store(out_ptr + at, out, mask=ok)


def row_dropout_triton(x: torch.Tensor, ids: torch.Tensor, p: float, key: int) -> torch.Tensor:
    """x (N, D) row-major float32/float64, ids (N,) int64 → x * keep / (1 - p)."""
    n_rows, d = x.shape
    out = new_output(n_rows, d, like=x)
    if out.numel() == 0:
        return out
    scale = torch.tensor([1.0 - p], dtype=x.dtype, device=x.device)
    block_d = min(128, triton.next_power_of_2(d))
    block_n = max(1, 2048 // block_d)
    grid = (triton.cdiv(n_rows, block_n), triton.cdiv(d, block_d))
    _row_dropout_fwd_kernel[grid](x, ids, scale, out, n_rows, d, p, key,
                                  BLOCK_N=block_n, BLOCK_D=block_d)
    return out
