// The per-user top-k heap of the fused ranking kernels (masked_topk, attentive_distance_topk).
//
// The heap's front is the worst kept candidate. Candidates arrive in increasing item id, so one
// with a score equal to the front can never win its tie (the lower id wins): the caller's hot loop
// is a single `score > threshold()` compare, which also keeps NaN and -inf out.
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
  TopK(Cand* heap, std::int64_t k) : heap_(heap), k_(k) {}
  float threshold() const {
    return size_ < k_ ? -std::numeric_limits<float>::infinity() : heap_[0].score;
  }
  // Caller guarantees score > threshold() and id larger than every id offered before.
  void push(float score, std::int64_t id) {
    if (size_ == k_) {
      std::pop_heap(heap_, heap_ + size_, ranks_before);
      --size_;
    }
    heap_[size_++] = Cand{score, id};
    std::push_heap(heap_, heap_ + size_, ranks_before);
  }
  // Offers scores[r] for item first_id + r, r < n (ids above every id offered before).
  void offer(const float* scores, std::int64_t n, std::int64_t first_id) {
    float thr = threshold();
    for (std::int64_t r = 0; r < n; ++r) {
      if (scores[r] > thr) {  // false for NaN and -inf: absent
        push(scores[r], first_id + r);
        thr = threshold();
      }
    }
  }
  // The k slots best first; slots without a candidate hold value -inf and index -1.
  void write(float* values, std::int64_t* indices) {
    std::sort_heap(heap_, heap_ + size_, ranks_before);
    for (std::int64_t j = 0; j < k_; ++j) {
      values[j] = j < size_ ? heap_[j].score : -std::numeric_limits<float>::infinity();
      indices[j] = j < size_ ? heap_[j].id : -1;
    }
  }

 private:
  Cand* heap_;
  std::int64_t k_;
  std::int64_t size_ = 0;
};

}  // namespace sgfd
