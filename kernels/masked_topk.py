"""masked_topk in Triton: one program per block of BLOCK_U users walks the items in tiles of
BLOCK_I, scoring a tile with ``tl.dot`` and merging it into a running top-BLOCK_I per user held on
chip; the U×I score matrix never exists.

Ranking works on packed 64-bit keys: the high 32 bits are the float32 score mapped to an unsigned
integer of the same order (flip every bit of a negative, set the sign bit of a non-negative), the
low 32 bits are the complemented item id (``item ^ 0xFFFFFFFF``), so one descending integer sort orders by score and then by
lower item id. Key 0 marks an absent slot (padding, excluded items, -inf and NaN scores).

Merge of a tile into the running list: the running keys are sorted descending, the tile's keys
ascending; their elementwise maximum holds the BLOCK_I largest keys of the union (the first step of
a bitonic merge), and the last stage of a bitonic network restores descending order. The
merge network is written with reshape/split/join so every step is elementwise. Tiles are sorted
by ``tl.sort`` on GPUs and by the same network in the interpreter, where ``tl.sort`` is very slow
(the full network, written this way, stalls Triton's GPU compiler; the merge stage alone does not). Tiles whose keys all lie below every
user's current worst key skip the merge.
"""

import torch
import triton
import triton.language as tl

from .._tensors import new_output

# The largest k and width the kernel takes: at BLOCK_I = 256, BLOCK_D = 128 it needs 255 registers
# on sm_90 without spilling (tests/aot_sm90.py); the op serves larger ones with its reference.
MAX_K = 256
MAX_D = 128
MAX_K_FP64, MAX_D_FP64 = 64, 64  # float64 tiles hold twice the registers


@triton.jit
def _compare_swap(x, s: tl.constexpr, j: tl.constexpr, N_LOG2: tl.constexpr,
                  DESCENDING: tl.constexpr, ROWS: tl.constexpr):
    # One bitonic step on each row of x (ROWS, 2**N_LOG2): pairs at distance 2**j, direction
    # alternating every 2**s elements (stage s of the network; s == N_LOG2 is one direction).
    # Pairs are exposed on a trailing axis of 2 and split, which keeps every step elementwise.
    m: tl.constexpr = 1 << (N_LOG2 - j - 1)
    b: tl.constexpr = 1 << j
    y = tl.permute(tl.reshape(x, [ROWS, m, 2, b]), (0, 1, 3, 2))
    first, second = tl.split(y)
    flip = (((tl.arange(0, m) >> (s - j - 1)) & 1) == 1)[None, :, None]
    if DESCENDING:
        big_first = ~flip
    else:
        big_first = flip
    hi = tl.maximum(first, second)
    lo = tl.minimum(first, second)
    y = tl.join(tl.where(big_first, hi, lo), tl.where(big_first, lo, hi))
    return tl.reshape(tl.permute(y, (0, 1, 3, 2)), [ROWS, 2 * m * b])


@triton.jit
def _bitonic_sort(x, N_LOG2: tl.constexpr, DESCENDING: tl.constexpr, ROWS: tl.constexpr,
                  FIRST_STAGE: tl.constexpr):
    # FIRST_STAGE = N_LOG2 sorts a row that is already bitonic (the merge step only).
    for s in tl.static_range(FIRST_STAGE, N_LOG2 + 1):
        for jj in tl.static_range(s):
            x = _compare_swap(x, s, s - 1 - jj, N_LOG2, DESCENDING, ROWS)
    return x


@triton.jit
def _topk_keys(s, ids, absent):
    """Packed keys (module doc) of float32 scores s and int64 item ids; 0 where absent."""
    bits = s.to(tl.uint32, bitcast=True)
    bits = tl.where(bits == 0x80000000, 0, bits)  # -0.0 ties with +0.0, as the float compare has it
    ordered = tl.where((bits >> 31) == 1, bits ^ 0xFFFFFFFF, bits | 0x80000000).to(tl.uint32)
    key = (ordered.to(tl.uint64) << 32) | (ids.to(tl.uint32) ^ 0xFFFFFFFF).to(tl.uint64)
    return tl.where(absent, 0, key)


