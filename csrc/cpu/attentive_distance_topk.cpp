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
//
// precision "bf16" (float32 inputs, a CPU with AVX512-BF16 at run time): the same result, bit for
// bit, through a bf16 filter. Per user block, pass 1 computes each pair's tanh rows with the fp32
// path's own function, the product with bf16 operands (vdpbf16ps, fp32 accumulation) and the
// same epilogue, and brackets the fp32 path's distance around that one (per pair, from W2's and
// the tanh row's known bf16 rounding errors; derivation: sgfd_fast/ops/_bf16_filter.py). Pass 2
// takes τ = the k-th largest lower bound of each user's scores and re-scores the items whose
// upper bound reaches it with score_pairs, the fp32 path's code for a list of pairs: a pair's
// score depends on its own rows only, so the candidates score exactly as in the fp32 path, and
// arrive in increasing id as there.
#include "bf16_filter.h"
#include "common.h"
#include "topk_buffer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <limits>
#include <string>
#include <type_traits>
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

template <typename scalar_t>
constexpr std::int64_t kNR = 128 / sizeof(scalar_t);  // two 512-bit vectors of outputs

// The inputs of one call, W2^T packed as panels of kNR output columns, each H × kNR (zero padded
// past D).
template <typename scalar_t>
struct Problem {
  Problem(const scalar_t* users, const scalar_t* items, const scalar_t* p, const scalar_t* q,
          const scalar_t* user_sq, const scalar_t* item_sq, const scalar_t* b1,
          const scalar_t* w2t, const scalar_t* b2, std::int64_t d, std::int64_t hidden)
      : users(users), items(items), p(p), q(q), user_sq(user_sq), item_sq(item_sq), b1(b1),
        b2(b2), d(d), hidden(hidden), n_panels((d + kNR<scalar_t> - 1) / kNR<scalar_t>),
        ld_s(n_panels * kNR<scalar_t>), packed(static_cast<std::size_t>(ld_s * hidden)) {
    constexpr std::int64_t nr = kNR<scalar_t>;
    for (std::int64_t pn = 0; pn < n_panels; ++pn)
      for (std::int64_t c = 0; c < hidden; ++c)
        for (std::int64_t j = 0; j < nr; ++j) {
          const std::int64_t o = pn * nr + j;
          packed[(pn * hidden + c) * nr + j] = o < d ? w2t[c * d + o] : 0;
        }
  }
  const scalar_t *users, *items, *p, *q, *user_sq, *item_sq, *b1, *b2;
  std::int64_t d, hidden, n_panels, ld_s;
  std::vector<scalar_t> packed;
};

// For r < n, pair (u, ids[r]): row r of t (stride ld_t) = tanh of the pair's hidden
// pre-activation, ss[r] = the sum of its squares, rnorm[r] = 1 / max(sqrt(ss[r]), 1e-12). One
// out-of-line function for the fp32 path and the bf16 filter's first pass: both see the same t.
template <typename scalar_t>
__attribute__((noinline)) void tanh_rows(const Problem<scalar_t>& pr, std::int64_t u,
                                         const std::int64_t* ids, std::int64_t n, scalar_t* t,
                                         std::int64_t ld_t, scalar_t* ss, scalar_t* rnorm) {
  const scalar_t tiny = static_cast<scalar_t>(1e-12);  // F.normalize's / the norm clamp's eps
  const scalar_t* pu = pr.p + u * pr.hidden;
  for (std::int64_t r = 0; r < n; ++r) {
    const std::int64_t i = ids[r];
    const scalar_t inv = 1 / std::max(std::sqrt(pr.user_sq[u] + pr.item_sq[i]), tiny);
    ss[r] = tanh_row(pu, pr.q + i * pr.hidden, pr.b1, inv, t + r * ld_t, pr.hidden);
    rnorm[r] = 1 / std::max(std::sqrt(ss[r]), tiny);
  }
}

