// attentive_distance_topk (CPU): per user, the k best items by MAML's attentive score -d(u, i),
// excluding (or re-scoring) the items of the user's sorted mask row, without a users × items
// score matrix or any users × items × hidden tensor.
//
// Python passes the first attention layer already split by input (P = users W_u^T, Q = items W_v^T
// + features W_f^T, the squared row norms), so a pair's hidden pre-activation is
// (P_u + Q_i) / sqrt(|u|^2 + |v_i|^2 + |f_i|^2) + b1. Per pair the work is H tanh and an H × D
// product; everything else is O(D).
//
// Work split: OpenMP threads take blocks of kUserBlock users; a block walks the items in tiles of
// kTile, so the tile's Q rows stay in L2 while every user of the block is scored against them.
// For one (user, tile): tanh rows go into a kTile × H buffer (L1/L2), then a register-blocked
// micro-kernel (kMR pairs × kNR outputs, the output axis vectorised) multiplies it by W2^T, packed
// once into H × kNR panels; the epilogue applies the row normalisation, bias, relu, the D-scaled
// softmax and the weighted distance, and offers the scores to the user's TopK of k (masked_topk's
// rule: items arrive in increasing id order, so the hot test is a single `score > threshold`).
//
// Contract (shared with the reference and the Triton kernel): scores are computed in the input
// dtype and ranked as float32; ties go to the lower item id; a score of -inf or NaN (and every
// excluded item) is absent; slots without a candidate hold index -1 and value -inf. Each user has
// one owner thread and a fixed order of operations, so results are bitwise reproducible.
#include "common.h"
#include "topk_buffer.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <initializer_list>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace sgfd {
namespace {

constexpr std::int64_t kTile = 32;      // items (pairs of one user) per tile
constexpr std::int64_t kMR = 8;         // pairs per micro tile (divides kTile)
constexpr std::int64_t kUserBlock = 8;  // users per thread task

// The two transcendental loops of a pair: H tanh and D exp. std::tanh / std::exp are scalar
// library calls, and GCC does not vectorise a hand-written polynomial either, so with AVX-512 they
// are written with intrinsics: exp(x) = 2^n e^r with n = round(x / ln 2), |r| <= ln2 / 2 (ln 2
// split in a high and a low part), e^r by its degree-7 Taylor polynomial (truncation < 2e-9
// relative), 2^n applied by scalef; tanh|x| = (1 - e) / (1 + e) with e = exp(-2|x|). NaN passes
// through both. Lane-wise partial sums in a fixed order keep the result reproducible.

// tr[h] = tanh((pu[h] + qi[h]) * inv + b1[h]) for h < n; returns the sum of tr[h]^2.
template <typename scalar_t>
inline scalar_t tanh_row(const scalar_t* pu, const scalar_t* qi, const scalar_t* b1,
                         scalar_t inv, scalar_t* tr, std::int64_t n) {
  scalar_t ss = 0;
  for (std::int64_t h = 0; h < n; ++h) {
    tr[h] = std::tanh((pu[h] + qi[h]) * inv + b1[h]);
    ss += tr[h] * tr[h];
  }
  return ss;
}

// w[o] = exp(w[o] - top) for o < n; returns the sum of the new w[o].
template <typename scalar_t>
inline scalar_t exp_row(scalar_t* w, scalar_t top, std::int64_t n) {
  scalar_t sum = 0;
  for (std::int64_t o = 0; o < n; ++o) {
    w[o] = std::exp(w[o] - top);
    sum += w[o];
  }
  return sum;
}

#if defined(__AVX512F__)
inline __m512 exp16(__m512 x) {
  // max/min return their second operand when one is NaN: x's NaN survives the clamp
  x = _mm512_min_ps(_mm512_set1_ps(88.0f), _mm512_max_ps(_mm512_set1_ps(-87.0f), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860682030941723e-6f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
  for (const float c : {1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f, 1.0f / 6.0f, 0.5f, 1.0f, 1.0f})
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  return _mm512_scalef_ps(p, n);
}

inline __m512 tanh16(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 e = exp16(_mm512_mul_ps(_mm512_set1_ps(-2.0f), _mm512_abs_ps(x)));
  const __m512 t = _mm512_div_ps(_mm512_sub_ps(one, e), _mm512_add_ps(one, e));  // >= 0
  const __m512i sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(INT32_MIN));
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(t), sign));
}

template <>
inline float tanh_row<float>(const float* pu, const float* qi, const float* b1, float inv,
                             float* tr, std::int64_t n) {
  const __m512 vinv = _mm512_set1_ps(inv);
  __m512 ss = _mm512_setzero_ps();
  for (std::int64_t h = 0; h < n; h += 16) {
    const __mmask16 m = n - h >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - h)) - 1);
    const __m512 x = _mm512_fmadd_ps(
        _mm512_add_ps(_mm512_maskz_loadu_ps(m, pu + h), _mm512_maskz_loadu_ps(m, qi + h)), vinv,
        _mm512_maskz_loadu_ps(m, b1 + h));
    const __m512 t = tanh16(x);  // masked lanes: tanh(0) = 0
    _mm512_mask_storeu_ps(tr + h, m, t);
    ss = _mm512_fmadd_ps(t, t, ss);
  }
  return _mm512_reduce_add_ps(ss);
}

