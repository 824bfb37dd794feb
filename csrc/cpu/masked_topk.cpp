// masked_topk (CPU): per user, the k best items by score users[u]·items[i], excluding (or
// re-scoring) the items listed in the user's sorted mask row, without a U×I score matrix.
//
// Work split: OpenMP threads take blocks of kUserBlock users; a block walks the items in tiles of
// kItemTile, so one tile of packed items stays in L2 while every user of the block is scored
// against it. Scores come from a register-blocked micro-kernel (kMR users × kNR items, the item
// axis vectorised) over items packed once into d×kNR panels. Each user keeps its k best in a
// TopK (topk_buffer.h): since items arrive in increasing id order, a new item with a score equal
// to the k-th kept can never win its tie (lower id wins), so the hot loop is a single
// `score > threshold` compare.
//
// Contract (shared with the reference and the Triton kernel): scores are computed in the input
// dtype and ranked as float32; ties go to the lower item id; a score of -inf or NaN (and every
// excluded item) is absent; slots without a candidate hold index -1 and value -inf. Each user has
// one owner thread and a fixed item order, so results are bitwise reproducible.
//
// precision "bf16" (float32 inputs, a CPU with AVX512-BF16 at run time): the same result, bit for
// bit, through a bf16 filter. Per user block, pass 1 scores every item with bf16 dot products
// (vdpbf16ps, fp32 accumulation) and bounds each score's distance to the fp32 path's, |ŝ - s32| <=
// E (derivation: sgfd_fast/ops/_bf16_filter.py). The lower bounds ŝ - E go into M >= 4k bins (a
// fixed partition of the items) that keep their maximum; the k-th largest bin maximum, rounded
// down to 16 bits, τ, is at most the k-th largest lower bound (k distinct items reach it), and a
// bit-by-bit selection over M values finds it: a top-k buffer fed every lower bound cost as much
// as the fp32 path's own.
// Pass 2 re-scores, with the fp32 micro-kernel itself, only the items whose upper bound ŝ + E
// reaches τ: any other item scores below k items in fp32 and cannot rank. A pair's fp32
// score depends on its two rows only (one accumulator per pair, features in ascending order), so
// the candidates score exactly as in the fp32 path, and arrive in increasing id as there.
#include "bf16_filter.h"
#include "common.h"
#include "topk_buffer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