// d(u, i) of one pair from sr = W2 · t (t not normalised) and rn = 1 / ||t||: the D-scaled
// softmax of w = relu(sr rn + b2) weighting (u - v_i)^2. *scale = D / Σ_o exp(w_o - max w), the
// largest weight. w: D scratch entries.
template <typename scalar_t>
inline scalar_t pair_distance(const scalar_t* sr, scalar_t rn, const scalar_t* b2,
                              const scalar_t* uu, const scalar_t* vi, scalar_t* w, std::int64_t d,
                              scalar_t* scale) {
  scalar_t top = 0;  // relu output >= 0
#pragma omp simd reduction(max : top)
  for (std::int64_t o = 0; o < d; ++o) {
    w[o] = std::max(sr[o] * rn + b2[o], scalar_t(0));
    top = std::max(top, w[o]);
  }
  const scalar_t sc = static_cast<scalar_t>(d) / exp_row(w, top, d);
  scalar_t dist = 0;
#pragma omp simd reduction(+ : dist)
  for (std::int64_t o = 0; o < d; ++o) {
    const scalar_t a = w[o] * sc;
    const scalar_t e = a * uu[o] - a * vi[o];
    dist += e * e;
  }
  *scale = sc;
  return dist;
}

// Per-thread buffers of the fp32 scoring.
template <typename scalar_t>
struct Scratch {
  explicit Scratch(const Problem<scalar_t>& pr)
      : t(static_cast<std::size_t>(kTile * pr.hidden)),
        s(static_cast<std::size_t>(kTile * pr.ld_s)), ss(kTile), rnorm(kTile),
        w(static_cast<std::size_t>(pr.d)) {}
  std::vector<scalar_t> t, s, ss, rnorm, w;  // tanh rows, W2 · tanh rows, per pair, per output
};

// score[r] = the fp32 path's score of pair (u, ids[r]), -d as float32, r < n <= kTile: tanh rows,
// the register-blocked product with W2^T, the epilogue. The fp32 path scores tiles of
// consecutive items with it and the bf16 filter its candidates (one out-of-line function): a
// pair's score depends on its own rows only (one accumulator per output, h ascending; a short
// last group repeats a pair), so both get it bit for bit.
template <typename scalar_t>
__attribute__((noinline)) void score_pairs(const Problem<scalar_t>& pr, std::int64_t u,
                                           const std::int64_t* ids, std::int64_t n,
                                           Scratch<scalar_t>& sc, float* score) {
  constexpr std::int64_t nr = kNR<scalar_t>;
  const std::int64_t hidden = pr.hidden, ld_s = pr.ld_s;
  tanh_rows(pr, u, ids, n, sc.t.data(), hidden, sc.ss.data(), sc.rnorm.data());
  for (std::int64_t m0 = 0; m0 < n; m0 += kMR) {
    const scalar_t* trow[kMR];
    for (std::int64_t r = 0; r < kMR; ++r)  // a short last group repeats its first pair
      trow[r] = sc.t.data() + (m0 + r < n ? m0 + r : m0) * hidden;
    for (std::int64_t pn = 0; pn < pr.n_panels; ++pn)
      micro_kernel<scalar_t, nr>(trow, pr.packed.data() + pn * hidden * nr, hidden,
                                 sc.s.data() + m0 * ld_s + pn * nr, ld_s);
  }
  const scalar_t* uu = pr.users + u * pr.d;
  for (std::int64_t r = 0; r < n; ++r) {
    scalar_t scale;
    score[r] = static_cast<float>(-pair_distance(sc.s.data() + r * ld_s, sc.rnorm[r], pr.b2, uu,
                                                 pr.items + ids[r] * pr.d, sc.w.data(), pr.d,
                                                 &scale));
  }
}

