// degree_normalize (CPU): the values of D^-1/2 A D^-1/2 ("sym") or D^-1 A ("rw") on A's CSR
// pattern, D = row sums of A + eps (a zero degree scales by 0), and, given grad = dout, the
// gradient with respect to A's values (the formula is in sgfd_fast/ops/degree_normalize.py).
//
// Rows are split over threads for the degrees and the edges. The backward's column sums
// C[i] = Σ_{col(e)=i} g·val·s[row] are one sequential pass over the edges: a fixed summation
// order without atomics or a transpose, so results are bitwise reproducible.
#include "common.h"

#include <cmath>
#include <vector>

namespace sgfd {
namespace {

template <typename scalar_t, typename index_t>
void degree_normalize_kernel(const index_t* rowptr, const index_t* col, const scalar_t* val,
                             const scalar_t* grad, scalar_t* out, std::int64_t n_rows,
                             bool symmetric, scalar_t eps) {
  // s = deg^-1/2 (sym) or deg^-1 (rw) and its derivative ds/ddeg, both 0 where deg == 0.
  std::vector<scalar_t> s(n_rows), ds(n_rows);
#pragma omp parallel for schedule(dynamic, 256)
  for (std::int64_t r = 0; r < n_rows; ++r) {
    scalar_t deg = 0;
    for (index_t e = rowptr[r]; e < rowptr[r + 1]; ++e) deg += val[e];
    deg += eps;
    const scalar_t p = symmetric ? scalar_t(-0.5) : scalar_t(-1);
    s[r] = deg == 0 ? scalar_t(0) : std::pow(deg, p);
    ds[r] = deg == 0 ? scalar_t(0) : p * std::pow(deg, p - 1);
  }
  if (grad == nullptr) {  // forward
#pragma omp parallel for schedule(dynamic, 256)
    for (std::int64_t r = 0; r < n_rows; ++r)
      for (index_t e = rowptr[r]; e < rowptr[r + 1]; ++e)
        out[e] = symmetric ? s[r] * val[e] * s[col[e]] : s[r] * val[e];
    return;
  }
  // around[i]: R[i] + C[i] (sym) or Σ_{row i} g·val (rw), the factor of s'[i].
  std::vector<scalar_t> around(n_rows, scalar_t(0));
#pragma omp parallel for schedule(dynamic, 256)
  for (std::int64_t r = 0; r < n_rows; ++r) {
    scalar_t acc = 0;
    for (index_t e = rowptr[r]; e < rowptr[r + 1]; ++e)
      acc += symmetric ? grad[e] * val[e] * s[col[e]] : grad[e] * val[e];
    around[r] = acc;
  }
  if (symmetric)
    for (std::int64_t r = 0; r < n_rows; ++r)
      for (index_t e = rowptr[r]; e < rowptr[r + 1]; ++e) around[col[e]] += grad[e] * val[e] * s[r];
#pragma omp parallel for schedule(dynamic, 256)
  for (std::int64_t r = 0; r < n_rows; ++r)
    for (index_t e = rowptr[r]; e < rowptr[r + 1]; ++e)
      out[e] = (symmetric ? grad[e] * s[r] * s[col[e]] : grad[e] * s[r]) + ds[r] * around[r];
}

}  // namespace

SGFD_BIND(degree_normalize) {
  m.def(
      "degree_normalize",
      [](std::uintptr_t rowptr, std::uintptr_t col, std::uintptr_t val, std::uintptr_t grad,
         std::uintptr_t out, std::int64_t n_rows, bool symmetric, double eps,
         const std::string& index_dtype, const std::string& dtype) {
        dispatch_float_index(dtype, index_dtype, [&](auto scalar_tag, auto index_tag) {
          using scalar_t = decltype(scalar_tag);
          using index_t = decltype(index_tag);
          degree_normalize_kernel<scalar_t, index_t>(
              ptr<const index_t>(rowptr), ptr<const index_t>(col), ptr<const scalar_t>(val),
              ptr<const scalar_t>(grad), ptr<scalar_t>(out), n_rows, symmetric,
              static_cast<scalar_t>(eps));
        });
      },
      "normalised CSR values (grad == 0) or their gradient given grad = dout",
      py::arg("rowptr"), py::arg("col"), py::arg("val"), py::arg("grad"), py::arg("out"),
      py::arg("n_rows"), py::arg("symmetric"), py::arg("eps"), py::arg("index_dtype"),
      py::arg("dtype"), py::call_guard<py::gil_scoped_release>());
}

}  // namespace sgfd