template <>
inline float exp_row<float>(float* w, float top, std::int64_t n) {
  const __m512 vtop = _mm512_set1_ps(top);
  __m512 sum = _mm512_setzero_ps();
  for (std::int64_t o = 0; o < n; o += 16) {
    const __mmask16 m = n - o >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - o)) - 1);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, w + o), vtop));
    _mm512_mask_storeu_ps(w + o, m, e);
    sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(m, e));
  }
  return _mm512_reduce_add_ps(sum);
}
#endif

// out[r][j] = <trow[r], panel column j> over h < H, for kMR pairs and kNR outputs.
template <typename scalar_t, std::int64_t kNR>
inline void micro_kernel(const scalar_t* const* trow, const scalar_t* panel, std::int64_t hidden,
                         scalar_t* out, std::int64_t ld_out) {
  scalar_t acc[kMR][kNR] = {};
  for (std::int64_t c = 0; c < hidden; ++c) {
    const scalar_t* p = panel + c * kNR;
    for (std::int64_t r = 0; r < kMR; ++r) {
      const scalar_t t = trow[r][c];
#pragma omp simd
      for (std::int64_t j = 0; j < kNR; ++j) acc[r][j] += t * p[j];
    }
  }
  for (std::int64_t r = 0; r < kMR; ++r)
    for (std::int64_t j = 0; j < kNR; ++j) out[r * ld_out + j] = acc[r][j];
}

template <typename scalar_t, typename index_t>
void attentive_distance_topk_kernel(
    const scalar_t* users, const scalar_t* items, const scalar_t* p, const scalar_t* q,
    const scalar_t* user_sq, const scalar_t* item_sq, const scalar_t* b1, const scalar_t* w2t,
    const scalar_t* b2, const index_t* rowptr, const index_t* col, std::int64_t n_users,
    std::int64_t n_items, std::int64_t d, std::int64_t hidden, std::int64_t k,
    bool has_mask_value, float mask_value, float* out_values, std::int64_t* out_indices) {
  check_topk_ids(n_items);
  if (n_users == 0 || k == 0) return;
  constexpr std::int64_t kNR = 128 / sizeof(scalar_t);  // two 512-bit vectors of outputs
  const float absent = -std::numeric_limits<float>::infinity();
  const float masked = has_mask_value ? mask_value : absent;
  const scalar_t tiny = static_cast<scalar_t>(1e-12);  // F.normalize's / the norm clamp's eps
  // W2^T (H × D) packed as panels of kNR output columns, each H × kNR (zero padded past D).
  const std::int64_t n_panels = (d + kNR - 1) / kNR;
  const std::int64_t ld_s = n_panels * kNR;
  std::vector<scalar_t> packed(static_cast<std::size_t>(n_panels * kNR * hidden));
  for (std::int64_t pn = 0; pn < n_panels; ++pn)
    for (std::int64_t c = 0; c < hidden; ++c)
      for (std::int64_t j = 0; j < kNR; ++j) {
        const std::int64_t o = pn * kNR + j;
        packed[(pn * hidden + c) * kNR + j] = o < d ? w2t[c * d + o] : 0;
      }
  const std::int64_t n_blocks = (n_users + kUserBlock - 1) / kUserBlock;
#pragma omp parallel
  {
    std::vector<std::uint64_t> bufs(static_cast<std::size_t>(kUserBlock * TopK::capacity(k)));
    std::vector<scalar_t> t(static_cast<std::size_t>(kTile * hidden));  // tanh rows of a tile
    std::vector<scalar_t> s(static_cast<std::size_t>(kTile * ld_s));    // W2 · tanh rows
    std::vector<scalar_t> rnorm(kTile), w(static_cast<std::size_t>(d));
    std::vector<float> score(kTile);
    std::vector<index_t> next(kUserBlock);  // per user: next unread entry of its mask row
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t b = 0; b < n_blocks; ++b) {
      const std::int64_t u0 = b * kUserBlock;
      const std::int64_t nu = std::min(kUserBlock, n_users - u0);
      std::vector<TopK> topk = start_user_block(bufs.data(), k, u0, nu, rowptr, next.data());
      for (std::int64_t i0 = 0; i0 < n_items; i0 += kTile) {
        const std::int64_t n = std::min(kTile, n_items - i0);
        for (std::int64_t ur = 0; ur < nu; ++ur) {
          const std::int64_t u = u0 + ur;
          const scalar_t* pu = p + u * hidden;
          const scalar_t* uu = users + u * d;
          for (std::int64_t r = 0; r < n; ++r) {
            const std::int64_t i = i0 + r;
            const scalar_t inv = 1 / std::max(std::sqrt(user_sq[u] + item_sq[i]), tiny);
            const scalar_t* qi = q + i * hidden;
            scalar_t* tr = t.data() + r * hidden;
            const scalar_t ss = tanh_row(pu, qi, b1, inv, tr, hidden);
            rnorm[r] = 1 / std::max(std::sqrt(ss), tiny);
          }
          for (std::int64_t m0 = 0; m0 < n; m0 += kMR) {
            const scalar_t* trow[kMR];
            for (std::int64_t r = 0; r < kMR; ++r)  // a short last group repeats its first pair
              trow[r] = t.data() + (m0 + r < n ? m0 + r : m0) * hidden;
            for (std::int64_t pn = 0; pn < n_panels; ++pn)
              micro_kernel<scalar_t, kNR>(trow, packed.data() + pn * hidden * kNR, hidden,
                                          s.data() + m0 * ld_s + pn * kNR, ld_s);
          }
          for (std::int64_t r = 0; r < n; ++r) {
            const scalar_t* sr = s.data() + r * ld_s;
            const scalar_t* vi = items + (i0 + r) * d;
            const scalar_t rn = rnorm[r];
            scalar_t top = 0;  // relu output >= 0
#pragma omp simd reduction(max : top)
            for (std::int64_t o = 0; o < d; ++o) {
              w[o] = std::max(sr[o] * rn + b2[o], scalar_t(0));
              top = std::max(top, w[o]);
            }
            const scalar_t scale = static_cast<scalar_t>(d) / exp_row(w.data(), top, d);
            scalar_t dist = 0;
#pragma omp simd reduction(+ : dist)
            for (std::int64_t o = 0; o < d; ++o) {
              const scalar_t a = w[o] * scale;
              const scalar_t e = a * uu[o] - a * vi[o];
              dist += e * e;
            }
            score[r] = static_cast<float>(-dist);
          }
          const index_t end = rowptr[u + 1];
          for (; next[ur] < end && col[next[ur]] < i0 + n; ++next[ur])
            score[col[next[ur]] - i0] = masked;
          topk[ur].offer(score.data(), n, i0);
        }
      }
      for (std::int64_t r = 0; r < nu; ++r)
        topk[r].write(out_values + (u0 + r) * k, out_indices + (u0 + r) * k);
    }
  }
}

}  // namespace

