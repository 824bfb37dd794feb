// spmm_csr (CUDA): out[r, :] = sum_{e in row r} val[e] * x[col[e], :]
//
// One warp per output row; lanes own VEC-wide column slices (16-byte loads when the width and
// leading dimensions allow). Every output element is written by exactly one lane with a fixed
// summation order, so results are bitwise reproducible (no atomics).
#include "cuda/cuda_utils.cuh"

namespace sgfd {
namespace {

constexpr int kWarpsPerBlock = 8;

template <typename scalar_t, int VEC>
struct Vec;
template <typename scalar_t>
struct Vec<scalar_t, 1> {
  scalar_t v[1];
};
template <>
struct alignas(16) Vec<float, 4> {
  float v[4];
};
template <>
struct alignas(16) Vec<double, 2> {
  double v[2];
};

template <typename scalar_t, typename index_t, int VEC>
__global__ void spmm_csr_kernel(const index_t* __restrict__ rowptr,
                                const index_t* __restrict__ col,
                                const scalar_t* __restrict__ val, const scalar_t* __restrict__ x,
                                scalar_t* __restrict__ out, std::int64_t n_rows, std::int64_t d,
                                std::int64_t ld_x, std::int64_t ld_out) {
  using V = Vec<scalar_t, VEC>;
  const std::int64_t row =
      static_cast<std::int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= n_rows) return;
  const index_t begin = rowptr[row];
  const index_t end = rowptr[row + 1];
  for (std::int64_t j = static_cast<std::int64_t>(lane) * VEC; j < d; j += 32 * VEC) {
    scalar_t acc[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] = scalar_t(0);
    for (index_t e = begin; e < end; ++e) {
      const scalar_t w = val ? val[e] : scalar_t(1);
      const V xv = *reinterpret_cast<const V*>(x + static_cast<std::int64_t>(col[e]) * ld_x + j);
#pragma unroll
      for (int k = 0; k < VEC; ++k) acc[k] += w * xv.v[k];
    }
    V o;
#pragma unroll
    for (int k = 0; k < VEC; ++k) o.v[k] = acc[k];
    *reinterpret_cast<V*>(out + row * ld_out + j) = o;
  }
}

template <typename scalar_t, typename index_t>
void launch(std::uintptr_t rowptr, std::uintptr_t col, std::uintptr_t val, std::uintptr_t x,
            std::uintptr_t out, std::int64_t n_rows, std::int64_t d, std::int64_t ld_x,
            std::int64_t ld_out, std::uintptr_t stream) {
  if (n_rows == 0 || d == 0) return;
  constexpr int kVec = 16 / sizeof(scalar_t);
  const bool vectorised = d % kVec == 0 && ld_x % kVec == 0 && ld_out % kVec == 0 &&
                          x % 16 == 0 && out % 16 == 0;
  const dim3 grid(ceil_div(n_rows, kWarpsPerBlock));
  const dim3 block(32 * kWarpsPerBlock);
  if (vectorised) {
    spmm_csr_kernel<scalar_t, index_t, kVec><<<grid, block, 0, as_stream(stream)>>>(
        ptr<const index_t>(rowptr), ptr<const index_t>(col), ptr<const scalar_t>(val),
        ptr<const scalar_t>(x), ptr<scalar_t>(out), n_rows, d, ld_x, ld_out);
  } else {
    spmm_csr_kernel<scalar_t, index_t, 1><<<grid, block, 0, as_stream(stream)>>>(
        ptr<const index_t>(rowptr), ptr<const index_t>(col), ptr<const scalar_t>(val),
        ptr<const scalar_t>(x), ptr<scalar_t>(out), n_rows, d, ld_x, ld_out);
  }
  check_cuda(cudaGetLastError(), "spmm_csr");
}

}  // namespace

SGFD_BIND(spmm_csr) {
  m.def(
      "spmm_csr",
      [](std::uintptr_t rowptr, std::uintptr_t col, std::uintptr_t val, std::uintptr_t x,
         std::uintptr_t out, std::int64_t n_rows, std::int64_t d, std::int64_t ld_x,
         std::int64_t ld_out, const std::string& index_dtype, const std::string& dtype,
         std::uintptr_t stream) {
        dispatch_float_index(dtype, index_dtype, [&](auto scalar_tag, auto index_tag) {
          using scalar_t = decltype(scalar_tag);
          using index_t = decltype(index_tag);
          launch<scalar_t, index_t>(rowptr, col, val, x, out, n_rows, d, ld_x, ld_out, stream);
        });
      },
      "out = A @ x for CSR A on the given CUDA stream (val may be 0 for unit weights)",
      py::arg("rowptr"), py::arg("col"), py::arg("val"), py::arg("x"), py::arg("out"),
      py::arg("n_rows"), py::arg("d"), py::arg("ld_x"), py::arg("ld_out"),
      py::arg("index_dtype"), py::arg("dtype"), py::arg("stream"),
      py::call_guard<py::gil_scoped_release>());
}

}  // namespace sgfd
