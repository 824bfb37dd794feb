// The per-user top-k of the fused ranking kernels (masked_topk, attentive_distance_topk).
//
// Candidates above the threshold are appended to a buffer of a few k; when it fills, a selection
// (nth_element) keeps the k best and the threshold becomes the k-th best score. A heap did the
// same with a pop and a push per accepted candidate, ~k·ln(n/k) of them per user on random scores:
// on office (k = 50) that heap work cost more than the scoring GEMM itself.
//
// A candidate is one uint64 key whose unsigned order is the ranking order (higher score, then
// lower id): the score's bits mapped to an unsigned order above, the complement of the id below.
// Selection and the final sort then compare plain integers; a (score, id) comparator called
// through a function pointer was most of the selection's time.
//
// Candidates arrive in increasing item id, so one with a score equal to the threshold can never
// win its tie against the k-th kept (the lower id wins): the hot loop is a single
// `score > threshold` compare, which also keeps NaN and -inf out.
//
// Two appends, one result: with AVX-512 (the default -march=native build on such CPUs) a chunk
// of 16 scores is one compare mask and its candidates' keys are compressed onto the buffer's
// end; elsewhere a portable branch-free loop does the same. CI's machines take the AVX-512
// path: test the portable one with a SGFD_FAST_NATIVE=0 build when changing it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <stdexcept>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace sgfd {

// Ids are packed into 32 bits.
inline void check_topk_ids(std::int64_t n_items) {
  if (n_items > std::numeric_limits<std::uint32_t>::max())
    throw std::invalid_argument("sgfd_fast top-k: at most 2^32 - 1 items are supported");
}

// Float bits → unsigned bits of the same order (-0 and +0 equal, as the float compare has them).
inline std::uint32_t order_bits(float s) {
  std::uint32_t b;
  std::memcpy(&b, &s, sizeof b);
  b = b == 0x80000000u ? 0u : b;
  return b ^ (static_cast<std::uint32_t>(static_cast<std::int32_t>(b) >> 31) | 0x80000000u);
}

inline float from_order_bits(std::uint32_t o) {
  const std::uint32_t b = o & 0x80000000u ? o ^ 0x80000000u : ~o;
  float s;
  std::memcpy(&s, &b, sizeof s);
  return s;
}

inline std::uint64_t topk_key(float score, std::int64_t id) {
  return static_cast<std::uint64_t>(order_bits(score)) << 32 |
         static_cast<std::uint32_t>(~static_cast<std::uint32_t>(id));
}

class TopK {
 public:
  // Buffer entries one TopK needs for a given k: 3k + 64 candidates (the selection runs once
  // more are held) and the spare entries of one vector store past them.
  static constexpr std::int64_t kSlack = 8;
  static std::int64_t capacity(std::int64_t k) { return 3 * k + 64 + kSlack; }

  // buf: capacity(k) entries owned by the caller.
  TopK(std::uint64_t* buf, std::int64_t k) : buf_(buf), k_(k), cap_(3 * k + 64) {}

