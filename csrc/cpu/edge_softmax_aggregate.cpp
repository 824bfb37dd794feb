// edge_softmax_aggregate (CPU): per CSR row r (a message target) with edges e to sources c_e,
//   score[e] = <query[r], key[c_e]>,  alpha = softmax over the row's edges,
//   out[r]   = sum_e alpha[e] * value[c_e]
// and the row-local part of its backward,
//   g[e]      = dalpha[e] + <dout[r], value[c_e]>
//   dscore[e] = alpha[e] * (g[e] - sum_{e' in row} alpha[e'] g[e'])
//   dquery[r] = sum_e dscore[e] * key[c_e]
// (dkey and dvalue are transposed SpMMs, done by spmm_csr on the cached transpose).
//
// One thread owns each row (its edges and its output row), so results are bitwise reproducible
// for any thread count; rows are handed out dynamically because hub rows dominate power-law
// graphs. No (nnz x d) intermediate is ever materialised.
#include "common.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace sgfd {
namespace {

template <typename scalar_t>
inline scalar_t dot(const scalar_t* a, const scalar_t* b, std::int64_t d) {
  scalar_t s = 0;
#pragma omp simd reduction(+ : s)
  for (std::int64_t j = 0; j < d; ++j) s += a[j] * b[j];
  return s;
}

template <typename scalar_t, typename index_t>
void forward_kernel(const index_t* rowptr, const index_t* col, const scalar_t* query,
                    const scalar_t* key, const scalar_t* value, scalar_t* out, scalar_t* alpha,
                    std::int64_t n_rows, std::int64_t d, std::int64_t dv) {
#pragma omp parallel for schedule(dynamic, 64)
  for (std::int64_t r = 0; r < n_rows; ++r) {
    const index_t lo = rowptr[r], hi = rowptr[r + 1];
    scalar_t* o = out + r * dv;
    std::fill(o, o + dv, scalar_t(0));
    if (lo == hi) continue;
    const scalar_t* q = query + r * d;
    scalar_t row_max = -std::numeric_limits<scalar_t>::infinity();
    for (index_t e = lo; e < hi; ++e) {
      alpha[e] = dot(q, key + static_cast<std::int64_t>(col[e]) * d, d);
      row_max = std::max(row_max, alpha[e]);
    }
    scalar_t denom = 0;
    for (index_t e = lo; e < hi; ++e) {
      alpha[e] = std::exp(alpha[e] - row_max);
      denom += alpha[e];
    }
    for (index_t e = lo; e < hi; ++e) {
      alpha[e] /= denom;
      const scalar_t a = alpha[e];
      const scalar_t* v = value + static_cast<std::int64_t>(col[e]) * dv;
#pragma omp simd
      for (std::int64_t j = 0; j < dv; ++j) o[j] += a * v[j];
    }
  }
}

template <typename scalar_t, typename index_t>
void backward_kernel(const index_t* rowptr, const index_t* col, const scalar_t* key,
                     const scalar_t* value, const scalar_t* alpha, const scalar_t* grad_out,
                     const scalar_t* grad_alpha, scalar_t* grad_score, scalar_t* grad_query,
                     std::int64_t n_rows, std::int64_t d, std::int64_t dv) {
#pragma omp parallel for schedule(dynamic, 64)
  for (std::int64_t r = 0; r < n_rows; ++r) {
    const index_t lo = rowptr[r], hi = rowptr[r + 1];
    const scalar_t* go = grad_out + r * dv;
    scalar_t weighted = 0;
    for (index_t e = lo; e < hi; ++e) {
      scalar_t g = dot(go, value + static_cast<std::int64_t>(col[e]) * dv, dv);
      if (grad_alpha) g += grad_alpha[e];
      grad_score[e] = g;
      weighted += alpha[e] * g;
    }
    scalar_t* gq = grad_query + r * d;
    std::fill(gq, gq + d, scalar_t(0));
    for (index_t e = lo; e < hi; ++e) {
      const scalar_t s = alpha[e] * (grad_score[e] - weighted);
      grad_score[e] = s;
      const scalar_t* k = key + static_cast<std::int64_t>(col[e]) * d;
#pragma omp simd
      for (std::int64_t j = 0; j < d; ++j) gq[j] += s * k[j];
    }
  }
}

}  // namespace

SGFD_BIND(edge_softmax_aggregate) {
  m.def(
      "edge_softmax_aggregate",
      [](std::uintptr_t rowptr, std::uintptr_t col, std::uintptr_t query, std::uintptr_t key,
         std::uintptr_t value, std::uintptr_t out, std::uintptr_t alpha, std::int64_t n_rows,
         std::int64_t d, std::int64_t dv, const std::string& index_dtype,
         const std::string& dtype) {
        dispatch_float_index(dtype, index_dtype, [&](auto scalar_tag, auto index_tag) {
          using scalar_t = decltype(scalar_tag);
          using index_t = decltype(index_tag);
          forward_kernel<scalar_t, index_t>(
              ptr<const index_t>(rowptr), ptr<const index_t>(col), ptr<const scalar_t>(query),
              ptr<const scalar_t>(key), ptr<const scalar_t>(value), ptr<scalar_t>(out),
              ptr<scalar_t>(alpha), n_rows, d, dv);
        });
      },
      "(out, alpha) of row-wise softmax attention over CSR edges", py::arg("rowptr"),
      py::arg("col"), py::arg("query"), py::arg("key"), py::arg("value"), py::arg("out"),
      py::arg("alpha"), py::arg("n_rows"), py::arg("d"), py::arg("dv"), py::arg("index_dtype"),
      py::arg("dtype"), py::call_guard<py::gil_scoped_release>());
  m.def(
      "edge_softmax_aggregate_backward",
      [](std::uintptr_t rowptr, std::uintptr_t col, std::uintptr_t key, std::uintptr_t value,
         std::uintptr_t alpha, std::uintptr_t grad_out, std::uintptr_t grad_alpha,
         std::uintptr_t grad_score, std::uintptr_t grad_query, std::int64_t n_rows,
         std::int64_t d, std::int64_t dv, const std::string& index_dtype,
         const std::string& dtype) {
        dispatch_float_index(dtype, index_dtype, [&](auto scalar_tag, auto index_tag) {
          using scalar_t = decltype(scalar_tag);
          using index_t = decltype(index_tag);
          backward_kernel<scalar_t, index_t>(
              ptr<const index_t>(rowptr), ptr<const index_t>(col), ptr<const scalar_t>(key),
              ptr<const scalar_t>(value), ptr<const scalar_t>(alpha),
              ptr<const scalar_t>(grad_out), ptr<const scalar_t>(grad_alpha),
              ptr<scalar_t>(grad_score), ptr<scalar_t>(grad_query), n_rows, d, dv);
        });
      },
      "(dscore, dquery) of edge_softmax_aggregate (grad_alpha may be 0 for none)",
      py::arg("rowptr"), py::arg("col"), py::arg("key"), py::arg("value"), py::arg("alpha"),
      py::arg("grad_out"), py::arg("grad_alpha"), py::arg("grad_score"), py::arg("grad_query"),
      py::arg("n_rows"), py::arg("d"), py::arg("dv"), py::arg("index_dtype"), py::arg("dtype"),
      py::call_guard<py::gil_scoped_release>());
}

}  // namespace sgfd