SGFD_BIND(attentive_distance_topk) {
  m.def(
      "attentive_distance_topk",
      [](std::uintptr_t users, std::uintptr_t items, std::uintptr_t p, std::uintptr_t q,
         std::uintptr_t user_sq, std::uintptr_t item_sq, std::uintptr_t b1, std::uintptr_t w2t,
         std::uintptr_t b2, std::uintptr_t rowptr, std::uintptr_t col, std::int64_t n_users,
         std::int64_t n_items, std::int64_t d, std::int64_t hidden, std::int64_t k,
         bool has_mask_value, double mask_value, std::uintptr_t out_values,
         std::uintptr_t out_indices, const std::string& index_dtype, const std::string& dtype) {
        dispatch_float_index(dtype, index_dtype, [&](auto scalar_tag, auto index_tag) {
          using scalar_t = decltype(scalar_tag);
          using index_t = decltype(index_tag);
          attentive_distance_topk_kernel<scalar_t, index_t>(
              ptr<const scalar_t>(users), ptr<const scalar_t>(items), ptr<const scalar_t>(p),
              ptr<const scalar_t>(q), ptr<const scalar_t>(user_sq), ptr<const scalar_t>(item_sq),
              ptr<const scalar_t>(b1), ptr<const scalar_t>(w2t), ptr<const scalar_t>(b2),
              ptr<const index_t>(rowptr), ptr<const index_t>(col), n_users, n_items, d, hidden, k,
              has_mask_value, static_cast<float>(mask_value), ptr<float>(out_values),
              ptr<std::int64_t>(out_indices));
        });
      },
      "per-user top-k of MAML's attentive score -d(u, i) with the CSR mask applied",
      py::arg("users"), py::arg("items"), py::arg("p"), py::arg("q"), py::arg("user_sq"),
      py::arg("item_sq"), py::arg("b1"), py::arg("w2t"), py::arg("b2"), py::arg("rowptr"),
      py::arg("col"), py::arg("n_users"), py::arg("n_items"), py::arg("d"), py::arg("hidden"),
      py::arg("k"), py::arg("has_mask_value"), py::arg("mask_value"), py::arg("out_values"),
      py::arg("out_indices"), py::arg("index_dtype"), py::arg("dtype"),
      py::call_guard<py::gil_scoped_release>());
}

}  // namespace sgfd