namespace sgfd {
namespace {

constexpr std::int64_t kMR = 6;          // users per micro tile
constexpr std::int64_t kNR = 16;         // items per micro tile (the vectorised axis)
constexpr std::int64_t kItemTile = 512;  // items per cache tile (a multiple of kNR)
constexpr std::int64_t kUserBlock = 48;  // users per thread task (a multiple of kMR)

// scores[r][p * kNR + j] = <urow[r], column j of panels[p]> for MR users and NP panels of kNR
// packed items. The fp32 path runs <kMR, 1>; the bf16 filter re-scores one user's candidates with
// <1, kRescorePanels>: the same code, one accumulator per pair summed in ascending c either way.
template <typename scalar_t, std::int64_t MR, std::int64_t NP>
inline void micro_kernel(const scalar_t* const* urow, const scalar_t* const* panels,
                         std::int64_t d, float* scores, std::int64_t ld_scores) {
  scalar_t acc[MR][NP][kNR] = {};
  for (std::int64_t c = 0; c < d; ++c) {
    for (std::int64_t r = 0; r < MR; ++r) {
      const scalar_t u = urow[r][c];
      for (std::int64_t p = 0; p < NP; ++p) {
        const scalar_t* q = panels[p] + c * kNR;
#pragma omp simd
        for (std::int64_t j = 0; j < kNR; ++j) acc[r][p][j] += u * q[j];
      }
    }
  }
  for (std::int64_t r = 0; r < MR; ++r)
    for (std::int64_t p = 0; p < NP; ++p)
      for (std::int64_t j = 0; j < kNR; ++j)
        scores[r * ld_scores + p * kNR + j] = static_cast<float>(acc[r][p][j]);
}

template <typename scalar_t, typename index_t>
void masked_topk_kernel(const scalar_t* users, const scalar_t* items, const index_t* rowptr,
                        const index_t* col, std::int64_t n_users, std::int64_t n_items,
                        std::int64_t d, std::int64_t k, bool has_mask_value, float mask_value,
                        float* out_values, std::int64_t* out_indices) {
  check_topk_ids(n_items);
  if (n_users == 0 || k == 0) return;
  const float absent = -std::numeric_limits<float>::infinity();
  const float masked = has_mask_value ? mask_value : absent;
  // Items packed as panels of kNR: panel p holds items [p*kNR, p*kNR + kNR) as a d × kNR block
  // (zero padded past n_items; those slots are never offered).
  const std::int64_t n_panels = (n_items + kNR - 1) / kNR;
  std::vector<scalar_t> packed(static_cast<std::size_t>(n_panels * kNR * d));
#pragma omp parallel for schedule(static)
  for (std::int64_t p = 0; p < n_panels; ++p) {
    scalar_t* dst = packed.data() + p * kNR * d;
    for (std::int64_t j = 0; j < kNR; ++j) {
      const std::int64_t i = p * kNR + j;
      for (std::int64_t c = 0; c < d; ++c) dst[c * kNR + j] = i < n_items ? items[i * d + c] : 0;
    }
  }
  const std::int64_t n_blocks = (n_users + kUserBlock - 1) / kUserBlock;
#pragma omp parallel
  {
    std::vector<std::uint64_t> bufs(static_cast<std::size_t>(kUserBlock * TopK::capacity(k)));
    std::vector<float> scores(static_cast<std::size_t>(kMR * kItemTile));
    std::vector<index_t> next(kUserBlock);  // per user: next unread entry of its mask row
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t b = 0; b < n_blocks; ++b) {
      const std::int64_t u0 = b * kUserBlock;
      const std::int64_t nu = std::min(kUserBlock, n_users - u0);
      std::vector<TopK> topk = start_user_block(bufs.data(), k, u0, nu, rowptr, next.data());
      for (std::int64_t i0 = 0; i0 < n_items; i0 += kItemTile) {
        const std::int64_t i1 = std::min(i0 + kItemTile, n_items);
        for (std::int64_t m0 = 0; m0 < nu; m0 += kMR) {
          const scalar_t* urow[kMR];
          for (std::int64_t r = 0; r < kMR; ++r)  // a short last group repeats its first user
            urow[r] = users + (u0 + (m0 + r < nu ? m0 + r : m0)) * d;
          for (std::int64_t p0 = i0; p0 < i1; p0 += kNR) {
            const scalar_t* panel = packed.data() + (p0 / kNR) * kNR * d;
            micro_kernel<scalar_t, kMR, 1>(urow, &panel, d, scores.data() + (p0 - i0), kItemTile);
          }
          for (std::int64_t r = 0; r < kMR && m0 + r < nu; ++r) {
            float* s = scores.data() + r * kItemTile;
            const std::int64_t u = m0 + r;
            const index_t end = rowptr[u0 + u + 1];
            for (; next[u] < end && col[next[u]] < i1; ++next[u]) s[col[next[u]] - i0] = masked;
            topk[u].offer(s, i1 - i0, i0);
          }
        }
      }
      for (std::int64_t r = 0; r < nu; ++r)
        topk[r].write(out_values + (u0 + r) * k, out_indices + (u0 + r) * k);
    }
  }
}

// ---- precision "bf16": the filter ----------------------------------------------------------

constexpr std::int64_t kPairNR = 32;        // items per bf16 panel: two 16-lane vectors
constexpr std::int64_t kRescorePanels = 4;  // fp32 panels re-scored at once for one user
constexpr int kLooseBits = 16;              // bits of τ left out (sign, exponent, 7 mantissa bits)
// The filter keeps kUserBlock × items upper bounds per thread (48 MiB at this many items); beyond
// it the fp32 path runs.
constexpr std::int64_t kFilterMaxItems = std::int64_t{1} << 18;

#if defined(SGFD_BF16_FILTER)
// scores[r][j] ≈ <user r, item j of the panel> for kMR users and kPairNR items: vdpbf16ps adds
// the products of one feature pair (bf16, exact in fp32) into each item's fp32 lane. upair[r][c]
// holds user r's features 2c (low half) and 2c + 1; the panel, per c, the same pairs of its items.
__attribute__((target("avx512f,avx512bf16"))) void bf16_micro_kernel(
    const std::uint32_t* const* upair, const std::uint32_t* panel, std::int64_t d2,
    float* scores, std::int64_t ld_scores) {
  __m512 acc[kMR][2];
  for (std::int64_t r = 0; r < kMR; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (std::int64_t c = 0; c < d2; ++c) {
    const __m512bh p0 = (__m512bh)_mm512_loadu_si512(panel + c * kPairNR);
    const __m512bh p1 = (__m512bh)_mm512_loadu_si512(panel + c * kPairNR + 16);
    for (std::int64_t r = 0; r < kMR; ++r) {
      const __m512bh u = (__m512bh)_mm512_set1_epi32(static_cast<int>(upair[r][c]));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], u, p0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], u, p1);
    }
  }
  for (std::int64_t r = 0; r < kMR; ++r) {
    _mm512_storeu_ps(scores + r * ld_scores, acc[r][0]);
    _mm512_storeu_ps(scores + r * ld_scores + 16, acc[r][1]);
  }
}
#else
void bf16_micro_kernel(const std::uint32_t* const*, const std::uint32_t*, std::int64_t, float*,
                       std::int64_t) {}  // never called: bf16_filter_available() is false
