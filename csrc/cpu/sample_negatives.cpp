// sample_negatives (CPU): for each (batch row b, slot k) a uniform item that is not a training
// positive of user[b], by rejection: draw t of slot s = b * n_neg + k is
// negative_draw(key(seed), s, t), rejected while it is in the user's sorted positives (binary
// search). Every slot is independent, so the result is the same for any thread count and equal to
// the CUDA kernel's. The caller guarantees every user has at least one non-positive item, which
// makes each loop terminate with probability 1 (expected n_items / (n_items - deg) draws).
#include "common.h"
#include "sample_negatives_rng.h"

namespace sgfd {
namespace {

template <typename index_t>
void sample_negatives_kernel(const std::int64_t* users, std::int64_t n_batch, std::int64_t n_neg,
                             std::int64_t n_items, const index_t* rowptr, const index_t* items,
                             std::uint64_t seed, std::int64_t* out) {
  const std::uint64_t key = negative_seed_key(seed);
  const std::int64_t n_slots = n_batch * n_neg;
#pragma omp parallel for schedule(static, 1024)
  for (std::int64_t s = 0; s < n_slots; ++s) {
    const std::int64_t u = users[s / n_neg];
    const index_t* first = items + rowptr[u];
    const index_t* last = items + rowptr[u + 1];
    std::int64_t item;
    std::uint64_t t = 0;
    do {
      item = negative_draw(key, static_cast<std::uint64_t>(s), t++,
                           static_cast<std::uint64_t>(n_items));
    } while (sorted_contains(first, last, item));
    out[s] = item;
  }
}

}  // namespace

SGFD_BIND(sample_negatives) {
  m.def(
      "sample_negatives",
      [](std::uintptr_t users, std::int64_t n_batch, std::int64_t n_neg, std::int64_t n_items,
         std::uintptr_t rowptr, std::uintptr_t items, const std::string& index_dtype,
         std::uint64_t seed, std::uintptr_t out) {
        dispatch_index(index_dtype, [&](auto index_tag) {
          using index_t = decltype(index_tag);
          sample_negatives_kernel<index_t>(ptr<const std::int64_t>(users), n_batch, n_neg,
                                           n_items, ptr<const index_t>(rowptr),
                                           ptr<const index_t>(items), seed,
                                           ptr<std::int64_t>(out));
        });
      },
      "Fill out (n_batch, n_neg) int64 with uniform non-positive items per user",
      py::arg("users"), py::arg("n_batch"), py::arg("n_neg"), py::arg("n_items"),
      py::arg("rowptr"), py::arg("items"), py::arg("index_dtype"), py::arg("seed"),
      py::arg("out"), py::call_guard<py::gil_scoped_release>());
}

}  // namespace sgfd