  // Offers scores[r] for item first_id + r, r < n (ids above every id offered before).
  void offer(const float* scores, std::int64_t n, std::int64_t first_id) {
    constexpr std::int64_t kChunk = 16;
    // Locals: the key stores could alias members (uint64 and int64 may alias), which would
    // reload and store size_ around every append.
    std::int64_t size = size_;
    float thr = thr_;
    const auto cut = [&] {  // the selection, then the locals again
      size_ = size;
      shrink();
      size = size_;
      thr = thr_;
    };
    for (std::int64_t r0 = 0; r0 < n; r0 += kChunk) {
      const std::int64_t r1 = std::min(r0 + kChunk, n);
#if defined(__AVX512F__)
      // The chunk's candidates as one mask; their keys compressed onto the buffer's end, eight
      // at a time (a register compress and a full store: the buffer has kSlack spare entries).
      const __mmask16 tail = static_cast<__mmask16>((1u << (r1 - r0)) - 1);
      const __m512 s = _mm512_maskz_loadu_ps(tail, scores + r0);
      const __mmask16 m = _mm512_mask_cmp_ps_mask(tail, s, _mm512_set1_ps(thr), _CMP_GT_OQ);
      if (m == 0) continue;
      __m512i b = _mm512_castps_si512(s);
      b = _mm512_mask_mov_epi32(b, _mm512_cmpeq_epi32_mask(b, _mm512_set1_epi32(INT32_MIN)),
                                _mm512_setzero_si512());  // -0 -> +0
      const __m512i order = _mm512_xor_si512(
          b, _mm512_or_si512(_mm512_srai_epi32(b, 31), _mm512_set1_epi32(INT32_MIN)));
      const __m512i low = _mm512_sub_epi32(
          _mm512_set1_epi32(static_cast<std::int32_t>(~static_cast<std::uint32_t>(first_id + r0))),
          _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0));
      for (int half = 0; half < 2; ++half) {
        const __mmask8 mh = static_cast<__mmask8>(m >> (8 * half));
        if (mh == 0) continue;
        const __m256i oh = half ? _mm512_extracti64x4_epi64(order, 1)
                                : _mm512_castsi512_si256(order);
        const __m256i lh = half ? _mm512_extracti64x4_epi64(low, 1) : _mm512_castsi512_si256(low);
        const __m512i keys = _mm512_or_si512(_mm512_slli_epi64(_mm512_cvtepu32_epi64(oh), 32),
                                             _mm512_cvtepu32_epi64(lh));
        _mm512_storeu_si512(buf_ + size, _mm512_maskz_compress_epi64(mh, keys));
        size += __builtin_popcount(mh);
        if (size > cap_) cut();
      }
#else
      // Once the threshold has risen most chunks hold no candidate: one vector compare skips them.
      std::int32_t above = 0;
#pragma omp simd reduction(+ : above)
      for (std::int64_t r = r0; r < r1; ++r) above += scores[r] > thr;
      if (above == 0) continue;
      // Branch-free append: every score is written to the next free slot, which only counts
      // when it beats the threshold (a data-dependent branch mispredicts on every candidate).
      for (std::int64_t r = r0; r < r1; ++r) {
        buf_[size] = topk_key(scores[r], first_id + r);
        size += scores[r] > thr;  // false for NaN and -inf: absent
        if (size > cap_) cut();
      }
#endif
    }
    size_ = size;
  }

  // Offers scores[r] for item ids[r], r < n (ids increasing, above every id offered before):
  // the scattered candidates of masked_topk's bf16 filter, a few per user.
  void offer_ids(const float* scores, const std::int64_t* ids, std::int64_t n) {
    for (std::int64_t r = 0; r < n; ++r) {
      buf_[size_] = topk_key(scores[r], ids[r]);
      size_ += scores[r] > thr_;  // false for NaN and -inf: absent
      if (size_ > cap_) shrink();
    }
  }

  // The k slots best first; slots without a candidate hold value -inf and index -1.
  void write(float* values, std::int64_t* indices) {
    if (size_ > k_) shrink();
    std::sort(buf_, buf_ + size_, std::greater<std::uint64_t>());
    for (std::int64_t j = 0; j < k_; ++j) {
      const bool has = j < size_;
      values[j] = has ? from_order_bits(static_cast<std::uint32_t>(buf_[j] >> 32))
                      : -std::numeric_limits<float>::infinity();
      indices[j] = has ? static_cast<std::int64_t>(~static_cast<std::uint32_t>(buf_[j])) : -1;
    }
  }

 private:
  // Keep the k best; the k-th best's score is the new threshold.
  void shrink() {
    std::nth_element(buf_, buf_ + (k_ - 1), buf_ + size_, std::greater<std::uint64_t>());
    size_ = k_;
    thr_ = from_order_bits(static_cast<std::uint32_t>(buf_[k_ - 1] >> 32));
  }

  std::uint64_t* buf_;
  std::int64_t k_, cap_;
  std::int64_t size_ = 0;
  float thr_ = -std::numeric_limits<float>::infinity();
};

// The top-k buffers of the nu users from u0 of a user block (stored in bufs, capacity(k) apart)
// and each user's first entry of its mask row (next[r] = rowptr[u0 + r]).
template <typename index_t>
inline std::vector<TopK> start_user_block(std::uint64_t* bufs, std::int64_t k, std::int64_t u0,
                                          std::int64_t nu, const index_t* rowptr, index_t* next) {
  std::vector<TopK> topk;
  topk.reserve(nu);
  for (std::int64_t r = 0; r < nu; ++r) {
    topk.emplace_back(bufs + r * TopK::capacity(k), k);
    next[r] = rowptr[u0 + r];
  }
  return topk;
}

}  // namespace sgfd
