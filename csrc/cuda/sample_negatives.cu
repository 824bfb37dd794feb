// sample_negatives (CUDA): one thread per output slot, the same counter-based draws and rejection
// as the CPU kernel (csrc/sample_negatives_rng.h), so both return identical items for a seed.
#include "cuda/cuda_utils.cuh"
#include "sample_negatives_rng.h"

namespace sgfd {
namespace {

template <typename index_t>
__global__ void sample_negatives_kernel(const std::int64_t* __restrict__ users,
                                        std::int64_t n_slots, std::int64_t n_neg,
                                        std::int64_t n_items, const index_t* __restrict__ rowptr,
                                        const index_t* __restrict__ items, std::uint64_t key,
                                        std::int64_t* __restrict__ out) {
  const std::int64_t s = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (s >= n_slots) return;
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

}  // namespace

SGFD_BIND(sample_negatives) {
  m.def(
      "sample_negatives",
      [](std::uintptr_t users, std::int64_t n_batch, std::int64_t n_neg, std::int64_t n_items,
         std::uintptr_t rowptr, std::uintptr_t items, const std::string& index_dtype,
         std::uint64_t seed, std::uintptr_t out, std::uintptr_t stream) {
        const std::int64_t n_slots = n_batch * n_neg;
        if (n_slots == 0) return;
        constexpr int kThreads = 256;
        dispatch_index(index_dtype, [&](auto index_tag) {
          using index_t = decltype(index_tag);
          sample_negatives_kernel<index_t><<<ceil_div(n_slots, kThreads), kThreads, 0,
                                             as_stream(stream)>>>(
              ptr<const std::int64_t>(users), n_slots, n_neg, n_items,
              ptr<const index_t>(rowptr), ptr<const index_t>(items), negative_seed_key(seed),
              ptr<std::int64_t>(out));
        });
        check_cuda(cudaGetLastError(), "sample_negatives");
      },
      "Fill out (n_batch, n_neg) int64 with uniform non-positive items per user, on a stream",
      py::arg("users"), py::arg("n_batch"), py::arg("n_neg"), py::arg("n_items"),
      py::arg("rowptr"), py::arg("items"), py::arg("index_dtype"), py::arg("seed"),
      py::arg("out"), py::arg("stream"), py::call_guard<py::gil_scoped_release>());
}

}  // namespace sgfd
