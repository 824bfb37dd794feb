"""Exact full ranking through a bf16 filter: ``masked_topk(..., precision="bf16")``.

The fp32 path (``masked_topk``'s custom op, whichever backend serves it) computes a score s32
per (user, item). The filter returns that path's top-k, ids and scores bit for bit, in three steps
per block of users:

1. ŝ = users.bf16 @ items.bf16ᵀ (``torch.mm``: bf16 operands, fp32 accumulation, oneDNN's AMX or
   AVX512-BF16 kernels where the CPU has them) and a bound E with |ŝ - s32| <= E per pair (below);
2. per user, τ = the k-th largest lower bound ŝ - E over the items it may rank (a masked item
   counts with its fixed score ``mask_value``, or not at all); an item whose upper bound ŝ + E lies
   below τ scores below at least k items in the fp32 path and cannot be in its top-k, whatever the
   tie rule: every other item is a candidate;
3. the candidates are re-ranked by the fp32 op itself: for a group of users, the same custom op
   runs on those users and on the union C of their candidates (ids ascending, so the lower-id tie
   rule is unchanged; the users' mask rows restricted to C). Items outside a user's candidates but
   inside C are ranked too, harmlessly: they lose to at least k items.

Why step 3 reproduces s32 bit for bit: the C++ kernel's score of a pair is a function of the
user's and the item's rows only, not of the other rows in the call ("row independence"): every
score comes out of the same register-tile code, one accumulator per pair summed in ascending
feature order, whatever tile the pair falls in (zero padding adds exact zeros).
``tests/ops/test_masked_topk_precision.py`` checks it on odd shapes. The filter serves only where
that backend serves the fp32 path (``_ROW_INDEPENDENT``): the reference (one ``torch.mm`` of the
block; BLAS picks kernels by shape) and Triton in its interpreter (numpy's matmul per tile) were
seen to change a score's last bit with the call's other rows, and Triton on GPUs is untested, so
there ``precision="bf16"`` runs the fp32 path.

Speed: the filter is never chosen automatically. On an AMD EPYC (Zen 3, AVX2: bf16 emulated),
one thread, load ≈ 13 on 2 cores, office-like inputs (1,024 users × 2,406 items, d = 64, k =
50): the fp32 kernel takes 36-52 ms, the filter's work besides the bf16 product (bounds,
thresholds, candidate unions, the fp32 calls) 190-290 ms, so it loses even where the product is
free (AMX); here the product itself runs at 0.2-0.9 GFLOP/s against fp32's 10-37. A win needs the
filter inside the C++ kernel: bf16 tile products and bounds feeding the top-k buffer, the
candidates re-scored by the same fp32 micro-kernel (exact by construction).

The bound. For one pair write x = users[u], y = items[i] (width d), s = Σ_c x_c y_c exactly,
T = Σ_c |x_c y_c| <= ‖x‖‖y‖ =: P (Cauchy-Schwarz), v = 2^-8 (bf16's unit roundoff), u = 2^-24
(fp32's), γ_n(u) = n u / (1 - n u), η = 2^-126 (the smallest normal float32: an underflow,
gradual or flushed to zero, errs by less per operation). Sources: the inner-product bound
|fl(xᵀy) - xᵀy| <= γ_d Σ|x_c y_c| for any summation order, with or without fused multiply-adds
(Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., §3.1, eq. 3.5).

* fp32 path: |s32 - s| <= γ_d(u) T + 2dη (float64 inputs: the score computed in float64 and
  rounded once to float32 errs by less).
* bf16 operands: x̂_c = x_c (1 + α_c) + a_c with |α_c| <= v, |a_c| <= η, likewise ŷ; so
  Σ|x̂_c ŷ_c| <= (1+v)² T + (1+v)η √d (‖x‖ + ‖y‖) + dη² =: T̂ and |Σ x̂_c ŷ_c - s| <= T̂ - T.
* fp32 accumulation of the (exact, 16-bit) products, rounded to nearest: |s_acc - Σ x̂_c ŷ_c| <=
  γ_d(u) T̂ + 2dη. (A GPU path would need more: tensor cores add several products at once and
  truncate, Fasi, Higham, Mikaitis, Pranesh, "Numerical behavior of NVIDIA tensor cores", PeerJ CS
  2021; 4u in place of u covers that.)
* the product's output rounded to bf16 (CPU ``torch.mm`` returns bf16): |ŝ - s_acc| <=
  v_o |s_acc| + η, v_o = v (0 where the product returns float32).

Adding them, |ŝ - s32| <= E = c P + a (‖x‖ + ‖y‖) + b with

    c = (1+v)² (1+γ_d(u)) (1+v_o) - 1 + γ_d(u)        (≈ 3 · 2^-8 with v_o = v)
    a = (1+v) η √d (1+γ_d(u)) (1+v_o)
    b = (4d + 4) η (1+v_o)

E and ŝ ∓ E are evaluated in float32: with c + 2^-22 (the rounding of ŝ ∓ E, as |ŝ| + E <= 2P +
...) times 1 + 2^-20 (the rounding of the norms and of E itself), and a, b doubled, the computed
lower bound never exceeds ŝ - E, nor the upper bound fall short of ŝ + E. Non-finite inputs, or
norms above 2^60 (ŝ, E and the bf16 operands then stay far inside float32's range), make the filter
hand the call to the fp32 path, whose result it is by definition.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from .. import _backend
from .._tensors import new_output

__all__ = ["bf16_hardware", "masked_topk_bf16", "score_error_bound", "serves"]

_V = 2.0 ** -8     # bf16 unit roundoff
_U = 2.0 ** -24    # fp32 unit roundoff
_ETA = 2.0 ** -126  # smallest normal float32
_MAX_NORM = 2.0 ** 60
# Users scored at once: the (users x items) float32 blocks (ŝ, E, bounds) stay near 4 MiB each.
_BLOCK_ELEMENTS = 1 << 20
# Users re-ranked by one fp32 call: their candidates' union grows with it, the calls' fixed cost
# shrinks (office-like: 8 -> 289 ms, 32 -> 214 ms, 128 -> 191 ms for 1,024 users).
_GROUP = 32
# (device, backend) whose fp32 scores are row independent (module docstring): the C++ kernel.
_ROW_INDEPENDENT = {("cpu", "cpp")}


def _gamma(n: int, u: float) -> float:
    return n * u / (1.0 - n * u)


def score_error_bound(d: int, *, out_bf16: bool) -> tuple[float, ...]:
    """``(c, a, b)``: |ŝ - s32| <= c ‖x‖‖y‖ + a (‖x‖ + ‖y‖) + b for every pair, margins for
    evaluating it in float32 included (module docstring). ``out_bf16``: the bf16 product returns
    bf16 (CPU) rather than float32."""
    v_o = _V if out_bf16 else 0.0
    g_acc = _gamma(d, _U)
    c = (1 + _V) ** 2 * (1 + g_acc) * (1 + v_o) - 1 + g_acc
    a = (1 + _V) * _ETA * math.sqrt(d) * (1 + g_acc) * (1 + v_o)
    b = (4 * d + 4) * _ETA * (1 + v_o)
    return (c + 2.0 ** -22) * (1 + 2.0 ** -20), 2 * a, 2 * b


@lru_cache(maxsize=None)
def _cpu_flags() -> frozenset:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def bf16_hardware(device: torch.device | str) -> str | None:
    """What multiplies bf16 natively on ``device``: ``"amx_bf16"`` or ``"avx512_bf16"`` (CPU
    flags, Linux ``/proc/cpuinfo``), ``"tensor cores (sm_XY)"`` (CUDA compute capability >= 8.0),
    or None (bf16 products are emulated: slower than float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"tensor cores (sm_{major}{minor})" if major >= 8 else None
    flags = _cpu_flags()
    for isa in ("amx_bf16", "avx512_bf16"):
        if isa in flags:
            return isa
    return None


def serves(device: torch.device) -> bool:
    """Whether the filter can be exact on ``device`` now: a row-independent backend serves the
    fp32 path (``_ROW_INDEPENDENT``)."""
    return (device.type, _backend.serving("masked_topk", device.type)) in _ROW_INDEPENDENT


def masked_topk_bf16(op, users, items, mask_rowptr, mask_col, k, mask_value):
    """The fp32 op ``op``'s result on these arguments (already checked), computed through the
    bf16 filter where it can be; see the module docstring."""
    n_users, n_items = users.shape[0], items.shape[0]
    norms_u = torch.linalg.vector_norm(users.double(), dim=1)
    norms_i = torch.linalg.vector_norm(items.double(), dim=1)
    big = max(float(norms_u.max()) if n_users else 0.0, float(norms_i.max()) if n_items else 0.0)
    if k == 0 or n_users == 0 or k >= n_items or not big <= _MAX_NORM:  # NaN fails too
        return op(users, items, mask_rowptr, mask_col, k, mask_value)
    dev = users.device
    items_b = items.to(torch.bfloat16).T.contiguous()
    nu, ni = norms_u.float(), norms_i.float()
    values = new_output(n_users, k, like=users, dtype=torch.float32)
    indices = new_output(n_users, k, like=users, dtype=torch.int64)
    # A masked item's fp32 score is mask_value exactly; NaN and -inf ones are never ranked.
    fixed = -math.inf if mask_value is None or not mask_value > -math.inf else mask_value
    block = max(_GROUP, _BLOCK_ELEMENTS // n_items)
    for u0 in range(0, n_users, block):
        u1 = min(u0 + block, n_users)
        s = torch.mm(users[u0:u1].to(torch.bfloat16), items_b)
        c, a, b = score_error_bound(users.shape[1], out_bf16=s.dtype == torch.bfloat16)
        s = s.float()
        # E = c‖x‖‖y‖ + a(‖x‖ + max‖y‖) + b >= the pair's bound (a(‖x‖ + ‖y‖) <= the per-user term)
        err = torch.addcmul((a * (nu[u0:u1] + ni.max()) + b)[:, None], c * nu[u0:u1, None],
                            ni[None, :])
        lower = s - err
        upper = s.add_(err)
        rowptr = mask_rowptr[u0:u1 + 1] - mask_rowptr[u0]
        col = mask_col[mask_rowptr[u0]:mask_rowptr[u1]]
        rows = torch.repeat_interleave(torch.arange(u1 - u0, device=dev), rowptr.diff(),
                                       output_size=col.numel())
        lower[rows, col.long()] = fixed
        upper[rows, col.long()] = fixed
        tau = torch.topk(lower, k, dim=1, sorted=False).values.min(1, keepdim=True).values
        candidate = upper >= tau
        for g0 in range(0, u1 - u0, _GROUP):
            g1 = min(g0 + _GROUP, u1 - u0)
            union = candidate[g0:g1].any(0).nonzero().squeeze(1)
            # the group's mask rows restricted to the union, as positions in it
            gcol = col[rowptr[g0]:rowptr[g1]].long()
            pos = torch.searchsorted(union, gcol).clamp_(max=max(union.numel() - 1, 0))
            keep = union[pos] == gcol if union.numel() else torch.zeros_like(gcol, dtype=torch.bool)
            grows = rows[rowptr[g0]:rowptr[g1]] - g0
            counts = torch.bincount(grows[keep], minlength=g1 - g0)
            growptr = torch.zeros(g1 - g0 + 1, dtype=mask_rowptr.dtype, device=dev)
            growptr[1:] = counts.cumsum(0)
            v, i = op(users[u0 + g0:u0 + g1].contiguous(), items[union].contiguous(), growptr,
                      pos[keep].to(mask_col.dtype), k, mask_value)
            values[u0 + g0:u0 + g1] = v
            indices[u0 + g0:u0 + g1] = torch.where(i >= 0, union[i.clamp(min=0)], -1)
    return values, indices