template <typename scalar_t, typename index_t>
void attentive_distance_topk_kernel(const Problem<scalar_t>& pr, const index_t* rowptr,
                                    const index_t* col, std::int64_t n_users,
                                    std::int64_t n_items, std::int64_t k, float masked,
                                    float* out_values, std::int64_t* out_indices) {
  if (n_users == 0 || k == 0) return;
  const std::int64_t n_blocks = (n_users + kUserBlock - 1) / kUserBlock;
#pragma omp parallel
  {
    std::vector<std::uint64_t> bufs(static_cast<std::size_t>(kUserBlock * TopK::capacity(k)));
    Scratch<scalar_t> sc(pr);
    std::vector<float> score(kTile);
    std::vector<index_t> next(kUserBlock);  // per user: next unread entry of its mask row
    std::int64_t ids[kTile];
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t b = 0; b < n_blocks; ++b) {
      const std::int64_t u0 = b * kUserBlock;
      const std::int64_t nu = std::min(kUserBlock, n_users - u0);
      std::vector<TopK> topk = start_user_block(bufs.data(), k, u0, nu, rowptr, next.data());
      for (std::int64_t i0 = 0; i0 < n_items; i0 += kTile) {
        const std::int64_t n = std::min(kTile, n_items - i0);
        for (std::int64_t r = 0; r < n; ++r) ids[r] = i0 + r;
        for (std::int64_t ur = 0; ur < nu; ++ur) {
          const std::int64_t u = u0 + ur;
          score_pairs(pr, u, ids, n, sc, score.data());
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

// ---- precision "bf16": the filter ----------------------------------------------------------

constexpr std::int64_t kPairNR = 32;  // outputs per bf16 panel: two 16-lane vectors

#if defined(SGFD_BF16_FILTER)
// Rows r < n of t (float32, stride ld_t, zero from H up to 2 h2) as bf16 pairs, rounded to
// nearest even: tp[r h2 + c] holds t[r][2c] (low half) and t[r][2c + 1]; h2 a multiple of 16.
// sdelta[r] = Σ_h (t̂_h - t_h)², t̂ the bf16 values the instruction returned (each difference is
// exact in float32).
__attribute__((target("avx512f,avx512bf16"))) void to_bf16_pairs(const float* t,
                                                                 std::int64_t ld_t,
                                                                 std::int64_t n, std::int64_t h2,
                                                                 std::uint32_t* tp,
                                                                 float* sdelta) {
  for (std::int64_t r = 0; r < n; ++r) {
    __m512 acc = _mm512_setzero_ps();
    for (std::int64_t c = 0; c < h2; c += 16) {
      const float* x = t + r * ld_t + 2 * c;
      const __m512 lo = _mm512_loadu_ps(x), hi = _mm512_loadu_ps(x + 16);
      const __m512i v = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
      _mm512_storeu_si512(tp + r * h2 + c, v);
      // the bf16 values back in float32 (16 bits up), each half of v: 16 of t's values
      const __m512 tlo = _mm512_castsi512_ps(
          _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(v)), 16));
      const __m512 thi = _mm512_castsi512_ps(
          _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(v, 1)), 16));
      const __m512 dlo = _mm512_sub_ps(lo, tlo), dhi = _mm512_sub_ps(hi, thi);
      acc = _mm512_fmadd_ps(dlo, dlo, acc);
      acc = _mm512_fmadd_ps(dhi, dhi, acc);
    }
    sdelta[r] = _mm512_reduce_add_ps(acc);
  }
}

// out[r][j] ≈ <t row r, W2 row j of the panel> for kMR pairs and kPairNR outputs: vdpbf16ps adds
// the products of one hidden pair (bf16, exact in fp32) into each output's fp32 lane. tpair[r][c]
// holds pair r's t[2c] (low half) and t[2c + 1]; the panel, per c, the same pairs of W2's rows.
__attribute__((target("avx512f,avx512bf16"))) void bf16_micro_kernel(
    const std::uint32_t* const* tpair, const std::uint32_t* panel, std::int64_t h2, float* out,
    std::int64_t ld_out) {
  __m512 acc[kMR][2];
  for (std::int64_t r = 0; r < kMR; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (std::int64_t c = 0; c < h2; ++c) {
    const __m512bh p0 = (__m512bh)_mm512_loadu_si512(panel + c * kPairNR);
    const __m512bh p1 = (__m512bh)_mm512_loadu_si512(panel + c * kPairNR + 16);
    for (std::int64_t r = 0; r < kMR; ++r) {
      const __m512bh t = (__m512bh)_mm512_set1_epi32(static_cast<int>(tpair[r][c]));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], t, p0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], t, p1);
    }
  }
  for (std::int64_t r = 0; r < kMR; ++r) {
    _mm512_storeu_ps(out + r * ld_out, acc[r][0]);
    _mm512_storeu_ps(out + r * ld_out + 16, acc[r][1]);
  }
}
#else
// never called: bf16_filter_available() is false
void to_bf16_pairs(const float*, std::int64_t, std::int64_t, std::int64_t, std::uint32_t*,
                   float*) {}
