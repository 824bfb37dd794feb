// sddmm_csr (CUDA): out[e] = <a[row(e), :], b[col[e], :]>. One warp per row; for each edge the
// lanes take strided slices of the width and a fixed shuffle tree reduces them, so every output
// has one writer and a fixed summation order (bitwise reproducible, no atomics).
#include "cuda/cuda_utils.cuh"

namespace sgfd {
namespace {

constexpr int kWarpsPerBlock = 8;

template <typename scalar_t, typename index_t>
__global__ void sddmm_csr_kernel(const index_t* __restrict__ rowptr,
                                 const index_t* __restrict__ col, const scalar_t* __restrict__ a,
                                 const scalar_t* __restrict__ b, scalar_t* __restrict__ out,
                                 std::int64_t n_rows, std::int64_t d) {
  const std::int64_t row =
      static_cast<std::int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= n_rows) return;  // whole warps exit together: the shuffles below see full warps
  const scalar_t* ar = a + row * d;
  for (index_t e = rowptr[row]; e < rowptr[row + 1]; ++e) {
    const scalar_t* br = b + static_cast<std::int64_t>(col[e]) * d;
    scalar_t acc = 0;
    for (std::int64_t j = lane; j < d; j += 32) acc += ar[j] * br[j];
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
    if (lane == 0) out[e] = acc;
  }
}

}  // namespace

SGFD_BIND(sddmm_csr) {
  m.def(
      "sddmm_csr",
      [](std::uintptr_t rowptr, std::uintptr_t col, std::uintptr_t a, std::uintptr_t b,
         std::uintptr_t out, std::int64_t n_rows, std::int64_t d, const std::string& index_dtype,
         const std::string& dtype, std::uintptr_t stream) {
        if (n_rows == 0) return;
        dispatch_float_index(dtype, index_dtype, [&](auto scalar_tag, auto index_tag) {
          using scalar_t = decltype(scalar_tag);
          using index_t = decltype(index_tag);
          sddmm_csr_kernel<scalar_t, index_t>
              <<<ceil_div(n_rows, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, as_stream(stream)>>>(
                  ptr<const index_t>(rowptr), ptr<const index_t>(col), ptr<const scalar_t>(a),
                  ptr<const scalar_t>(b), ptr<scalar_t>(out), n_rows, d);
        });
        check_cuda(cudaGetLastError(), "sddmm_csr");
      },
      "out[e] = <a[row e], b[col e]> over the edges of a CSR pattern, on a CUDA stream",
      py::arg("rowptr"), py::arg("col"), py::arg("a"), py::arg("b"), py::arg("out"),
      py::arg("n_rows"), py::arg("d"), py::arg("index_dtype"), py::arg("dtype"),
      py::arg("stream"), py::call_guard<py::gil_scoped_release>());
}

}  // namespace sgfd
