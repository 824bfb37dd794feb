"""attentive_distance_topk in Triton: one program per user walks the items in tiles of BLOCK_I.

For a tile, the hidden axis is consumed in chunks of BLOCK_H: the chunk's tanh rows
(BLOCK_I × BLOCK_H, from P_u + Q_i, the pair's norm and b1) feed ``tl.dot`` with the matching
rows of W2^T (BLOCK_H × BLOCK_D), accumulating the tile's (BLOCK_I × BLOCK_D) second-layer
product and the rows' squared tanh norms on chip; nothing of size items × hidden (let alone users
× items × hidden) is ever written. The epilogue (row normalisation, bias, relu, D-scaled softmax,
weighted distance) gives BLOCK_I scores, masked and merged into the user's running top-BLOCK_I
with masked_topk's packed (score, id) keys and bitonic merge.

tanh is written as 1 - 2 / (exp(2x) + 1) (saturates to ±1 without overflow trouble), so the
kernel needs only ``tl.exp``.
"""

import torch
import triton
import triton.language as tl

from .._tensors import new_output
from .masked_topk import _bitonic_sort, _topk_keys

# tl.maximum's GPU default drops a NaN operand (fmax); torch's clamp and relu keep it, so an item
# with NaN features scores NaN and is excluded, as in the reference.
NAN = tl.constexpr(tl.PropagateNan.ALL)
# The largest k and width the kernel takes: at BLOCK_I = 64, BLOCK_D = 128 (8 warps) it needs 255
# registers on sm_90 without spilling, and spills from BLOCK_I = 128 (tests/aot_sm90.py); the op
# serves larger ones with its reference.
MAX_K = 64
MAX_D = 128
MAX_K_FP64, MAX_D_FP64 = 32, 64  # float64 tiles hold twice the registers: 255, no spill there