void bf16_micro_kernel(const std::uint32_t* const*, const std::uint32_t*, std::int64_t, float*,
                       std::int64_t) {}
#endif

// The constants of the bracket of the fp32 path's distance d32 of a pair around the filter's d̂
// (sgfd_fast/ops/_bf16_filter.py, "attentive_distance_topk": the derivation), from W2, b2, D and H.
// Per pair, with rδ = rn ||t̂ - t|| <= sqrt(sdelta sq_scale + sq_abs) rn, E = e0 + e1 rδ (<= 1/8),
// x = 4E, up = 1 + x + x² >= e^x, down = 1 - x <= e^-x and y = scale² (|u| + |v_i|)²:
//   down (1 - m) d̂ - theta (1 + up) y - lambda <= d32 <= up (1 + m) d̂ + 2 theta up y + lambda,
// every constant with the margins of its float32 evaluation (m = 2^-18). ok: W2 and b2 are
// finite and every |z_o| <= 16 (the range the exp error is bounded on); else the fp32 path runs.
struct Bracket {
  float e0, e1, sq_scale, sq_abs, theta, lambda;
  bool ok;
};
constexpr float kMargin = 0x1p-18f;
Bracket attentive_bracket(const float* w2t, const float* b2, std::int64_t d,
                          std::int64_t hidden) {
  const double v = 0x1p-8, u = 0x1p-24, eta = 0x1p-126, h = static_cast<double>(hidden),
               dd = static_cast<double>(d), sh = std::sqrt(h);
  const auto gamma = [&](double n, double unit) { return n * unit / (1 - n * unit); };
  const double g1 = gamma(h, u), g2 = gamma(h, 2 * u);
  const double c = (1 + g2) * (1 + v) * (1 + v) - 1 + g1;  // masked_topk's, over H: |ẑ| range
  const double rho = (1 + 3 * u) * (1 + 0x1p-60) / (1 - g1);  // rn |t| where ss >= 2^-59
  double e0 = 0, e1 = 0, zmax = 0;
  bool finite = true;
  for (std::int64_t o = 0; o < d; ++o) {
    double wn = 0, whn = 0, dwn = 0;  // |W_o|², |Ŵ_o|², |Ŵ_o - W_o|²
    for (std::int64_t k = 0; k < hidden; ++k) {
      const float x = w2t[k * d + o];
      std::uint32_t bits = bf16_bits(x) << 16;
      float xh;
      std::memcpy(&xh, &bits, sizeof xh);
      wn += static_cast<double>(x) * x;
      whn += static_cast<double>(xh) * xh;
      dwn += (static_cast<double>(xh) - x) * (static_cast<double>(xh) - x);
    }
    wn = std::sqrt(wn), whn = std::sqrt(whn), dwn = std::sqrt(dwn);
    const double bo = std::fabs(static_cast<double>(b2[o]));
    finite = finite && std::isfinite(wn) && std::isfinite(bo);
    // underflow: the fp32 product's and the accumulation's (2H η each), denormal operands read
    // as zero (η √H per operand norm)
    const double under = rho * 0x1p30 * ((4 * h + 2) * eta + 2 * eta * sh * (wn + whn + 2 * sh));
    e0 = std::max(e0, rho * (dwn + g2 * whn + g1 * wn) + under +
                          2 * (2.01 * u * (rho * (1 + 2 * c) * wn + bo) + 2 * eta));
    e1 = std::max(e1, whn * (1 + g2));
    zmax = std::max(zmax, (1 + c) * rho * wn + under + bo);
  }
  zmax = zmax * (1 + 0x1p-20) + 2 * eta;
  // the epilogue's own rounding: |d - Φ(w)| <= theta Y(w) + lambda / 2
  const double exp_err = 0x1p-18;
  const double alpha =
      (1 + exp_err) * (1 + u) * (1 + u) / ((1 - exp_err) * (1 - gamma(dd, u))) - 1;
  const double beta = alpha + 2.01 * u * (1 + alpha);
  const double theta = (gamma(dd, u) + beta * (2 + beta) * (1 + gamma(dd, u))) *
                       (1 + alpha) * (1 + alpha) * (1 + 2.0 * kMargin);
  const double up = 1 + 0x1p-16;  // the float32 evaluation of E (6 roundings)
  return {static_cast<float>(e0 * up), static_cast<float>(e1 * up),
          static_cast<float>((1 + 0x1p-18) / (1 - g1)), static_cast<float>(2 * h * eta),
          static_cast<float>(theta), static_cast<float>(2 * (dd * dd * 0x1p-100 + dd * 0x1p-125)),
          finite && std::isfinite(zmax) && zmax <= 16};
}

