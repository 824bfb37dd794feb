// The per-user top-k of the fused ranking kernels (masked_topk, attentive_distance_topk).
//
// Candidates above the threshold are appended to a buffer of a few k; when it fills, a selection
// (nth_element) keeps the k best and the threshold becomes the k-th best score. A heap did the
// same with a pop and a push per accepted candidate, ~k·ln(n/k) of them per user on random scores:
// on office (k = 50) that heap work cost more than the scoring GEMM itself.
//
// Candidates arrive in increasing item id, so one with a score equal to the threshold can never
// win its tie against the k-th kept (the lower id wins): the caller's hot loop is a single
// `score > threshold` compare, which also keeps NaN and -inf out.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

namespace sgfd {

struct Cand {
  float score;
  std::int64_t id;
};

// "a ranks before b": higher score, then lower id.
inline bool ranks_before(const Cand& a, const Cand& b) {
  return a.score > b.score || (a.score == b.score && a.id < b.id);
}

class TopK {
 public:
  // Buffer entries one TopK needs for a given k.
  static std::int64_t capacity(std::int64_t k) { return 3 * k + 64; }

  // buf: capacity(k) entries owned by the caller.
  TopK(Cand* buf, std::int64_t k) : buf_(buf), k_(k), cap_(capacity(k)) {}

  // Offers scores[r] for item first_id + r, r < n (ids above every id offered before).
  void offer(const float* scores, std::int64_t n, std::int64_t first_id) {
    // Branch-free append: every score is written to the next free slot, which only counts when
    // it beats the threshold (a data-dependent branch mispredicted on every accepted candidate).
    for (std::int64_t r = 0; r < n; ++r) {
      buf_[size_] = Cand{scores[r], first_id + r};
      size_ += scores[r] > thr_;  // false for NaN and -inf: absent
      if (size_ == cap_) shrink();
    }
  }

  // The k slots best first; slots without a candidate hold value -inf and index -1.
  void write(float* values, std::int64_t* indices) {
    if (size_ > k_) shrink();
    std::sort(buf_, buf_ + size_, ranks_before);
    for (std::int64_t j = 0; j < k_; ++j) {
      values[j] = j < size_ ? buf_[j].score : -std::numeric_limits<float>::infinity();
      indices[j] = j < size_ ? buf_[j].id : -1;
    }
  }

 private:
  // Keep the k best; the k-th best's score is the new threshold.
  void shrink() {
    std::nth_element(buf_, buf_ + (k_ - 1), buf_ + size_, ranks_before);
    size_ = k_;
    thr_ = buf_[k_ - 1].score;
  }

  Cand* buf_;
  std::int64_t k_, cap_;
  std::int64_t size_ = 0;
  float thr_ = -std::numeric_limits<float>::infinity();
};

}  // namespace sgfd
