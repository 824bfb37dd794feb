// bipartite_adj (CPU): the symmetric normalized user–item adjacency D^-1/2 A D^-1/2 as CSR.
//
// Nodes are users [0, n_users) then items [n_users, n_users + n_items). Rows come out sorted from
// counting sorts alone, with no comparison sort on the usual input:
//   1. each thread counts the degrees in its chunk of pairs (and checks the ids);
//   2. rowptr and 1/sqrt(degree) per node; the counts become each thread's item-row cursors;
//   3. users go into item rows in pair order, so item rows are sorted when the pairs come grouped
//      by user (as the datasets here come); otherwise they are sorted here;
//   4. each thread walks the item rows of its item block in order, weighs each entry
//      1/sqrt(deg_u * deg_i) (double, rounded once) and appends the item to the user's row;
//      blocks ascend, so every user row comes out sorted, and a duplicate pair shows as two equal
//      neighbours in an item row.
// Per-thread counts are index_t (int32 whenever the graph allows) to stay in cache. Isolated
// nodes get empty rows, never a division by zero. The output is the unique sorted CSR, whatever
// the thread count.
#include "common.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#ifdef SGFD_WITH_OPENMP
#include <omp.h>
#endif

namespace sgfd {
namespace {

// Below this many pairs per thread a thread team costs more than it saves.
constexpr std::int64_t kPairsPerThread = 8192;

int team_size(std::int64_t n_pairs, std::int64_t n) {
#ifdef SGFD_WITH_OPENMP
  // Every thread owns one count per node: keep team * n within the output's 2 * n_pairs entries.
  const std::int64_t by_memory = 2 * n_pairs / std::max<std::int64_t>(n, 1);
  const std::int64_t team = std::min({n_pairs / kPairsPerThread, by_memory,
                                      static_cast<std::int64_t>(omp_get_max_threads())});
  return static_cast<int>(std::max<std::int64_t>(team, 1));
#else
  (void)n_pairs, (void)n;
  return 1;
#endif
}

// Returns the number of duplicate pairs, or -1 when an id is out of range (outputs are then
// incomplete in both cases).
template <typename scalar_t, typename index_t>
std::int64_t bipartite_adj_kernel(const std::int64_t* pairs, std::int64_t n_pairs,
                                  std::int64_t n_users, std::int64_t n_items,
                                  std::int64_t* rowptr, std::int64_t* col, scalar_t* val) {
  const std::int64_t n = n_users + n_items;
  const int max_team = team_size(n_pairs, n);
  // counts[t * n + r]: thread t's count, then cursor, in row r.
  std::unique_ptr<index_t[]> counts(new index_t[max_team * n]);
  std::vector<double> inv_sqrt(n);
  std::vector<std::int64_t> block_end(max_team + 1, 0);
  int bad_ids = 0, scattered = 0;
  std::int64_t duplicates = 0;

#pragma omp parallel num_threads(max_team)
  {
#ifdef SGFD_WITH_OPENMP
    const int t = omp_get_thread_num(), team = omp_get_num_threads();
#else
    const int t = 0, team = 1;
#endif
    index_t* own = counts.get() + t * n;
    const std::int64_t p0 = n_pairs * t / team, p1 = n_pairs * (t + 1) / team;

    // 1. Degrees of this thread's pairs.
    std::fill(own, own + n, index_t(0));
    int own_bad = 0, own_scattered = 0;
    std::int64_t previous_user = p0 > 0 ? pairs[2 * p0 - 2] : 0;
    for (std::int64_t p = p0; p < p1; ++p) {
      const std::int64_t u = pairs[2 * p], i = pairs[2 * p + 1];
      if (u < 0 || u >= n_users || i < 0 || i >= n_items) {
        own_bad = 1;
        continue;
      }
      own_scattered |= u < previous_user;
      previous_user = u;
      ++own[u];
      ++own[n_users + i];
    }
    if (own_bad) {
#pragma omp atomic write
      bad_ids = 1;
    }
    if (own_scattered) {
#pragma omp atomic write
      scattered = 1;
    }
#pragma omp barrier
    if (!bad_ids) {
      // 2. rowptr over row blocks (block sums first), and per-thread cursors.
      const std::int64_t r0 = n * t / team, r1 = n * (t + 1) / team;
      std::int64_t block_nnz = 0;
      for (std::int64_t r = r0; r < r1; ++r) {
        std::int64_t degree = 0;
        for (int s = 0; s < team; ++s) degree += counts[s * n + r];
        inv_sqrt[r] = degree > 0 ? 1.0 / std::sqrt(static_cast<double>(degree)) : 0.0;
        block_nnz += degree;
      }
      block_end[t + 1] = block_nnz;
#pragma omp barrier
#pragma omp single
      for (int s = 0; s < team; ++s) block_end[s + 1] += block_end[s];
      std::int64_t offset = block_end[t];
      for (std::int64_t r = r0; r < r1; ++r) {
        rowptr[r] = offset;
        for (int s = 0; s < team; ++s) {
          const index_t count = counts[s * n + r];
          counts[s * n + r] = static_cast<index_t>(offset);
          offset += count;
        }
      }
      if (t == team - 1) rowptr[n] = offset;
#pragma omp barrier

      // 3. Users into item rows, stable in pair order.
      for (std::int64_t p = p0; p < p1; ++p) col[own[n_users + pairs[2 * p + 1]]++] = pairs[2 * p];
#pragma omp barrier
      if (scattered) {
#pragma omp for schedule(dynamic, 256)
        for (std::int64_t r = n_users; r < n; ++r) std::sort(col + rowptr[r], col + rowptr[r + 1]);
      }

      // 4. This thread's item block (balanced by entries): count its users, place each user's
      //    share after the earlier blocks' shares, then weigh and append in ascending item order.
      const std::int64_t item_nnz = rowptr[n] - rowptr[n_users];
      auto block_start = [&](int s) {
        return std::lower_bound(rowptr + n_users, rowptr + n,
                                rowptr[n_users] + item_nnz * s / team) - rowptr;
      };
      const std::int64_t i0 = block_start(t), i1 = t == team - 1 ? n : block_start(t + 1);
      std::fill(own, own + n_users, index_t(0));
      for (std::int64_t e = rowptr[i0]; e < rowptr[i1]; ++e) ++own[col[e]];
#pragma omp barrier
#pragma omp for schedule(static)
      for (std::int64_t u = 0; u < n_users; ++u) {
        std::int64_t offset_u = rowptr[u];
        for (int s = 0; s < team; ++s) {
          const index_t count = counts[s * n + u];
          counts[s * n + u] = static_cast<index_t>(offset_u);
          offset_u += count;
        }
      }
      std::int64_t own_duplicates = 0;
      for (std::int64_t i = i0; i < i1; ++i) {
        const double scale = inv_sqrt[i];
        for (std::int64_t e = rowptr[i]; e < rowptr[i + 1]; ++e) {
          const std::int64_t u = col[e];
          const scalar_t weight = static_cast<scalar_t>(scale * inv_sqrt[u]);
          own_duplicates += e > rowptr[i] && u == col[e - 1];
          val[e] = weight;
          const std::int64_t q = own[u]++;
          col[q] = i;
          val[q] = weight;
        }
      }
#pragma omp atomic
      duplicates += own_duplicates;
    }
  }
  return bad_ids ? -1 : duplicates;
}

}  // namespace

SGFD_BIND(bipartite_adj) {
  m.def(
      "bipartite_adj",
      [](std::uintptr_t pairs, std::int64_t n_pairs, std::int64_t n_users, std::int64_t n_items,
         std::uintptr_t rowptr, std::uintptr_t col, std::uintptr_t val, const std::string& dtype) {
        // The per-thread counts are int32 whenever every count fits.
        const bool narrow = 2 * n_pairs <= std::numeric_limits<std::int32_t>::max();
        const std::string count_dtype = narrow ? "int32" : "int64";
        std::int64_t status = 0;
        dispatch_float_index(dtype, count_dtype, [&](auto scalar_tag, auto index_tag) {
          using scalar_t = decltype(scalar_tag);
          using index_t = decltype(index_tag);
          status = bipartite_adj_kernel<scalar_t, index_t>(
              ptr<const std::int64_t>(pairs), n_pairs, n_users, n_items, ptr<std::int64_t>(rowptr),
              ptr<std::int64_t>(col), ptr<scalar_t>(val));
        });
        return status;
      },
      "Fill int64 rowptr (n+1,), int64 col (2*n_pairs,) and val (2*n_pairs,) of D^-1/2 A D^-1/2 "
      "from (n_pairs, 2) int64 [user, item] pairs. Returns the number of duplicate pairs, or -1 "
      "when an id is out of range (the outputs are then incomplete).",
      py::arg("pairs"), py::arg("n_pairs"), py::arg("n_users"), py::arg("n_items"),
      py::arg("rowptr"), py::arg("col"), py::arg("val"), py::arg("dtype"),
      py::call_guard<py::gil_scoped_release>());
}

}  // namespace sgfd
