// sddmm_csr (CPU): out[e] = <a[row(e), :], b[col[e], :]> for every edge e of a CSR pattern.
//
// The gradient of spmm_csr with respect to the edge weights, without materialising the two
// (nnz, d) gathers the PyTorch formula needs. One thread owns each row (dynamic chunks: hub rows),
// and each dot product is a fixed-order sum, so results are bitwise reproducible.
#include "common.h"

namespace sgfd {
namespace {

template <typename scalar_t, typename index_t>
void sddmm_csr_kernel(const index_t* rowptr, const index_t* col, const scalar_t* a,
                      const scalar_t* b, scalar_t* out, std::int64_t n_rows, std::int64_t d) {
#pragma omp parallel for schedule(dynamic, 64)
  for (std::int64_t r = 0; r < n_rows; ++r) {
    const scalar_t* ar = a + r * d;
    for (index_t e = rowptr[r]; e < rowptr[r + 1]; ++e) {
      const scalar_t* br = b + static_cast<std::int64_t>(col[e]) * d;
      scalar_t acc = 0;
#pragma omp simd reduction(+ : acc)
      for (std::int64_t j = 0; j < d; ++j) acc += ar[j] * br[j];
      out[e] = acc;
    }
  }
}

}  // namespace

SGFD_BIND(sddmm_csr) {
  m.def(
      "sddmm_csr",
      [](std::uintptr_t rowptr, std::uintptr_t col, std::uintptr_t a, std::uintptr_t b,
         std::uintptr_t out, std::int64_t n_rows, std::int64_t d, const std::string& index_dtype,
         const std::string& dtype) {
        dispatch_float_index(dtype, index_dtype, [&](auto scalar_tag, auto index_tag) {
          using scalar_t = decltype(scalar_tag);
          using index_t = decltype(index_tag);
          sddmm_csr_kernel<scalar_t, index_t>(ptr<const index_t>(rowptr),
                                              ptr<const index_t>(col), ptr<const scalar_t>(a),
                                              ptr<const scalar_t>(b), ptr<scalar_t>(out),
                                              n_rows, d);
        });
      },
      "out[e] = <a[row e], b[col e]> over the edges of a CSR pattern (row-major a, b)",
      py::arg("rowptr"), py::arg("col"), py::arg("a"), py::arg("b"), py::arg("out"),
      py::arg("n_rows"), py::arg("d"), py::arg("index_dtype"), py::arg("dtype"),
      py::call_guard<py::gil_scoped_release>());
}

}  // namespace sgfd
