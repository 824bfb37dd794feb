// sample_edges (CPU): n_keep edges drawn without replacement with probability ∝ weight, by
// keeping the largest races log(u_e) / w_e (Efraimidis & Spirakis 2006), u_e a pure function of
// (key, e) (the hash and the formula are in sgfd_fast/ops/sample_edges.py).
//
// The races are computed in parallel (each edge its own hash); one selection (nth_element on
// (race, id): ties to the lower id) keeps the n_keep largest and their ids are sorted ascending.
// The result depends on the key and the weights only, never on the thread count.
#include "common.h"
#include "sample_negatives_rng.h"

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

namespace sgfd {
namespace {

constexpr std::uint64_t kEdgeStep = 0x9E3779B97F4A7C15ull;  // ops.row_dropout's row step

template <typename scalar_t>
void sample_edges_kernel(const scalar_t* weight, std::int64_t n_edges, std::int64_t n_keep,
                         std::int64_t key, std::int64_t* out) {
  std::vector<std::pair<double, std::int64_t>> race(static_cast<std::size_t>(n_edges));
#pragma omp parallel for schedule(static)
  for (std::int64_t e = 0; e < n_edges; ++e) {
    const std::uint64_t h =
        mix64(mix64(static_cast<std::uint64_t>(key) + static_cast<std::uint64_t>(e) * kEdgeStep));
    const double u = static_cast<double>((h >> 11) + 1) * 0x1p-53;
    race[e] = {std::log(u) / static_cast<double>(weight[e]), e};
  }
  const auto better = [](const std::pair<double, std::int64_t>& a,
                         const std::pair<double, std::int64_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  if (n_keep < n_edges) std::nth_element(race.begin(), race.begin() + n_keep, race.end(), better);
  for (std::int64_t j = 0; j < n_keep; ++j) out[j] = race[j].second;
  std::sort(out, out + n_keep);
}

}  // namespace

SGFD_BIND(sample_edges) {
  m.def(
      "sample_edges",
      [](std::uintptr_t weight, std::int64_t n_edges, std::int64_t n_keep, std::int64_t key,
         std::uintptr_t out, const std::string& dtype) {
        dispatch_float(dtype, [&](auto scalar_tag) {
          using scalar_t = decltype(scalar_tag);
          sample_edges_kernel<scalar_t>(ptr<const scalar_t>(weight), n_edges, n_keep, key,
                                        ptr<std::int64_t>(out));
        });
      },
      "ids (ascending) of n_keep edges kept by weighted sampling without replacement",
      py::arg("weight"), py::arg("n_edges"), py::arg("n_keep"), py::arg("key"), py::arg("out"),
      py::arg("dtype"), py::call_guard<py::gil_scoped_release>());
}

}  // namespace sgfd
