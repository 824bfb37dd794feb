// sample_negatives (CPU): for each (batch row b, slot k) a uniform item that is not a training
// positive of user[b], by rejection: draw t of slot s = b * n_neg + k is
// negative_draw(key(seed), s, t), rejected while it is among the user's sorted positives (a scan
// of short rows, a binary search of long ones). Every slot is independent, so the result is the
// same for any thread count and equal to
// the CUDA kernel's. Users with no non-positive item are refused, so each loop terminates with
// probability 1 (expected n_items / (n_items - deg) draws).
#include "common.h"
#include "sample_negatives_rng.h"

#include <algorithm>

namespace sgfd {
namespace {

// Whether `item` is among the user's ascending positives [first, first + len). Most users have
// few: a full scan of a short row compiles to a few vector compares and never mispredicts, where a
// binary search mispredicts about every other step; long rows halve without branches.
constexpr std::int64_t kScanPositives = 32;

template <typename index_t>
inline bool is_positive(const index_t* first, std::int64_t len, std::int64_t item) {
  if (len <= kScanPositives) {
    bool hit = false;
    for (std::int64_t k = 0; k < len; ++k) hit |= static_cast<std::int64_t>(first[k]) == item;
    return hit;
  }
  while (len > 1) {
    const std::int64_t half = len / 2;
    first = static_cast<std::int64_t>(first[half - 1]) < item ? first + half : first;
    len -= half;
  }
  return static_cast<std::int64_t>(*first) == item;
}

// Returns the first batch row whose user is out of range or has every item as a positive (its
// slots are left unwritten), or -1. Checking here costs nothing next to the draws and spares the
// caller several tensor passes per batch.
constexpr std::int64_t kParallelSlots = 32768;

template <typename index_t>
std::int64_t sample_negatives_kernel(const std::int64_t* users, std::int64_t n_batch,
                                     std::int64_t n_neg, std::int64_t n_users,
                                     std::int64_t n_items, const index_t* rowptr,
                                     const index_t* items, std::uint64_t seed, std::int64_t* out) {
  const std::uint64_t key = negative_seed_key(seed);
  std::int64_t first_bad = n_batch;
  // A training batch (~10^3 slots) takes tens of microseconds: a thread team would cost more
  // than it saves, and stalls outright on a loaded machine.
#pragma omp parallel for schedule(static, 256) reduction(min : first_bad) \
    if (n_batch * n_neg >= kParallelSlots)
  for (std::int64_t b = 0; b < n_batch; ++b) {
    const std::int64_t u = users[b];
    if (u < 0 || u >= n_users || rowptr[u + 1] - rowptr[u] >= n_items) {
      first_bad = std::min(first_bad, b);
      continue;
    }
    const index_t* first = items + rowptr[u];
    const std::int64_t n_positives = rowptr[u + 1] - rowptr[u];
    for (std::int64_t s = b * n_neg; s < (b + 1) * n_neg; ++s) {
      std::int64_t item;
      std::uint64_t t = 0;
      do {
        item = negative_draw(key, static_cast<std::uint64_t>(s), t++,
                             static_cast<std::uint64_t>(n_items));
      } while (is_positive(first, n_positives, item));
      out[s] = item;
    }
  }
  return first_bad == n_batch ? -1 : first_bad;
}

}  // namespace

SGFD_BIND(sample_negatives) {
  m.def(
      "sample_negatives",
      [](std::uintptr_t users, std::int64_t n_batch, std::int64_t n_neg, std::int64_t n_users,
         std::int64_t n_items, std::uintptr_t rowptr, std::uintptr_t items,
         const std::string& index_dtype, std::uint64_t seed, std::uintptr_t out) {
        std::int64_t first_bad = -1;
        dispatch_index(index_dtype, [&](auto index_tag) {
          using index_t = decltype(index_tag);
          first_bad = sample_negatives_kernel<index_t>(
              ptr<const std::int64_t>(users), n_batch, n_neg, n_users, n_items,
              ptr<const index_t>(rowptr), ptr<const index_t>(items), seed,
              ptr<std::int64_t>(out));
        });
        return first_bad;
      },
      "Fill out (n_batch, n_neg) int64 with uniform non-positive items per user; returns the "
      "first batch row with an invalid or saturated user, or -1",
      py::arg("users"), py::arg("n_batch"), py::arg("n_neg"), py::arg("n_users"),
      py::arg("n_items"),
      py::arg("rowptr"), py::arg("items"), py::arg("index_dtype"), py::arg("seed"),
      py::arg("out"), py::call_guard<py::gil_scoped_release>());
}

}  // namespace sgfd