@triton.jit
def _attentive_distance_topk_fwd_kernel(
    users_ptr,  # (n_users, d) row-major
    items_ptr,  # (n_items, d)
    p_ptr,  # (n_users, hidden): users W_u^T
    q_ptr,  # (n_items, hidden): items W_v^T + features W_f^T
    user_sq_ptr,  # (n_users,)
    item_sq_ptr,  # (n_items,)
    b1_ptr,  # (hidden,)
    w2t_ptr,  # (hidden, d): W2^T row-major
    b2_ptr,  # (d,)
    rowptr_ptr,  # (n_users + 1,) mask row offsets
    col_ptr,  # (nnz,) masked item ids, ascending within a row
    values_ptr,  # (n_users, k) float32 output
    indices_ptr,  # (n_users, k) int64 output
    n_items,
    d,
    hidden,
    k,
    mask_value,  # score given to masked items when HAS_MASK_VALUE
    HAS_MASK_VALUE: tl.constexpr,
    BLOCK_I: tl.constexpr,
    I_LOG2: tl.constexpr,  # log2(BLOCK_I)
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    NETWORK_SORT: tl.constexpr,  # sort tiles with _bitonic_sort (interpreter) or tl.sort (GPU)
    ACC: tl.constexpr,  # compute dtype: the input's (float32 or float64)
):
    u = tl.program_id(0).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < d
    u_row = tl.load(users_ptr + u * d + offs_d, mask=d_ok, other=0.0)
    u_sq = tl.load(user_sq_ptr + u)
    b2 = tl.load(b2_ptr + offs_d, mask=d_ok, other=0.0)
    nxt = tl.load(rowptr_ptr + u).to(tl.int64)
    end = tl.load(rowptr_ptr + u + 1).to(tl.int64)
    best = tl.zeros([1, BLOCK_I], dtype=tl.uint64)  # sorted descending; 0 = absent
    for i0 in range(0, n_items, BLOCK_I):
        offs_i = (i0 + tl.arange(0, BLOCK_I)).to(tl.int64)  # offs_i * hidden passes 2^31
        i_ok = offs_i < n_items
        i_sq = tl.load(item_sq_ptr + offs_i, mask=i_ok, other=0.0)
        inv = 1.0 / tl.maximum(tl.sqrt(u_sq + i_sq), 1e-12, propagate_nan=NAN)
        acc = tl.zeros([BLOCK_I, BLOCK_D], dtype=ACC)
        ss = tl.zeros([BLOCK_I], dtype=ACC)
        for h0 in range(0, hidden, BLOCK_H):
            offs_h = h0 + tl.arange(0, BLOCK_H)
            h_ok = offs_h < hidden
            p = tl.load(p_ptr + u * hidden + offs_h, mask=h_ok, other=0.0)
            b1 = tl.load(b1_ptr + offs_h, mask=h_ok, other=0.0)
            q = tl.load(q_ptr + offs_i[:, None] * hidden + offs_h[None, :],
                        mask=i_ok[:, None] & h_ok[None, :], other=0.0)
            x = (p[None, :] + q) * inv[:, None] + b1[None, :]
            t = 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)
            t = tl.where(h_ok[None, :], t, 0.0)
            ss += tl.sum(t * t, axis=1)
            w2 = tl.load(w2t_ptr + offs_h[:, None] * d + offs_d[None, :],
                         mask=h_ok[:, None] & d_ok[None, :], other=0.0)
            acc += tl.dot(t, w2, input_precision="ieee")
        rn = 1.0 / tl.maximum(tl.sqrt(ss), 1e-12, propagate_nan=NAN)
        a = tl.maximum(acc * rn[:, None] + b2[None, :], 0.0, propagate_nan=NAN)
        a = tl.where(d_ok[None, :], a, float("-inf"))
        e = tl.exp(a - tl.max(a, axis=1)[:, None])
        w = e * (d / tl.sum(e, axis=1))[:, None]
        v = tl.load(items_ptr + offs_i[:, None] * d + offs_d[None, :],
                    mask=i_ok[:, None] & d_ok[None, :], other=0.0)
        diff = w * (u_row[None, :] - v)  # exactly 0 for v = u (w*u - w*v would be fused to an FMA)
        s = (-tl.sum(diff * diff, axis=1)).to(tl.float32)  # ranked as float32
        # Masked items of this tile: walk the user's sorted mask row.
        cur = tl.load(col_ptr + nxt, mask=nxt < end, other=n_items).to(tl.int64)
        while (nxt < end) & (cur < i0 + BLOCK_I):
            if HAS_MASK_VALUE:
                s = tl.where(offs_i == cur, mask_value, s)
            else:
                s = tl.where(offs_i == cur, float("-inf"), s)
            nxt += 1
            cur = tl.load(col_ptr + nxt, mask=nxt < end, other=n_items).to(tl.int64)
        absent = (~i_ok) | (s != s) | (s == float("-inf"))
        key = tl.reshape(_topk_keys(s, offs_i, absent), [1, BLOCK_I])
        if tl.max(key) > tl.min(best):
            if NETWORK_SORT:
                key = _bitonic_sort(key, I_LOG2, False, 1, 1)
            else:
                key = tl.sort(key, dim=1, descending=False)
            best = _bitonic_sort(tl.maximum(best, key), I_LOG2, True, 1, I_LOG2)
    best = tl.reshape(best, [BLOCK_I])
    present = best != 0
    ordered = (best >> 32).to(tl.uint32)
    bits = tl.where((ordered >> 31) == 1, ordered ^ 0x80000000,
                    ordered ^ 0xFFFFFFFF).to(tl.uint32)
    values = tl.where(present, bits.to(tl.float32, bitcast=True), float("-inf"))
    indices = tl.where(present, (best.to(tl.uint32) ^ 0xFFFFFFFF).to(tl.int64), -1)
    offs_k = tl.arange(0, BLOCK_I)
    tl.store(values_ptr + u * k + offs_k, values, mask=offs_k < k)
    tl.store(indices_ptr + u * k + offs_k, indices, mask=offs_k < k)


def attentive_distance_topk_triton(users, items, p, q, user_sq, item_sq, b1, w2t, b2,
                                   mask_rowptr, mask_col, k: int, mask_value):
    """Launcher; arguments as the op's cpp backend receives them (see ops.attentive_distance_topk)."""
    n_users, n_items, d = users.shape[0], items.shape[0], users.shape[1]
    hidden = p.shape[1]
    values = new_output(n_users, k, like=users, dtype=torch.float32)
    indices = new_output(n_users, k, like=users, dtype=torch.int64)
    if n_users == 0 or k == 0:
        return values, indices
    block_i = max(16, triton.next_power_of_2(k))  # a tile is as wide as the kept list
    _attentive_distance_topk_fwd_kernel[(n_users,)](
        users, items, p, q, user_sq, item_sq, b1, w2t, b2, mask_rowptr,
        mask_col if mask_col.numel() else mask_rowptr, values, indices, n_items, d, hidden, k,
        0.0 if mask_value is None else float(mask_value), HAS_MASK_VALUE=mask_value is not None,
        BLOCK_I=block_i, I_LOG2=block_i.bit_length() - 1, BLOCK_H=32,
        BLOCK_D=max(16, triton.next_power_of_2(d)), NETWORK_SORT=users.device.type == "cpu",
        ACC=tl.float64 if users.dtype == torch.float64 else tl.float32, num_warps=4 if block_i <= 32 else 8)
    return values, indices