#endif

// The k-th largest of values[0, n) (n >= k >= 1, no NaN): the largest key t (order_bits) that k
// values reach, built bit by bit from the top; a vector count per bit, no branch on the data. The
// last kLooseBits bits stay 0: a value at most 2^-7 (relative) below, as valid a threshold.
float kth_largest(const float* values, std::int64_t n, std::int64_t k, std::uint32_t* keys) {
  for (std::int64_t i = 0; i < n; ++i) keys[i] = order_bits(values[i]);
  std::uint32_t t = 0;
  for (int bit = 31; bit >= kLooseBits; --bit) {
    const std::uint32_t probe = t | (1u << bit);
    std::int32_t reach = 0;
#pragma omp simd reduction(+ : reach)
    for (std::int64_t i = 0; i < n; ++i) reach += keys[i] >= probe;
    if (reach >= k) t = probe;
  }
  // below -inf's key (fewer than k finite values, t rounded down past it) lie NaNs
  const float lowest = -std::numeric_limits<float>::infinity();
  return t <= order_bits(lowest) ? lowest : from_order_bits(t);
}

// The bound |ŝ - s32| <= c‖x‖‖y‖ + a(‖x‖ + ‖y‖) + b for width d with the margins of its float32
// evaluation (sgfd_fast/ops/_bf16_filter.py: the derivation).
struct Bound {
  double c, a, b;
};
Bound filter_bound(std::int64_t d) {
  const double v = 0x1p-8, u = 0x1p-24, eta = 0x1p-126;
  const auto gamma = [&](double unit) { return d * unit / (1 - d * unit); };
  const double g32 = gamma(u), gacc = gamma(2 * u);
  const double c = (1 + gacc) * (1 + v) * (1 + v) - 1 + g32;
  const double a = ((1 + gacc) * (1 + v) + 1) * eta * std::sqrt(static_cast<double>(d));
  const double b = (4.0 * d + 2) * eta;
  return {(c + 0x1p-22) * (1 + 0x1p-20), 2 * a, 2 * b};
}

