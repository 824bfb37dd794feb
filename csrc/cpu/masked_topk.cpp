// masked_topk (CPU): per user, the k best items by score users[u]·items[i], excluding (or
// re-scoring) the items listed in the user's sorted mask row, without a U×I score matrix.
//
// Work split: OpenMP threads take blocks of kUserBlock users; a block walks the items in tiles of
// kItemTile, so one tile of packed items stays in L2 while every user of the block is scored
// against it. Scores come from a register-blocked micro-kernel (kMR users × kNR items, the item
// axis vectorised) over items packed once into d×kNR panels. Each user keeps its k best in a
// TopK (topk_buffer.h): since items arrive in increasing id order, a new item with a score equal
// to the k-th kept can never win its tie (lower id wins), so the hot loop is a single
// `score > threshold` compare.
//
// Contract (shared with the reference and the Triton kernel): scores are computed in the input
// dtype and ranked as float32; ties go to the lower item id; a score of -inf or NaN (and every
// excluded item) is absent; slots without a candidate hold index -1 and value -inf. Each user has
// one owner thread and a fixed item order, so results are bitwise reproducible.
#include "common.h"
#include "topk_buffer.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace sgfd {
namespace {

constexpr std::int64_t kMR = 6;          // users per micro tile
constexpr std::int64_t kNR = 16;         // items per micro tile (the vectorised axis)
constexpr std::int64_t kItemTile = 512;  // items per cache tile (a multiple of kNR)
constexpr std::int64_t kUserBlock = 48;  // users per thread task (a multiple of kMR)

// scores[r][j] = <urow[r], panel column j> for kMR users and kNR packed items.
template <typename scalar_t>
inline void micro_kernel(const scalar_t* const* urow, const scalar_t* panel, std::int64_t d,
                         float* scores, std::int64_t ld_scores) {
  scalar_t acc[kMR][kNR] = {};
  for (std::int64_t c = 0; c < d; ++c) {
    const scalar_t* p = panel + c * kNR;
    for (std::int64_t r = 0; r < kMR; ++r) {
      const scalar_t u = urow[r][c];
#pragma omp simd
      for (std::int64_t j = 0; j < kNR; ++j) acc[r][j] += u * p[j];
    }
  }
  for (std::int64_t r = 0; r < kMR; ++r)
    for (std::int64_t j = 0; j < kNR; ++j) scores[r * ld_scores + j] = static_cast<float>(acc[r][j]);
}

template <typename scalar_t, typename index_t>
void masked_topk_kernel(const scalar_t* users, const scalar_t* items, const index_t* rowptr,
                        const index_t* col, std::int64_t n_users, std::int64_t n_items,
                        std::int64_t d, std::int64_t k, bool has_mask_value, float mask_value,
                        float* out_values, std::int64_t* out_indices) {
  check_topk_ids(n_items);
  if (n_users == 0 || k == 0) return;
  const float absent = -std::numeric_limits<float>::infinity();
  const float masked = has_mask_value ? mask_value : absent;
  // Items packed as panels of kNR: panel p holds items [p*kNR, p*kNR + kNR) as a d × kNR block
  // (zero padded past n_items; those slots are never offered).
  const std::int64_t n_panels = (n_items + kNR - 1) / kNR;
  std::vector<scalar_t> packed(static_cast<std::size_t>(n_panels * kNR * d));
#pragma omp parallel for schedule(static)
  for (std::int64_t p = 0; p < n_panels; ++p) {
    scalar_t* dst = packed.data() + p * kNR * d;
    for (std::int64_t j = 0; j < kNR; ++j) {
      const std::int64_t i = p * kNR + j;
      for (std::int64_t c = 0; c < d; ++c) dst[c * kNR + j] = i < n_items ? items[i * d + c] : 0;
    }
  }
  const std::int64_t n_blocks = (n_users + kUserBlock - 1) / kUserBlock;
#pragma omp parallel
  {
    std::vector<std::uint64_t> bufs(static_cast<std::size_t>(kUserBlock * TopK::capacity(k)));
    std::vector<float> scores(static_cast<std::size_t>(kMR * kItemTile));
    std::vector<index_t> next(kUserBlock);  // per user: next unread entry of its mask row
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t b = 0; b < n_blocks; ++b) {
      const std::int64_t u0 = b * kUserBlock;
      const std::int64_t nu = std::min(kUserBlock, n_users - u0);
      std::vector<TopK> topk;
      topk.reserve(nu);
      for (std::int64_t r = 0; r < nu; ++r) {
        topk.emplace_back(bufs.data() + r * TopK::capacity(k), k);
        next[r] = rowptr[u0 + r];
      }
      for (std::int64_t i0 = 0; i0 < n_items; i0 += kItemTile) {
        const std::int64_t i1 = std::min(i0 + kItemTile, n_items);
        for (std::int64_t m0 = 0; m0 < nu; m0 += kMR) {
          const scalar_t* urow[kMR];
          for (std::int64_t r = 0; r < kMR; ++r)  // a short last group repeats its first user
            urow[r] = users + (u0 + (m0 + r < nu ? m0 + r : m0)) * d;
          for (std::int64_t p0 = i0; p0 < i1; p0 += kNR)
            micro_kernel(urow, packed.data() + (p0 / kNR) * kNR * d, d, scores.data() + (p0 - i0),
                         kItemTile);
          for (std::int64_t r = 0; r < kMR && m0 + r < nu; ++r) {
            float* s = scores.data() + r * kItemTile;
            const std::int64_t u = m0 + r;
            const index_t end = rowptr[u0 + u + 1];
            for (; next[u] < end && col[next[u]] < i1; ++next[u]) s[col[next[u]] - i0] = masked;
            topk[u].offer(s, i1 - i0, i0);
          }
        }
      }
      for (std::int64_t r = 0; r < nu; ++r)
        topk[r].write(out_values + (u0 + r) * k, out_indices + (u0 + r) * k);
    }
  }
}

}  // namespace

SGFD_BIND(masked_topk) {
  m.def(
      "masked_topk",
      [](std::uintptr_t users, std::uintptr_t items, std::uintptr_t rowptr, std::uintptr_t col,
         std::int64_t n_users, std::int64_t n_items, std::int64_t d, std::int64_t k,
         bool has_mask_value, double mask_value, std::uintptr_t out_values,
         std::uintptr_t out_indices, const std::string& index_dtype, const std::string& dtype) {
        dispatch_float_index(dtype, index_dtype, [&](auto scalar_tag, auto index_tag) {
          using scalar_t = decltype(scalar_tag);
          using index_t = decltype(index_tag);
          masked_topk_kernel<scalar_t, index_t>(
              ptr<const scalar_t>(users), ptr<const scalar_t>(items), ptr<const index_t>(rowptr),
              ptr<const index_t>(col), n_users, n_items, d, k, has_mask_value,
              static_cast<float>(mask_value), ptr<float>(out_values),
              ptr<std::int64_t>(out_indices));
        });
      },
      "per-user top-k of users @ items.T with the CSR mask applied (row-major buffers)",
      py::arg("users"), py::arg("items"), py::arg("rowptr"), py::arg("col"), py::arg("n_users"),
      py::arg("n_items"), py::arg("d"), py::arg("k"), py::arg("has_mask_value"),
      py::arg("mask_value"), py::arg("out_values"), py::arg("out_indices"),
      py::arg("index_dtype"), py::arg("dtype"), py::call_guard<py::gil_scoped_release>());
}

}  // namespace sgfd
