// Counter-based draws for sample_negatives, shared by the CPU and CUDA kernels (and mirrored by
// the NumPy reference in sgfd_fast/sampling.py): draw t of output slot s is a pure function of
// (seed, s, t), so results do not depend on the thread count, the device or the schedule.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define SGFD_HD __host__ __device__ __forceinline__
#else
#define SGFD_HD inline
#endif

namespace sgfd {

// splitmix64's output function (Steele, Lea & Flood 2014): a bijective 64-bit mixer.
SGFD_HD std::uint64_t mix64(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Item of draw `attempt` for output slot `slot`: high 32 bits of the hash scaled to [0, n_items)
// (bias below n_items / 2^32; n_items < 2^32).
SGFD_HD std::int64_t negative_draw(std::uint64_t seed_key, std::uint64_t slot,
                                   std::uint64_t attempt, std::uint64_t n_items) {
  const std::uint64_t h =
      mix64(seed_key + slot * 0x9E3779B97F4A7C15ULL + attempt * 0xD1B54A32D192ED03ULL);
  return static_cast<std::int64_t>(((h >> 32) * n_items) >> 32);
}

// The per-seed key: seeds that differ in one bit give unrelated streams.
SGFD_HD std::uint64_t negative_seed_key(std::uint64_t seed) {
  return mix64(seed + 0x9E3779B97F4A7C15ULL);
}

// Whether `item` is in the ascending range [first, last).
template <typename index_t>
SGFD_HD bool sorted_contains(const index_t* first, const index_t* last, std::int64_t item) {
  const index_t* end = last;
  while (first < last) {
    const index_t* mid = first + (last - first) / 2;
    if (static_cast<std::int64_t>(*mid) < item) {
      first = mid + 1;
    } else {
      last = mid;
    }
  }
  return first != end && static_cast<std::int64_t>(*first) == item;
}

}  // namespace sgfd