// The fp32 path's result (float32 inputs, 0 < k < n_items) through the filter; returns the number
// of (user, item) pairs re-scored in fp32, or -1 (nothing written) where W2, b2 or a user or item
// row is not finite or too large (bracket not ok, a row norm above 2^20): the caller runs the
// fp32 path.
template <typename index_t>
std::int64_t attentive_distance_topk_bf16_kernel(const Problem<float>& pr, const float* w2t,
                                                 const index_t* rowptr, const index_t* col,
                                                 std::int64_t n_users, std::int64_t n_items,
                                                 std::int64_t k, float masked, float* out_values,
                                                 std::int64_t* out_indices) {
  const std::int64_t d = pr.d, hidden = pr.hidden;
  const Bracket br = attentive_bracket(w2t, pr.b2, d, hidden);
  if (!br.ok) return -1;
  const auto norm = [d](const float* x) {
    double s = 0;
    for (std::int64_t c = 0; c < d; ++c) s += static_cast<double>(x[c]) * x[c];
    return std::sqrt(s);
  };
  std::vector<float> norm_u(n_users), norm_v(n_items);  // rounded up
  bool bad = false;
#pragma omp parallel for schedule(static) reduction(|| : bad)
  for (std::int64_t r = 0; r < n_users + n_items; ++r) {
    const double n = norm(r < n_users ? pr.users + r * d : pr.items + (r - n_users) * d);
    bad = bad || !(n <= 0x1p20);  // NaN too
    (r < n_users ? norm_u[r] : norm_v[r - n_users]) = static_cast<float>(n * (1 + 0x1p-20));
  }
  if (bad) return -1;

  // W2 in bf16 panels of kPairNR outputs: panel pn, hidden pair c, lane j holds W2[o][2c] (low
  // half) and W2[o][2c + 1], o = pn kPairNR + j (zero past D and H).
  const std::int64_t h2 = (hidden + 31) / 32 * 16;
  const std::int64_t n_panels = (d + kPairNR - 1) / kPairNR, ld_s = n_panels * kPairNR;
  std::vector<std::uint32_t> packed(static_cast<std::size_t>(n_panels * h2 * kPairNR));
  for (std::int64_t pn = 0; pn < n_panels; ++pn)
    for (std::int64_t c = 0; c < h2; ++c)
      for (std::int64_t j = 0; j < kPairNR; ++j) {
        const std::int64_t o = pn * kPairNR + j;
        const auto at = [&](std::int64_t h) {
          return o < d && h < hidden ? bf16_bits(w2t[h * d + o]) : 0u;
        };
        packed[(pn * h2 + c) * kPairNR + j] = at(2 * c) | at(2 * c + 1) << 16;
      }

  const std::int64_t n_blocks = (n_users + kUserBlock - 1) / kUserBlock;
  const float inf = std::numeric_limits<float>::infinity();
  const float masked_bound = std::isnan(masked) ? -inf : masked;  // NaN ranks as absent
  std::int64_t rescored = 0;
#pragma omp parallel reduction(+ : rescored)
  {
    std::vector<std::uint64_t> bufs(static_cast<std::size_t>(kUserBlock * TopK::capacity(k)));
    Scratch<float> sc(pr);
    std::vector<float> t(static_cast<std::size_t>(kTile * 2 * h2), 0.0f), ss(kTile),
        rnorm(kTile), sdelta(kTile), s(static_cast<std::size_t>(kTile * ld_s)), w(d);
    std::vector<std::uint32_t> tp(static_cast<std::size_t>(kTile * h2));
    // per user of the block and item: the bracket of its fp32 score (lower, upper)
    std::vector<float> lower(static_cast<std::size_t>(kUserBlock * n_items)),
        upper(static_cast<std::size_t>(kUserBlock * n_items)), kth(n_items), exact(kTile);
    std::vector<std::int64_t> cand(n_items);
    std::vector<index_t> next(kUserBlock);
    std::int64_t ids[kTile];
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t b = 0; b < n_blocks; ++b) {
      const std::int64_t u0 = b * kUserBlock;
      const std::int64_t nu = std::min(kUserBlock, n_users - u0);
      std::vector<TopK> topk = start_user_block(bufs.data(), k, u0, nu, rowptr, next.data());
      // Pass 1: the fp32 path's tanh rows, the bf16 product, the fp32 epilogue: d̂ and its
      // bracket of the fp32 score -d32 (a masked item: the fixed score; a row too small to bound,
      // or a score not finite: any score).
      for (std::int64_t i0 = 0; i0 < n_items; i0 += kTile) {
        const std::int64_t n = std::min(kTile, n_items - i0);
        for (std::int64_t r = 0; r < n; ++r) ids[r] = i0 + r;
        for (std::int64_t ur = 0; ur < nu; ++ur) {
          const std::int64_t u = u0 + ur;
          tanh_rows(pr, u, ids, n, t.data(), 2 * h2, ss.data(), rnorm.data());
          to_bf16_pairs(t.data(), 2 * h2, n, h2, tp.data(), sdelta.data());
          for (std::int64_t m0 = 0; m0 < n; m0 += kMR) {
            const std::uint32_t* tpair[kMR];
            for (std::int64_t r = 0; r < kMR; ++r)
              tpair[r] = tp.data() + (m0 + r < n ? m0 + r : m0) * h2;
            for (std::int64_t pn = 0; pn < n_panels; ++pn)
              bf16_micro_kernel(tpair, packed.data() + pn * h2 * kPairNR, h2,
                                s.data() + m0 * ld_s + pn * kPairNR, ld_s);
          }
          const float* uu = pr.users + u * d;
          float* lo = lower.data() + ur * n_items;
          float* up = upper.data() + ur * n_items;
          for (std::int64_t r = 0; r < n; ++r) {
            const std::int64_t i = i0 + r;
            float scale;
            const float dh = pair_distance(s.data() + r * ld_s, rnorm[r], pr.b2, uu,
                                           pr.items + i * d, w.data(), d, &scale);
            const float g = norm_u[u] + norm_v[i];
            const float y = scale * scale * (g * g);
            const float e = br.e0 + br.e1 * (std::sqrt(sdelta[r] * br.sq_scale + br.sq_abs) *
                                             rnorm[r]);
            const float x = 4 * e, up_e = 1 + x + x * x, down_e = 1 - x;
            const float d_up = up_e * (1 + kMargin) * dh + 2 * br.theta * up_e * y + br.lambda;
            const float d_lo =
                down_e * (1 - kMargin) * dh - br.theta * (1 + up_e) * y - br.lambda;
            const bool ok = ss[r] >= 0x1p-59f && e <= 0.125f &&
                            d_up <= std::numeric_limits<float>::max();
            lo[i] = ok ? -d_up : -inf;
            up[i] = ok ? -d_lo : inf;
          }
          const index_t end = rowptr[u + 1];
          for (; next[ur] < end && col[next[ur]] < i0 + n; ++next[ur])
            lo[col[next[ur]]] = up[col[next[ur]]] = masked_bound;
        }
      }
      // Pass 2: per user, tau = the k-th largest lower bound (k distinct items score at least
      // tau in fp32); the items whose upper bound reaches it, re-scored by the fp32 path's code.
      for (std::int64_t ur = 0; ur < nu; ++ur) {
        const std::int64_t u = u0 + ur;
        const float* lo = lower.data() + ur * n_items;
        const float* up = upper.data() + ur * n_items;
        std::copy(lo, lo + n_items, kth.begin());
        std::nth_element(kth.begin(), kth.begin() + (k - 1), kth.end(), std::greater<float>());
        const float tau = kth[k - 1];
        std::int64_t n_cand = 0;
        for (std::int64_t i = 0; i < n_items; ++i) {  // branch-free append
          cand[n_cand] = i;
          n_cand += up[i] >= tau && up[i] > -inf;
        }
        index_t m = rowptr[u];
        const index_t end = rowptr[u + 1];
        for (std::int64_t c0 = 0; c0 < n_cand; c0 += kTile) {
          const std::int64_t n = std::min(kTile, n_cand - c0);
          const std::int64_t* cid = cand.data() + c0;
          score_pairs(pr, u, cid, n, sc, exact.data());
          for (std::int64_t j = 0; j < n; ++j) {  // masked candidates score the fixed value
            for (; m < end && col[m] < cid[j]; ++m) {
            }
            if (m < end && col[m] == cid[j]) exact[j] = masked;
          }
          topk[ur].offer_ids(exact.data(), cid, n);
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

SGFD_BIND(attentive_distance_topk) {
  m.def(
      "attentive_distance_topk",
      [](std::uintptr_t users, std::uintptr_t items, std::uintptr_t p, std::uintptr_t q,
         std::uintptr_t user_sq, std::uintptr_t item_sq, std::uintptr_t b1, std::uintptr_t w2t,
         std::uintptr_t b2, std::uintptr_t rowptr, std::uintptr_t col, std::int64_t n_users,
         std::int64_t n_items, std::int64_t d, std::int64_t hidden, std::int64_t k,
         bool has_mask_value, double mask_value, std::uintptr_t out_values,
         std::uintptr_t out_indices, const std::string& index_dtype, const std::string& dtype,
         const std::string& precision) {
        if (precision != "fp32" && precision != "bf16")
          throw std::invalid_argument(
              "attentive_distance_topk: precision must be fp32 or bf16, got '" + precision + "'");
        check_topk_ids(n_items);  // before any pointer is read
        const bool filter = precision == "bf16" && dtype == "float32" && k > 0 &&
                            k < n_items && n_users > 0 && bf16_filter_available();
        const float masked = has_mask_value ? static_cast<float>(mask_value)
                                            : -std::numeric_limits<float>::infinity();
        std::int64_t rescored = -1;
        dispatch_float_index(dtype, index_dtype, [&](auto scalar_tag, auto index_tag) {
          using scalar_t = decltype(scalar_tag);
          using index_t = decltype(index_tag);
          const Problem<scalar_t> pr(
              ptr<const scalar_t>(users), ptr<const scalar_t>(items), ptr<const scalar_t>(p),
              ptr<const scalar_t>(q), ptr<const scalar_t>(user_sq), ptr<const scalar_t>(item_sq),
              ptr<const scalar_t>(b1), ptr<const scalar_t>(w2t), ptr<const scalar_t>(b2), d,
              hidden);
          if constexpr (std::is_same_v<scalar_t, float>) {
            if (filter)
              rescored = attentive_distance_topk_bf16_kernel<index_t>(
                  pr, ptr<const float>(w2t), ptr<const index_t>(rowptr), ptr<const index_t>(col),
                  n_users, n_items, k, masked, ptr<float>(out_values),
                  ptr<std::int64_t>(out_indices));
          }
          if (rescored < 0)
            attentive_distance_topk_kernel<scalar_t, index_t>(
                pr, ptr<const index_t>(rowptr), ptr<const index_t>(col), n_users, n_items, k,
                masked, ptr<float>(out_values), ptr<std::int64_t>(out_indices));
        });
        return rescored;
      },
      "per-user top-k of MAML's attentive score -d(u, i) with the CSR mask applied; returns the "
      "pairs the bf16 filter re-scored in fp32, -1 where the fp32 path served",
      py::arg("users"), py::arg("items"), py::arg("p"), py::arg("q"), py::arg("user_sq"),
      py::arg("item_sq"), py::arg("b1"), py::arg("w2t"), py::arg("b2"), py::arg("rowptr"),
      py::arg("col"), py::arg("n_users"), py::arg("n_items"), py::arg("d"), py::arg("hidden"),
      py::arg("k"), py::arg("has_mask_value"), py::arg("mask_value"), py::arg("out_values"),
      py::arg("out_indices"), py::arg("index_dtype"), py::arg("dtype"), py::arg("precision"),
      py::call_guard<py::gil_scoped_release>());
}

}  // namespace sgfd