@triton.jit
def _masked_topk_fwd_kernel(
    users_ptr,  # (n_users, d) row-major
    items_ptr,  # (n_items, d) row-major
    rowptr_ptr,  # (n_users + 1,) mask row offsets
    col_ptr,  # (nnz,) masked item ids, ascending within a row
    values_ptr,  # (n_users, k) float32 output
    indices_ptr,  # (n_users, k) int64 output
    n_users,
    n_items,
    d,
    k,
    mask_value,  # score given to masked items when HAS_MASK_VALUE
    stride_users_row,
    stride_items_row,
    HAS_MASK_VALUE: tl.constexpr,
    BLOCK_U: tl.constexpr,
    BLOCK_I: tl.constexpr,
    I_LOG2: tl.constexpr,  # log2(BLOCK_I)
    NETWORK_SORT: tl.constexpr,  # sort tiles with _bitonic_sort (interpreter) or tl.sort (GPU)
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs_u = pid * BLOCK_U + tl.arange(0, BLOCK_U)
    u_ok = offs_u < n_users
    offs_d = tl.arange(0, BLOCK_D)
    u_tile = tl.load(users_ptr + offs_u[:, None] * stride_users_row + offs_d[None, :],
                     mask=u_ok[:, None] & (offs_d[None, :] < d), other=0.0)
    nxt = tl.load(rowptr_ptr + offs_u, mask=u_ok, other=0).to(tl.int64)
    end = tl.load(rowptr_ptr + offs_u + 1, mask=u_ok, other=0).to(tl.int64)
    cur = tl.load(col_ptr + nxt, mask=nxt < end, other=n_items).to(tl.int64)
    best = tl.zeros([BLOCK_U, BLOCK_I], dtype=tl.uint64)  # sorted descending; 0 = absent
    for i0 in range(0, n_items, BLOCK_I):
        offs_i = (i0 + tl.arange(0, BLOCK_I)).to(tl.int64)  # offs_i * stride passes 2^31
        i_ok = offs_i < n_items
        i_tile = tl.load(items_ptr + offs_i[:, None] * stride_items_row + offs_d[None, :],
                         mask=i_ok[:, None] & (offs_d[None, :] < d), other=0.0)
        s = tl.dot(u_tile, tl.trans(i_tile), input_precision="ieee").to(tl.float32)
        absent = (~i_ok)[None, :] | (s != s) | (s == float("-inf"))
        # Masked items of this tile: advance every user's pointer through its sorted mask row.
        hit = (nxt < end) & (cur < i0 + BLOCK_I)
        while tl.max(hit.to(tl.int32), axis=0) > 0:
            at = hit[:, None] & (offs_i[None, :] == cur[:, None])
            if HAS_MASK_VALUE:
                s = tl.where(at, mask_value, s)
            else:
                absent = absent | at
            nxt += hit.to(tl.int64)
            cur = tl.load(col_ptr + nxt, mask=nxt < end, other=n_items).to(tl.int64)
            hit = (nxt < end) & (cur < i0 + BLOCK_I)
        if HAS_MASK_VALUE:
            absent = absent | (s != s) | (s == float("-inf"))
        key = _topk_keys(s, offs_i[None, :], absent)
        worst = tl.min(best, axis=1)
        if tl.max((key > worst[:, None]).to(tl.int32)) > 0:
            if NETWORK_SORT:
                key = _bitonic_sort(key, I_LOG2, False, BLOCK_U, 1)
            else:
                key = tl.sort(key, dim=1, descending=False)
            best = _bitonic_sort(tl.maximum(best, key), I_LOG2, True, BLOCK_U, I_LOG2)
    present = best != 0
    ordered = (best >> 32).to(tl.uint32)
    bits = tl.where((ordered >> 31) == 1, ordered ^ 0x80000000,
                    ordered ^ 0xFFFFFFFF).to(tl.uint32)
    values = tl.where(present, bits.to(tl.float32, bitcast=True), float("-inf"))
    item = (best.to(tl.uint32) ^ 0xFFFFFFFF).to(tl.int64)  # low half: the complemented id
    indices = tl.where(present, item, -1)
    offs_k = tl.arange(0, BLOCK_I)
    out = offs_u[:, None] * k + offs_k[None, :]
    store_mask = u_ok[:, None] & (offs_k[None, :] < k)
    tl.store(values_ptr + out, values, mask=store_mask)
    tl.store(indices_ptr + out, indices, mask=store_mask)


def masked_topk_triton(users: torch.Tensor, items: torch.Tensor, mask_rowptr: torch.Tensor,
                       mask_col: torch.Tensor, k: int, mask_value):
    n_users, n_items, d = users.shape[0], items.shape[0], users.shape[1]
    values = new_output(n_users, k, like=users, dtype=torch.float32)
    indices = new_output(n_users, k, like=users, dtype=torch.int64)
    if n_users == 0 or k == 0:
        return values, indices
    block_i = max(16, triton.next_power_of_2(k))  # a tile is as wide as the kept list
    # 16 users per program (tl.dot's least M): a 4,096-user batch is 256 programs, two per SM of
    # an H100; 64 users per program made 64 programs and spilled at 255 registers from k = 17
    # (tests/aot_sm90.py reports registers). Keys in registers grow with BLOCK_I: 8 warps from 64.
    block_u = 16
    block_d = max(16, triton.next_power_of_2(d))
    grid = (triton.cdiv(n_users, block_u),)
    _masked_topk_fwd_kernel[grid](
        users, items, mask_rowptr, mask_col if mask_col.numel() else mask_rowptr, values, indices,
        n_users, n_items, d, k, 0.0 if mask_value is None else float(mask_value),
        users.stride(0), items.stride(0), HAS_MASK_VALUE=mask_value is not None,
        BLOCK_U=block_u, BLOCK_I=block_i, I_LOG2=block_i.bit_length() - 1,
        NETWORK_SORT=users.device.type == "cpu", BLOCK_D=block_d,
        num_warps=8 if block_i >= 64 else 4)
    return values, indices
