// bipartite_adj (CPU): the symmetric normalized user–item adjacency D^-1/2 A D^-1/2 as CSR.
//
// Nodes are users [0, n_users) then items [n_users, n_users + n_items). Two counting passes place
// every pair in its user row and its item row; user rows are then sorted by item, and item rows
// are filled by walking users in ascending order, so columns come out sorted within every row
// without a global sort. Weights are 1/sqrt(deg_u * deg_i) computed in double and rounded once;
// isolated nodes get empty rows (never a division by zero). Output is deterministic.
#include "common.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace sgfd {
namespace {

template <typename scalar_t>
std::int64_t bipartite_adj_kernel(const std::int64_t* pairs, std::int64_t n_pairs,
                                  std::int64_t n_users, std::int64_t n_items,
                                  std::int64_t* rowptr, std::int64_t* col, scalar_t* val) {
  const std::int64_t n = n_users + n_items;
  std::fill(rowptr, rowptr + n + 1, 0);
  for (std::int64_t p = 0; p < n_pairs; ++p) {
    ++rowptr[pairs[2 * p] + 1];
    ++rowptr[n_users + pairs[2 * p + 1] + 1];
  }
  std::vector<double> inv_sqrt(n);
  for (std::int64_t r = 0; r < n; ++r) {
    const std::int64_t deg = rowptr[r + 1];
    inv_sqrt[r] = deg > 0 ? 1.0 / std::sqrt(static_cast<double>(deg)) : 0.0;
  }
  for (std::int64_t r = 0; r < n; ++r) rowptr[r + 1] += rowptr[r];

  std::vector<std::int64_t> cursor(rowptr, rowptr + n);
  for (std::int64_t p = 0; p < n_pairs; ++p) {
    const std::int64_t u = pairs[2 * p];
    col[cursor[u]++] = n_users + pairs[2 * p + 1];
  }
  std::int64_t duplicates = 0;
#pragma omp parallel for schedule(dynamic, 256) reduction(+ : duplicates)
  for (std::int64_t u = 0; u < n_users; ++u) {
    std::sort(col + rowptr[u], col + rowptr[u + 1]);
    for (std::int64_t e = rowptr[u] + 1; e < rowptr[u + 1]; ++e) duplicates += col[e] == col[e - 1];
  }
  if (duplicates) return duplicates;
  for (std::int64_t u = 0; u < n_users; ++u) {
    for (std::int64_t e = rowptr[u]; e < rowptr[u + 1]; ++e) col[cursor[col[e]]++] = u;
  }
#pragma omp parallel for schedule(dynamic, 256)
  for (std::int64_t r = 0; r < n; ++r) {
    for (std::int64_t e = rowptr[r]; e < rowptr[r + 1]; ++e) {
      val[e] = static_cast<scalar_t>(inv_sqrt[r] * inv_sqrt[col[e]]);
    }
  }
  return 0;
}

}  // namespace

SGFD_BIND(bipartite_adj) {
  m.def(
      "bipartite_adj",
      [](std::uintptr_t pairs, std::int64_t n_pairs, std::int64_t n_users, std::int64_t n_items,
         std::uintptr_t rowptr, std::uintptr_t col, std::uintptr_t val, const std::string& dtype) {
        std::int64_t duplicates = 0;
        dispatch_float(dtype, [&](auto scalar_tag) {
          using scalar_t = decltype(scalar_tag);
          duplicates = bipartite_adj_kernel<scalar_t>(
              ptr<const std::int64_t>(pairs), n_pairs, n_users, n_items,
              ptr<std::int64_t>(rowptr), ptr<std::int64_t>(col), ptr<scalar_t>(val));
        });
        return duplicates;
      },
      "Fill int64 rowptr (n+1,), int64 col (2*n_pairs,) and val (2*n_pairs,) of D^-1/2 A D^-1/2 "
      "from in-range (n_pairs, 2) int64 [user, item] pairs. Returns the number of duplicate "
      "pairs found (the outputs are then incomplete).",
      py::arg("pairs"), py::arg("n_pairs"), py::arg("n_users"), py::arg("n_items"),
      py::arg("rowptr"), py::arg("col"), py::arg("val"), py::arg("dtype"),
      py::call_guard<py::gil_scoped_release>());
}

}  // namespace sgfd
