// propagate (CPU): out = 1/(L+1) * sum_{k=0}^{L} A^k x for a CSR matrix A.
//
// One OpenMP region runs every layer. Each thread owns a contiguous row range of about equal cost
// (nnz + a per-row overhead), found by binary search on rowptr, so hub rows do not stall a static
// split and neighbouring rows stay on one core. A row is gathered in register-sized column chunks
// (64 floats = 8 AVX2 registers), prefetching the rows of the edges 16 ahead (the gathered table
// outgrows L2), and the epilogue fuses the layer mean: it writes the layer (when a later layer
// needs it) and adds it into the running sum in `out`; the last layer scales by 1/(L+1) and
// stores no layer. Every output element has one owner and a fixed summation order, so
// results are bitwise identical run to run and for any thread count.
#include "common.h"

#include <algorithm>
#include <cstring>

#ifdef SGFD_WITH_OPENMP
#include <omp.h>
#endif

namespace sgfd {
namespace {

// Cost of a row in "edges": the loop, epilogue loads and stores of a row weigh a few gathers.
constexpr std::int64_t kRowCost = 4;
// Edges ahead whose gathered row is prefetched.
constexpr std::int64_t kPrefetch = 16;

template <typename index_t>
std::int64_t first_row_with_cost(const index_t* rowptr, std::int64_t n_rows, std::int64_t target) {
  // Smallest r with rowptr[r] + kRowCost * r >= target (the cost prefix is non-decreasing).
  std::int64_t lo = 0, hi = n_rows;
  while (lo < hi) {
    const std::int64_t mid = lo + (hi - lo) / 2;
    if (static_cast<std::int64_t>(rowptr[mid]) + kRowCost * mid < target) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// 32-byte vectors (GCC/Clang vector extensions): with -march=native on AVX2 one register each,
// and the compiler keeps a chunk's accumulators in registers, which it does not do reliably for a
// plain array under `omp simd` (it spilled them to the stack and used gathers).
template <typename scalar_t>
struct Vec32 {
  typedef scalar_t type __attribute__((vector_size(32)));
  static constexpr int kLanes = 32 / sizeof(scalar_t);
};

// One row, columns [j0, j0 + NV * lanes): acc = sum_e val[e] * src[col[e], cols], then
//   layer[r] = acc (if a later layer reads it), out[r] = (base[r] + acc) * scale.
// base_row may alias out_row (the running sum): each element is read before it is written.
template <int NV, typename scalar_t, typename index_t>
inline void row_chunk(const index_t* __restrict col, const scalar_t* __restrict val,
                      std::int64_t begin, std::int64_t end, std::int64_t nnz,
                      const scalar_t* __restrict src,
                      std::int64_t d, std::int64_t j0, scalar_t* layer_row,
                      const scalar_t* base_row, scalar_t* out_row, scalar_t scale) {
  using V = typename Vec32<scalar_t>::type;
  constexpr int W = Vec32<scalar_t>::kLanes;
  V acc[NV];
  for (int v = 0; v < NV; ++v) acc[v] = V{};
  for (std::int64_t e = begin; e < end; ++e) {
    if (e + kPrefetch < nnz) {
      // The gathered rows are scattered over a table larger than L2: fetch ahead, across rows.
      const char* ahead = reinterpret_cast<const char*>(
          src + static_cast<std::int64_t>(col[e + kPrefetch]) * d + j0);
      for (int line = 0; line < (NV * 32 + 63) / 64; ++line) {
        __builtin_prefetch(ahead + 64 * line);
      }
    }
    const scalar_t w = val[e];
    const scalar_t* xr = src + static_cast<std::int64_t>(col[e]) * d + j0;
    for (int v = 0; v < NV; ++v) {
      V xv;
      std::memcpy(&xv, xr + v * W, sizeof(V));  // an unaligned vector load
      acc[v] += w * xv;
    }
  }
  for (int v = 0; v < NV; ++v) {
    if (layer_row) std::memcpy(layer_row + j0 + v * W, &acc[v], sizeof(V));
    V b;
    std::memcpy(&b, base_row + j0 + v * W, sizeof(V));
    b = (b + acc[v]) * scale;
    std::memcpy(out_row + j0 + v * W, &b, sizeof(V));
  }
}

// Columns [j0, d) with fewer than one vector left: scalar.
template <typename scalar_t, typename index_t>
inline void row_scalar(const index_t* __restrict col, const scalar_t* __restrict val,
                       std::int64_t begin, std::int64_t end, const scalar_t* __restrict src,
                       std::int64_t d, std::int64_t j0, scalar_t* layer_row,
                       const scalar_t* base_row, scalar_t* out_row, scalar_t scale) {
  for (std::int64_t j = j0; j < d; ++j) {
    scalar_t acc = 0;
    for (std::int64_t e = begin; e < end; ++e) {
      acc += val[e] * src[static_cast<std::int64_t>(col[e]) * d + j];
    }
    if (layer_row) layer_row[j] = acc;
    out_row[j] = (base_row[j] + acc) * scale;
  }
}

// The remainder after the full chunks, in descending power-of-two chunks, each at most once.
template <int NV, typename scalar_t, typename index_t>
inline void row_tails(const index_t* col, const scalar_t* val, std::int64_t begin,
                      std::int64_t end, std::int64_t nnz, const scalar_t* src, std::int64_t d,
                      std::int64_t j0, scalar_t* layer_row, const scalar_t* base_row,
                      scalar_t* out_row, scalar_t scale) {
  constexpr int W = Vec32<scalar_t>::kLanes;
  if (d - j0 >= NV * W) {
    row_chunk<NV>(col, val, begin, end, nnz, src, d, j0, layer_row, base_row, out_row, scale);
    j0 += NV * W;
  }
  if constexpr (NV > 1) {
    row_tails<NV / 2>(col, val, begin, end, nnz, src, d, j0, layer_row, base_row, out_row, scale);
  } else {
    row_scalar(col, val, begin, end, src, d, j0, layer_row, base_row, out_row, scale);
  }
}

template <typename scalar_t, typename index_t>
void propagate_row(const index_t* col, const scalar_t* val, std::int64_t begin, std::int64_t end,
                   std::int64_t nnz, const scalar_t* src, std::int64_t d, scalar_t* layer_row,
                   const scalar_t* base_row, scalar_t* out_row, scalar_t scale) {
  constexpr int kNV = 8;  // 8 vectors = 8 AVX2 registers of accumulators (64 floats)
  constexpr int kChunk = kNV * Vec32<scalar_t>::kLanes;
  std::int64_t j0 = 0;
  for (; j0 + kChunk <= d; j0 += kChunk) {
    row_chunk<kNV>(col, val, begin, end, nnz, src, d, j0, layer_row, base_row, out_row, scale);
  }
  row_tails<kNV / 2>(col, val, begin, end, nnz, src, d, j0, layer_row, base_row, out_row, scale);
}

template <typename scalar_t, typename index_t>
void propagate_kernel(const index_t* rowptr, const index_t* col, const scalar_t* val,
                      const scalar_t* x, scalar_t* out, scalar_t* buf0, scalar_t* buf1,
                      std::int64_t n, std::int64_t d, std::int64_t n_layers) {
  const scalar_t inv = scalar_t(1) / static_cast<scalar_t>(n_layers + 1);
  scalar_t* bufs[2] = {buf0, buf1};
  const std::int64_t nnz = rowptr[n];
  const std::int64_t total = nnz + kRowCost * n;
#pragma omp parallel
  {
#ifdef SGFD_WITH_OPENMP
    const std::int64_t tid = omp_get_thread_num(), n_threads = omp_get_num_threads();
#else
    const std::int64_t tid = 0, n_threads = 1;
#endif
    const std::int64_t r0 = first_row_with_cost(rowptr, n, total * tid / n_threads);
    const std::int64_t r1 = first_row_with_cost(rowptr, n, total * (tid + 1) / n_threads);
    for (std::int64_t k = 1; k <= n_layers; ++k) {
      // Layer k reads layer k-1 (x, then the ping-pong buffers) and stores layer k only if a later
      // layer reads it; the running sum starts from x and lives in out.
      const scalar_t* src = k == 1 ? x : bufs[(k - 2) % 2];
      scalar_t* layer = k < n_layers ? bufs[(k - 1) % 2] : nullptr;
      const scalar_t* base = k == 1 ? x : out;
      const scalar_t scale = k == n_layers ? inv : scalar_t(1);
      for (std::int64_t r = r0; r < r1; ++r) {
        propagate_row(col, val, rowptr[r], rowptr[r + 1], nnz, src, d,
                      layer ? layer + r * d : nullptr, base + r * d, out + r * d, scale);
      }
#pragma omp barrier
    }
  }
}

}  // namespace

SGFD_BIND(propagate) {
  m.def(
      "propagate",
      [](std::uintptr_t rowptr, std::uintptr_t col, std::uintptr_t val, std::uintptr_t x,
         std::uintptr_t out, std::uintptr_t buf0, std::uintptr_t buf1, std::int64_t n_rows,
         std::int64_t d, std::int64_t n_layers, const std::string& index_dtype,
         const std::string& dtype) {
        if (n_layers < 1) throw std::invalid_argument("sgfd_fast propagate: n_layers must be >= 1");
        dispatch_float_index(dtype, index_dtype, [&](auto scalar_tag, auto index_tag) {
          using scalar_t = decltype(scalar_tag);
          using index_t = decltype(index_tag);
          propagate_kernel<scalar_t, index_t>(
              ptr<const index_t>(rowptr), ptr<const index_t>(col), ptr<const scalar_t>(val),
              ptr<const scalar_t>(x), ptr<scalar_t>(out), ptr<scalar_t>(buf0),
              ptr<scalar_t>(buf1), n_rows, d, n_layers);
        });
      },
      "out = mean of x, A x, ..., A^L x for square CSR A (row-major (n_rows, d) buffers; buf0 "
      "is needed when L >= 2 and buf1 when L >= 3)",
      py::arg("rowptr"), py::arg("col"), py::arg("val"), py::arg("x"), py::arg("out"),
      py::arg("buf0"), py::arg("buf1"), py::arg("n_rows"), py::arg("d"), py::arg("n_layers"),
      py::arg("index_dtype"), py::arg("dtype"),
      py::call_guard<py::gil_scoped_release>());
}

}  // namespace sgfd