// The fp32 path's result (float32 inputs, 0 < k < n_items) through the filter; returns the
// number of (user, item) pairs re-scored in fp32, or -1 (nothing written) where a row is not
// finite or has a norm above 2^60: the caller runs the fp32 path.
template <typename index_t>
std::int64_t masked_topk_bf16_kernel(const float* users, const float* items,
                                     const index_t* rowptr, const index_t* col,
                                     std::int64_t n_users, std::int64_t n_items, std::int64_t d,
                                     std::int64_t k, float masked, float* out_values,
                                     std::int64_t* out_indices) {
  const auto norm = [d](const float* x) {
    double s = 0;
    for (std::int64_t c = 0; c < d; ++c) s += static_cast<double>(x[c]) * x[c];
    return std::sqrt(s);
  };
  std::vector<float> norm_u(n_users);
  std::vector<float> alpha(n_items), beta(n_items);  // E = ‖x‖ alpha[i] + beta[i]
  const Bound e = filter_bound(d);
  bool bad = false;
#pragma omp parallel for schedule(static) reduction(|| : bad)
  for (std::int64_t u = 0; u < n_users; ++u) {
    const double n = norm(users + u * d);
    bad = bad || !(n <= 0x1p60);  // NaN too
    norm_u[u] = static_cast<float>(n);
  }
#pragma omp parallel for schedule(static) reduction(|| : bad)
  for (std::int64_t i = 0; i < n_items; ++i) {
    const double n = norm(items + i * d);
    bad = bad || !(n <= 0x1p60);
    alpha[i] = static_cast<float>(e.c * n + e.a);
    beta[i] = static_cast<float>(e.a * n + e.b);
  }
  if (bad) return -1;

  // bf16 feature pairs: users row-major (d2 per user), items in panels of kPairNR (zero padded).
  const std::int64_t d2 = (d + 1) / 2;
  const auto pair = [d](const float* x, std::int64_t c) {
    return bf16_bits(x[2 * c]) | (2 * c + 1 < d ? bf16_bits(x[2 * c + 1]) << 16 : 0u);
  };
  std::vector<std::uint32_t> upairs(static_cast<std::size_t>(n_users * d2));
#pragma omp parallel for schedule(static)
  for (std::int64_t u = 0; u < n_users; ++u)
    for (std::int64_t c = 0; c < d2; ++c) upairs[u * d2 + c] = pair(users + u * d, c);
  const std::int64_t n_panels = (n_items + kPairNR - 1) / kPairNR;
  std::vector<std::uint32_t> packed(static_cast<std::size_t>(n_panels * kPairNR * d2));
#pragma omp parallel for schedule(static)
  for (std::int64_t p = 0; p < n_panels; ++p)
    for (std::int64_t j = 0; j < kPairNR; ++j) {
      const std::int64_t i = p * kPairNR + j;
      for (std::int64_t c = 0; c < d2; ++c)
        packed[(p * d2 + c) * kPairNR + j] = i < n_items ? pair(items + i * d, c) : 0u;
    }

  const std::int64_t n_blocks = (n_users + kUserBlock - 1) / kUserBlock;
  const std::int64_t n_bins = (4 * k + 15) / 16 * 16;
  const float absent = -std::numeric_limits<float>::infinity();
  std::int64_t rescored = 0;
#pragma omp parallel reduction(+ : rescored)
  {
    std::vector<std::uint64_t> bufs(static_cast<std::size_t>(kUserBlock * TopK::capacity(k)));
    std::vector<float> bins(static_cast<std::size_t>(kUserBlock * n_bins));
    std::vector<float> scores(static_cast<std::size_t>(kMR * kItemTile));
    std::vector<float> upper(static_cast<std::size_t>(kUserBlock * n_items));
    std::vector<index_t> next(kUserBlock);
    constexpr std::int64_t kBatch = kRescorePanels * kNR;
    std::vector<float> panels(static_cast<std::size_t>(kBatch * d), 0.0f);
    std::vector<std::int64_t> cand(n_items);
    std::vector<std::uint32_t> keys(n_bins);
    std::vector<float> exact(kBatch);
    const float* panel_ptr[kRescorePanels];
    for (std::int64_t p = 0; p < kRescorePanels; ++p) panel_ptr[p] = panels.data() + p * kNR * d;
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t b = 0; b < n_blocks; ++b) {
      const std::int64_t u0 = b * kUserBlock;
      const std::int64_t nu = std::min(kUserBlock, n_users - u0);
      std::vector<TopK> topk = start_user_block(bufs.data(), k, u0, nu, rowptr, next.data());
      std::fill(bins.begin(), bins.end(), absent);
      // Pass 1: bf16 scores; upper bounds kept, lower bounds binned (masked: the fixed score).
      for (std::int64_t i0 = 0; i0 < n_items; i0 += kItemTile) {
        const std::int64_t i1 = std::min(i0 + kItemTile, n_items);
        for (std::int64_t m0 = 0; m0 < nu; m0 += kMR) {
          const std::uint32_t* upair[kMR];
          for (std::int64_t r = 0; r < kMR; ++r)
            upair[r] = upairs.data() + (u0 + (m0 + r < nu ? m0 + r : m0)) * d2;
          for (std::int64_t p0 = i0; p0 < i1; p0 += kPairNR)
            bf16_micro_kernel(upair, packed.data() + (p0 / kPairNR) * kPairNR * d2, d2,
                              scores.data() + (p0 - i0), kItemTile);
          for (std::int64_t r = 0; r < kMR && m0 + r < nu; ++r) {
            const std::int64_t u = m0 + r;
            const float nx = norm_u[u0 + u];
            float* s = scores.data() + r * kItemTile;
            float* up = upper.data() + u * n_items;
#pragma omp simd
            for (std::int64_t i = i0; i < i1; ++i) {
              const float err = nx * alpha[i] + beta[i];
              up[i] = s[i - i0] + err;
              s[i - i0] -= err;
            }
            const index_t end = rowptr[u0 + u + 1];
            for (; next[u] < end && col[next[u]] < i1; ++next[u])
              s[col[next[u]] - i0] = up[col[next[u]]] = masked;
            // bins in 16-lane vectors: item i in vector (i / 16) mod (M / 16), lane i mod 16
            for (std::int64_t i = i1; i < i0 + kItemTile && i % 16 != 0; ++i) s[i - i0] = absent;
            float* bu = bins.data() + u * n_bins;
            for (std::int64_t q = i0 / 16; q * 16 < i1; ++q) {
              float* bv = bu + (q % (n_bins / 16)) * 16;
              const float* sv = s + (q * 16 - i0);
#pragma omp simd
              for (std::int64_t j = 0; j < 16; ++j) bv[j] = sv[j] > bv[j] ? sv[j] : bv[j];
            }
          }
        }
      }
      // Pass 2: per user, the items whose upper bound reaches τ, re-scored in fp32 in batches.
      for (std::int64_t u = 0; u < nu; ++u) {
        const float tau = kth_largest(bins.data() + u * n_bins, n_bins, k, keys.data());
        const float* up = upper.data() + u * n_items;
        const float* urow = users + (u0 + u) * d;
        // the candidates' ids: one vector compare skips a chunk without any (most), the others
        // are appended branch-free
        std::int64_t n_cand = 0;
        for (std::int64_t c0 = 0; c0 < n_items; c0 += 16) {
          const std::int64_t c1 = std::min(c0 + 16, n_items);
          std::int32_t any = 0;
#pragma omp simd reduction(+ : any)
          for (std::int64_t i = c0; i < c1; ++i) any += up[i] >= tau;
          if (any == 0) continue;
          for (std::int64_t i = c0; i < c1; ++i) {
            cand[n_cand] = i;
            n_cand += up[i] >= tau;
          }
        }
        index_t m = rowptr[u0 + u];
        const index_t end = rowptr[u0 + u + 1];
        for (std::int64_t c0 = 0; c0 < n_cand; c0 += kBatch) {
          const std::int64_t n = std::min(kBatch, n_cand - c0);
          const std::int64_t* ids = cand.data() + c0;
          for (std::int64_t j = 0; j < n; ++j) {
            float* dst = panels.data() + (j / kNR) * kNR * d + j % kNR;
            const float* src = items + ids[j] * d;
            for (std::int64_t c = 0; c < d; ++c) dst[c * kNR] = src[c];
          }
          micro_kernel<float, 1, kRescorePanels>(&urow, panel_ptr, d, exact.data(), kBatch);
          for (std::int64_t j = 0; j < n; ++j) {  // masked candidates score the fixed value
            for (; m < end && col[m] < ids[j]; ++m) {
            }
            if (m < end && col[m] == ids[j]) exact[j] = masked;
          }
          topk[u].offer_ids(exact.data(), ids, n);
        }
        rescored += n_cand;
      }
      for (std::int64_t r = 0; r < nu; ++r)
        topk[r].write(out_values + (u0 + r) * k, out_indices + (u0 + r) * k);
    }
  }
  return rescored;
}

}  // namespace

