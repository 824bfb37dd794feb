// spmm_csr (CPU): out[r, :] = sum_{e in row r} val[e] * x[col[e], :]
//
// One thread owns each output row, so the result is bitwise reproducible for any thread count.
// Rows are handed out dynamically in small chunks: power-law graphs have hub rows whose cost
// would stall a static schedule. The width loop is contiguous and vectorises.
#include "common.h"

#include <algorithm>
#include <cstring>

namespace sgfd {
namespace {

template <typename scalar_t, typename index_t>
void spmm_csr_kernel(const index_t* rowptr, const index_t* col, const scalar_t* val,
                     const scalar_t* x, scalar_t* out, std::int64_t n_rows, std::int64_t d,
                     std::int64_t ld_x, std::int64_t ld_out) {
#pragma omp parallel for schedule(dynamic, 64)
  for (std::int64_t r = 0; r < n_rows; ++r) {
    scalar_t* o = out + r * ld_out;
    std::fill(o, o + d, scalar_t(0));
    for (index_t e = rowptr[r]; e < rowptr[r + 1]; ++e) {
      const scalar_t w = val ? val[e] : scalar_t(1);
      const scalar_t* xr = x + static_cast<std::int64_t>(col[e]) * ld_x;
#pragma omp simd
      for (std::int64_t j = 0; j < d; ++j) o[j] += w * xr[j];
    }
  }
}

}  // namespace

SGFD_BIND(spmm_csr) {
  m.def(
      "spmm_csr",
      [](std::uintptr_t rowptr, std::uintptr_t col, std::uintptr_t val, std::uintptr_t x,
         std::uintptr_t out, std::int64_t n_rows, std::int64_t d, std::int64_t ld_x,
         std::int64_t ld_out, const std::string& index_dtype, const std::string& dtype) {
        dispatch_float_index(dtype, index_dtype, [&](auto scalar_tag, auto index_tag) {
          using scalar_t = decltype(scalar_tag);
          using index_t = decltype(index_tag);
          spmm_csr_kernel<scalar_t, index_t>(ptr<const index_t>(rowptr), ptr<const index_t>(col),
                                             ptr<const scalar_t>(val), ptr<const scalar_t>(x),
                                             ptr<scalar_t>(out), n_rows, d, ld_x, ld_out);
        });
      },
      "out = A @ x for CSR A (val may be 0 for unit weights)", py::arg("rowptr"), py::arg("col"),
      py::arg("val"), py::arg("x"), py::arg("out"), py::arg("n_rows"), py::arg("d"),
      py::arg("ld_x"), py::arg("ld_out"), py::arg("index_dtype"), py::arg("dtype"),
      py::call_guard<py::gil_scoped_release>());
}

}  // namespace sgfd
