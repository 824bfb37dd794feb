"""knn_graph in Triton: one program per block of BLOCK_R rows of the unit-norm features walks all
rows in tiles of BLOCK_N, scoring a tile with ``tl.dot`` over chunks of BLOCK_D columns (raw
image features are 4,096 wide: no whole row is held) and merging it into a running top-BLOCK_N
per row kept on chip; the n×n score matrix never exists.

Keys as in ``kernels/masked_topk.py`` (whose bitonic network this kernel reuses): the float32
score mapped to an unsigned integer of the same order in the high 32 bits, the complemented id in
the low 32 bits, so one descending integer sort orders by score, then by lower id; key 0 marks an
absent slot (padding, -inf and NaN scores). Before packing, NaN is made -inf explicitly (on GPUs
``tl.maximum`` does not propagate it) and -0.0 is made +0.0 (the two zeros are one score).
Offsets are int64 (row × stride products overflow int32 beyond 2^31 elements).
"""

import torch
import triton
import triton.language as tl

from .._tensors import new_output
from .masked_topk import _bitonic_sort, _topk_keys


@triton.jit
def _knn_graph_fwd_kernel(
    u_ptr,  # (n, d) unit rows, row-major
    col_ptr,  # (n, k) int64 output: neighbour ids
    val_ptr,  # (n, k) float32 output: cosines
    n,
    d,
    k,
    stride_u_row,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    N_LOG2: tl.constexpr,  # log2(BLOCK_N)
    NETWORK_SORT: tl.constexpr,  # sort tiles with _bitonic_sort (interpreter) or tl.sort (GPU)
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs_r = pid * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    r_ok = offs_r < n
    offs_d = tl.arange(0, BLOCK_D).to(tl.int64)
    best = tl.zeros([BLOCK_R, BLOCK_N], dtype=tl.uint64)  # sorted descending; 0 = absent
    for j0 in range(0, n, BLOCK_N):
        offs_j = j0 + tl.arange(0, BLOCK_N).to(tl.int64)
        j_ok = offs_j < n
        s = tl.zeros([BLOCK_R, BLOCK_N], dtype=tl.float32)
        for c0 in range(0, d, BLOCK_D):
            c_ok = (c0 + offs_d) < d
            a = tl.load(u_ptr + offs_r[:, None] * stride_u_row + (c0 + offs_d)[None, :],
                        mask=r_ok[:, None] & c_ok[None, :], other=0.0)
            b = tl.load(u_ptr + offs_j[:, None] * stride_u_row + (c0 + offs_d)[None, :],
                        mask=j_ok[:, None] & c_ok[None, :], other=0.0)
            s += tl.dot(a, tl.trans(b), input_precision="ieee").to(tl.float32)
        absent = (~j_ok)[None, :] | (s != s) | (s == float("-inf"))
        key = _topk_keys(s, offs_j[None, :], absent)
        worst = tl.min(best, axis=1)
        if tl.max((key > worst[:, None]).to(tl.int32)) > 0:
            if NETWORK_SORT:
                key = _bitonic_sort(key, N_LOG2, False, BLOCK_R, 1)
            else:
                key = tl.sort(key, dim=1, descending=False)
            best = _bitonic_sort(tl.maximum(best, key), N_LOG2, True, BLOCK_R, N_LOG2)
    present = best != 0
    ordered = (best >> 32).to(tl.uint32)
    bits = tl.where((ordered >> 31) == 1, ordered ^ 0x80000000,
                    ordered ^ 0xFFFFFFFF).to(tl.uint32)
    values = tl.where(present, bits.to(tl.float32, bitcast=True), float("-inf"))
    ids = tl.where(present, (best.to(tl.uint32) ^ 0xFFFFFFFF).to(tl.int64), -1)
    offs_k = tl.arange(0, BLOCK_N).to(tl.int64)
    out = offs_r[:, None] * k + offs_k[None, :]
    store_mask = r_ok[:, None] & (offs_k[None, :] < k)
    tl.store(col_ptr + out, ids, mask=store_mask)
    tl.store(val_ptr + out, values, mask=store_mask)


# The largest k the kernel takes without spilling on sm_90 (tests/aot_sm90.py: k = 256 spilled 348
# bytes in float32, k = 50 88 bytes in float64); the op serves larger ones with its reference.
MAX_K = 64
MAX_K_FP64 = 16


def knn_graph_triton(u: torch.Tensor, k: int):
    """(col, val) of ``ops.knn_graph`` from unit rows ``u`` (n, d), row-major."""
    n, d = u.shape
    col = new_output(n, k, like=u, dtype=torch.int64)
    val = new_output(n, k, like=u, dtype=torch.float32)
    if n == 0 or k == 0:
        return col, val
    block_n = max(16, triton.next_power_of_2(k))  # a tile is as wide as the kept list
    block_r = 16 if u.device.type == "cpu" else (64 if block_n <= 32 else 32)  # 64 x 64 spilled
    block_d = max(16, min(64, triton.next_power_of_2(max(d, 1))))
    _knn_graph_fwd_kernel[(triton.cdiv(n, block_r),)](
        u, col, val, n, d, k, u.stride(0), BLOCK_R=block_r, BLOCK_N=block_n,
        N_LOG2=block_n.bit_length() - 1, NETWORK_SORT=u.device.type == "cpu", BLOCK_D=block_d,
        num_warps=8 if block_r * block_n >= 2048 else 4)
    return col, val