SGFD_BIND(masked_topk) {
  m.def(
      "masked_topk",
      [](std::uintptr_t users, std::uintptr_t items, std::uintptr_t rowptr, std::uintptr_t col,
         std::int64_t n_users, std::int64_t n_items, std::int64_t d, std::int64_t k,
         bool has_mask_value, double mask_value, std::uintptr_t out_values,
         std::uintptr_t out_indices, const std::string& index_dtype, const std::string& dtype,
         const std::string& precision) {
        if (precision != "fp32" && precision != "bf16")
          throw std::invalid_argument("masked_topk: precision must be fp32 or bf16, got '" +
                                      precision + "'");
        check_topk_ids(n_items);  // before any pointer is read
        const bool filter = precision == "bf16" && dtype == "float32" && k > 0 &&
                            k < n_items && n_items <= kFilterMaxItems && n_users > 0 &&
                            bf16_filter_available();
        std::int64_t rescored = -1;
        dispatch_float_index(dtype, index_dtype, [&](auto scalar_tag, auto index_tag) {
          using scalar_t = decltype(scalar_tag);
          using index_t = decltype(index_tag);
          if constexpr (std::is_same_v<scalar_t, float>) {
            if (filter) {
              const float absent = -std::numeric_limits<float>::infinity();
              rescored = masked_topk_bf16_kernel<index_t>(
                  ptr<const float>(users), ptr<const float>(items), ptr<const index_t>(rowptr),
                  ptr<const index_t>(col), n_users, n_items, d, k,
                  has_mask_value ? static_cast<float>(mask_value) : absent,
                  ptr<float>(out_values), ptr<std::int64_t>(out_indices));
            }
          }
          if (rescored < 0)
            masked_topk_kernel<scalar_t, index_t>(
                ptr<const scalar_t>(users), ptr<const scalar_t>(items),
                ptr<const index_t>(rowptr), ptr<const index_t>(col), n_users, n_items, d, k,
                has_mask_value, static_cast<float>(mask_value), ptr<float>(out_values),
                ptr<std::int64_t>(out_indices));
        });
        return rescored;
      },
      "per-user top-k of users @ items.T with the CSR mask applied (row-major buffers); returns "
      "the pairs the bf16 filter re-scored in fp32, -1 where the fp32 path served",
      py::arg("users"), py::arg("items"), py::arg("rowptr"), py::arg("col"), py::arg("n_users"),
      py::arg("n_items"), py::arg("d"), py::arg("k"), py::arg("has_mask_value"),
      py::arg("mask_value"), py::arg("out_values"), py::arg("out_indices"),
      py::arg("index_dtype"), py::arg("dtype"), py::arg("precision"),
      py::call_guard<py::gil_scoped_release>());
}

}  // namespace sgfd
