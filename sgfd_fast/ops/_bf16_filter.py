"""Exact full ranking through a bf16 filter: ``masked_topk(..., precision="bf16")`` and
``attentive_distance_topk(..., precision="bf16")`` (MAML's ranking; its section is last).

The fp32 path (``masked_topk``'s C++ kernel) computes a score s32 per (user, item). The filter,
inside the same kernel (``csrc/cpu/masked_topk.cpp``), returns that path's top-k, ids and scores
bit for bit, in two passes per block of 48 users:

1. every item is scored with bf16 operands and fp32 accumulation (AVX512-BF16 ``vdpbf16ps``), ŝ,
   with a bound E, |ŝ - s32| <= E per pair (below). The upper bounds ŝ + E are kept; the lower
   bounds ŝ - E go into M = 4k bins (item i into bin i mod M, in 16-lane vectors) that keep their
   maximum (a masked item counts with its fixed score ``mask_value``, an excluded one not at all);
2. τ = the k-th largest bin maximum, rounded down to its sign, exponent and 7 mantissa bits (a
   bit-by-bit selection over M values). k distinct items have a lower bound >= τ, so an item whose
   upper bound lies below τ scores below k items in fp32 and cannot be in the top-k, whatever the
   tie rule. Every other item (1-3 % of office's items at k = 20-50) is re-scored by the fp32
   path's register micro-kernel itself and offered, in increasing id, to the fp32 path's top-k
   buffer.

Why step 2 reproduces s32 bit for bit: the C++ kernel's score of a pair is a function of the
user's and the item's rows only ("row independence"): one accumulator per pair, features summed
in ascending order, whatever tile the pair falls in (zero padding adds exact zeros); the
re-scoring copies the candidates' rows into a panel and runs the same template.
``tests/ops/test_masked_topk_precision.py`` checks it on odd shapes.

Where it runs: the cpp backend, float32 inputs, 0 < k < items <= 2^18 (it holds 48 upper bounds
per item per thread), on a CPU whose ``cpuid`` reports
AVX512-BF16 (checked at run time: the module is built for the build machine and also runs on CPUs
without it; only the bf16 micro-kernel is compiled for that ISA). Everywhere else, and where a row
is not finite or has a norm above 2^60, ``precision="bf16"`` computes the fp32 path: the same
result. ``serves`` says whether the filter runs here.

Speed (one thread, CPU time of the kernel call, the best of 3; AMD EPYC Zen 5, 2 vCPUs shared
with other work, load 10-17; synthetic float32 rows with a few dominant directions like trained
embeddings, d = 64, 8 masked items per user; fp32 / bf16 in one run):

    office-like, 4,874 users x 2,406 items   k = 20: 34.9 / 25.4 ms (1.37x)   k = 50: 49.9 / 43.1 ms (1.16x)
    toys-like, 19,412 users x 11,924 items   k = 20: 375 / 325 ms (1.15x)     k = 50: 482 / 428 ms (1.13x)

and, 2,000 users: 300 items, k = 20: 1.07x; 1,000 items, k = 50: 1.22x; 2,406 items, k = 200:
1.10x; d = 16: 1.59x; d = 128: 1.36x. The filter re-scores 0.2-2.5 % of the pairs there; what is
left is the first pass (the bf16 product, the bounds, the bins: ~8 ms of office's 25) and the
final sort of each user's k. Where k nears the item count most items are candidates and the
filter does the fp32 work twice, so ``precision="auto"`` takes it only for k <= items / 10
(``pays``). The in-kernel filter replaced one written in Python around the op (a bf16
``torch.mm``, bounds, thresholds and candidate unions in torch, a second fp32 call per group),
whose bookkeeping alone cost 4-6x the fp32 kernel.

The bound. For one pair write x = users[u], y = items[i] (width d), s = Σ_c x_c y_c exactly,
T = Σ_c |x_c y_c| <= ‖x‖‖y‖ =: P (Cauchy-Schwarz), Σ_c |x_c| <= √d ‖x‖, v = 2^-8 (bf16's unit
roundoff), u = 2^-24 (fp32's), γ_n(w) = n w / (1 - n w), η = 2^-126 (the smallest normal
float32). Source of every γ: |fl(xᵀy) - xᵀy| <= γ_d Σ|x_c y_c| for any summation order, with or
without fused multiply-adds (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed.,
§3.1, eq. 3.5), where every operation rounds with relative error at most the unit roundoff;
an underflow (gradual, or flushed to zero) errs by less than η per operation instead.

* fp32 path: |s32 - s| <= γ_d(u) T + 2dη + η √d (‖x‖ + ‖y‖): the last term covers a process
  that treats denormal inputs as zero (MXCSR.DAZ, ``torch.set_flush_denormal(True)``): a flushed
  x_c errs by |x_c y_c| < η |y_c|.
* bf16 operands: the kernel rounds each float32 to bf16 to nearest even and flushes |x_c| <
  2^-126 to zero itself, so x̂_c = x_c (1 + α_c) + a_c with |α_c| <= v, |a_c| < η, likewise ŷ (no
  bf16 operand is denormal); then Σ|x̂_c ŷ_c| <= (1+v)² T + (1+v) η √d (‖x‖ + ‖y‖) + dη² =: T̂
  and |Σ x̂_c ŷ_c - s| <= T̂ - T.
* fp32 accumulation by ``vdpbf16ps``: Intel's SDM (Vol. 2A, "VDPBF16PS — Dot Product of BF16
  Pairs Accumulated Into Packed Single Precision") defines each lane as two fp32 additions of
  exact bf16 products, rounded to nearest even whatever MXCSR says, denormal inputs read as zero
  and denormal results flushed to zero, no exceptions. The products of two bf16 numbers are exact
  in fp32 unless they underflow (flushed: error < η); each lane sums d products in feature
  order. The bound takes 2u in place of u (any faithful rounding, should another vendor's
  implementation not round to nearest or add the pair at once): |ŝ - Σ x̂_c ŷ_c| <= γ_d(2u) T̂ +
  2dη.

Adding them, |ŝ - s32| <= E = c P + a (‖x‖ + ‖y‖) + b with

    c = (1+γ_d(2u)) (1+v)² - 1 + γ_d(u)           (≈ 2^-7 + 2^-16)
    a = ((1+γ_d(2u)) (1+v) + 1) η √d
    b = (4d + 2) η                                  (dη² and (1+γ) dη² folded in)

The kernel evaluates E = ‖x‖ α_i + β_i in float32 (α_i = c'‖y‖ + a', β_i = a'‖y‖ + b', norms
in float64, then rounded) and ŝ ∓ E in float32 with c' = (c + 2^-22)(1 + 2^-20), a' = 2a,
b' = 2b: the 1 + 2^-20 covers the roundings of the norms, α, β and E (fewer than 16, each
relative u), 2^-22 P the rounding of ŝ ∓ E (|ŝ| + E <= 1.1 P + ...), and the doubled a and b
their absolute parts and a flushed ŝ ∓ E; so the computed lower bound never exceeds ŝ - E nor
the upper bound falls short of ŝ + E. Norms up to 2^60 keep ŝ, E and the operands far inside
float32's range; above that, or for a non-finite row, the fp32 path runs.

attentive_distance_topk (``csrc/cpu/attentive_distance_topk.cpp``)
-------------------------------------------------------------------

Per pair (user u, item i, width D, hidden H) the fp32 path computes the tanh row t (|t_h| <= 1),
its sum of squares ss, rn = 1 / max(√ss, 1e-12), the product s32 = W2 t (fp32, h ascending),
w32 = relu(fl(s32 rn + b2)) and the epilogue d32 = Σ_o (a_o u_o - a_o v_io)², a = D softmax(w32)
(exp by a polynomial, ``exp16``). The filter's first pass computes the same t (one function),
t̂ = t in bf16 and rδ = rn ‖t̂ - t‖ (the differences are exact), the product ŝ = Ŵ t̂ with W2 in
bf16 (Ŵ; ``vdpbf16ps``, fp32 accumulation), ŵ = relu(fl(ŝ rn + b2)) and the same epilogue: d̂
and scale = D / Σ_o exp(ŵ_o - max ŵ). It brackets d32 around d̂, takes τ = the k-th largest
lower bound of the score -d32 (a masked item counts with its fixed score, an excluded one not at
all; k distinct items reach τ) and re-scores every item whose upper bound reaches τ with the
fp32 path's own function (``score_pairs``: tanh rows, product and epilogue of the listed pairs,
out of line; a pair's score depends on its own rows only), in increasing id, into the fp32
path's top-k buffer.

The bracket (u, v, η, γ as above; W_o, Ŵ_o row o of W2 and of Ŵ):

1. The product. A pair with ss < 2^-59 is always a candidate; otherwise rn ‖t‖ <= ρ =
   (1+3u)(1+2^-60) / (1-γ_H(u)) and rn <= 2^30 ρ. Write ŝ_o - s32_o = (ŝ_o - Ŵ_o·t̂) + Ŵ_o·(t̂ - t)
   + (Ŵ_o - W_o)·t + (W_o·t - s32_o): the accumulation errs by at most γ_H(2u) ‖Ŵ_o‖ ‖t̂‖ + 2Hη
   (as above, ‖t̂‖ <= ‖t‖ + ‖t̂ - t‖), the middle terms by ‖Ŵ_o‖ ‖t̂ - t‖ and ‖Ŵ_o - W_o‖ ‖t‖
   (Cauchy-Schwarz; both rounding errors are known: W2's once per call, t's per pair), the fp32
   product by γ_H(u) ‖W_o‖ ‖t‖ + 2Hη + η√H (‖W_o‖ + √H) (denormals read as zero). fl(s rn + b2)
   rounds twice, by at most 2.01u (|s rn| + |b2_o|) + 2η. So |ẑ_o - z32_o| <= E = e0 + e1 rδ,

       e0 = max_o [ρ (‖Ŵ_o - W_o‖ + γ_H(2u) ‖Ŵ_o‖ + γ_H(u) ‖W_o‖)
                   + 2^30 ρ ((4H+2)η + 2η√H (‖W_o‖ + ‖Ŵ_o‖ + 2√H))
                   + 2 (2.01u (ρ (1+2c) ‖W_o‖ + |b2_o|) + 2η)],      e1 = max_o ‖Ŵ_o‖ (1 + γ_H(2u)),

   (c: masked_topk's constant over H; |s rn| <= ρ (1+2c) ‖W_o‖), and relu is 1-Lipschitz:
   |ŵ_o - w32_o| <= E. Here ‖Ŵ_o - W_o‖ ≈ 2^-9.5 ‖W_o‖ and rδ ≈ 2^-9.5 on average, not the worst
   case 2^-8 of each: E is about a third of the Cauchy-Schwarz bound with 2^-7 ‖W_o‖.
2. The softmax. For A_o(w) = D e^(w_o) / Σ_j e^(w_j) (exact), A_o(ŵ) / A_o(w32) lies within
   e^(±2E), so Φ(w) = Σ_o A_o(w)² (u_o - v_io)² and Y(w) = Σ_o A_o(w)² (|u_o| + |v_io|)² change
   by a factor within e^(±4E) from ŵ to w32.
3. The epilogue's rounding. |z_o| <= Z = max_o ((1+c) ρ ‖W_o‖ + 2^30 ρ (...) + |b2_o|) (1 +
   2^-20) + 2η for both products; the filter runs only where Z <= 16, so every exp argument w_o
   - max w lies in [-16, 0], where exp16 errs by at most 2^-18 relative with the argument's
   rounding (reduction |r| <= 0.347, Taylor truncation < 1.1e-8, Horner rounding <= γ_14(u)
   e^0.347 / e^-0.347 < 1.7e-6, argument rounding 16u < 1e-6; ``std::exp`` without AVX-512).
   Each computed weight is then A_o (1 + α_o), |α_o| <= α = (1+2^-18)(1+u)² / ((1-2^-18)
   (1-γ_D(u))) - 1; fl(a u_o - a v_o) = a (u_o - v_o) + δ_o with |δ_o| <= 2.01u a (|u_o| +
   |v_o|) (with or without a fused multiply-add); the sum of the D squares errs by γ_D(u)
   relative. So |d - Φ(w)| <= θ Y(w) + λ/2 for d32 (on w32) and for d̂ (on ŵ), θ = γ_D(u) +
   β(2 + β)(1 + γ_D(u)), β = α + 2.01u (1 + α); λ = 2 (D² 2^-100 + D 2^-125) covers underflow
   (the guard below keeps row norms <= 2^20, so every term is below D 2^21).
4. Y(ŵ) <= (1+α)² y, y = scale² (‖u‖ + ‖v_i‖)²: A_o(ŵ) <= D / Σ_j e^(ŵ_j - max ŵ) and
   ‖|u| + |v_i|‖ <= ‖u‖ + ‖v_i‖.

Hence, with θ' = θ (1+α)², x = 4E <= 1/2 (else the pair is a candidate), e^x <= up = 1 + x + x²
and e^-x >= down = 1 - x:

    d32 <= e^x (Φ(ŵ) + θ Y(ŵ)) + λ/2            <= up d̂ + 2θ' up y + λ
    d32 >= e^-x Φ(ŵ) - θ e^x Y(ŵ) - λ/2         >= down d̂ - θ' (1 + up) y - λ

e0, e1, θ' are computed in double once per call (raised by 2^-16, 2^-16, 2^-17), the rest per
pair in float32 with the d̂ terms' factors raised (lowered) by 2^-18 relative: fewer than 12
roundings of relative u each, the norms rounded up.

Where it runs: the cpp backend, float32, 0 < k < items, a CPU with AVX512-BF16. The fp32 path
runs instead where W2 or b2 is not finite, Z > 16, or a user or item row is not finite or has a
norm above 2^20; a pair whose bracket is not finite (NaN or inf in its rows) is a candidate.

Measured (MAML trained 4 epochs on office, D = 128, H = 640, max ‖W_o‖ 2.66; float64 emulation
of the bracket over 100 users): E ≈ 0.009 per pair (0.021 with the Cauchy-Schwarz bound), so the
filter re-scores 1.8 % of the items at k = 20 and 4.3 % at k = 50 (mean; 90th percentile 2.7 %
and 6.1 %). The product is most of a pair's cost (2 H D flops against H tanh and an O(D)
epilogue): on the fp32 path about 7 ns per unit of D, 64 -> 128, of 1.28 µs per pair at D = 128;
the bf16 product takes about 4.5 ns per unit of D, 1.55x less, not the 2x of ``vdpbf16ps``'s
rate (one thread, AMD EPYC Zen 5, load 4-5). Speed: docs/BENCHMARKS.md, "MAML's full-ranking
evaluation".
"""

from __future__ import annotations

from functools import lru_cache

import torch

from .. import _backend

__all__ = ["bf16_hardware", "pays", "serves"]

# ``precision="auto"`` takes the filter for k <= items / _AUTO_RATIO (module docstring, "Speed").
_AUTO_RATIO = 10


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


def serves(device: torch.device | str, op: str = "masked_topk") -> bool:
    """Whether ``precision="bf16"`` runs ``op``'s filter (``masked_topk``,
    ``attentive_distance_topk``) on ``device`` now, for the inputs each filter takes (float32,
    0 < k < items, finite rows; above): the cpp backend serves ``op`` and the CPU has AVX512-BF16
    (every CPU with AMX-BF16 has it too)."""
    device = torch.device(device)
    return (device.type == "cpu" and _backend.serving(op, "cpu") == "cpp"
            and "avx512_bf16" in _cpu_flags())


def pays(n_items: int, k: int) -> bool:
    """``precision="auto"``'s rule: the filter for k <= items / 10 (where it ran faster than the
    fp32 path on every shape measured); it changes no result, only the time."""
    return 0 < k * _AUTO_RATIO <= n_items
