// spmm_csr (CUDA): out[r, :] = sum_{e in row r} val[e] * x[col[e], :]
//
// A group of LPR lanes (a power of two <= 32, chosen so LPR * VEC covers the width when it can, as
// in propagate.cu) owns one output row; lanes own VEC-wide column slices (16-byte loads when the
// width and leading dimensions allow). At d = 64 in float32 that is 16 lanes per row, where a
// warp per row left half its lanes idle. Every output element is written by exactly one lane with
// a fixed summation order, so results are bitwise reproducible (no atomics).
#include "cuda/cuda_utils.cuh"

namespace sgfd {
namespace {

constexpr int kThreads = 256;

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

template <typename scalar_t, typename index_t, int VEC, int LPR>
__global__ void spmm_csr_kernel(const index_t* __restrict__ rowptr,
                                const index_t* __restrict__ col,
                                const scalar_t* __restrict__ val, const scalar_t* __restrict__ x,
                                scalar_t* __restrict__ out, std::int64_t n_rows, std::int64_t d,
                                std::int64_t ld_x, std::int64_t ld_out) {
  using V = Vec<scalar_t, VEC>;
  const std::int64_t row =
      static_cast<std::int64_t>(blockIdx.x) * (kThreads / LPR) + threadIdx.x / LPR;
  const int lane = threadIdx.x % LPR;
  if (row >= n_rows) return;
  const index_t begin = rowptr[row];
  const index_t end = rowptr[row + 1];
  for (std::int64_t j = static_cast<std::int64_t>(lane) * VEC; j < d; j += LPR * VEC) {
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

template <typename scalar_t, typename index_t, int VEC>
void launch_vec(const index_t* rowptr, const index_t* col, const scalar_t* val, const scalar_t* x,
                scalar_t* out, std::int64_t n_rows, std::int64_t d, std::int64_t ld_x,
                std::int64_t ld_out, cudaStream_t stream) {
  int lpr = 1;  // lanes per row: enough VEC slices to cover d, at most a warp
  while (lpr < 32 && static_cast<std::int64_t>(lpr) * VEC < d) lpr *= 2;
  const dim3 block(kThreads);
  const dim3 grid(ceil_div(n_rows, kThreads / lpr));
#define SGFD_SPMM_CASE(L)                                                                  \
  case L:                                                                                  \
    spmm_csr_kernel<scalar_t, index_t, VEC, L><<<grid, block, 0, stream>>>(                \
        rowptr, col, val, x, out, n_rows, d, ld_x, ld_out);                                \
    break;
  switch (lpr) {
    SGFD_SPMM_CASE(1)
    SGFD_SPMM_CASE(2)
    SGFD_SPMM_CASE(4)
    SGFD_SPMM_CASE(8)
    SGFD_SPMM_CASE(16)
    default:
      SGFD_SPMM_CASE(32)
  }
#undef SGFD_SPMM_CASE
}

template <typename scalar_t, typename index_t>
void launch(std::uintptr_t rowptr, std::uintptr_t col, std::uintptr_t val, std::uintptr_t x,
            std::uintptr_t out, std::int64_t n_rows, std::int64_t d, std::int64_t ld_x,
            std::int64_t ld_out, std::uintptr_t stream) {
  if (n_rows == 0 || d == 0) return;
  constexpr int kVec = 16 / sizeof(scalar_t);
  const bool vectorised = d % kVec == 0 && ld_x % kVec == 0 && ld_out % kVec == 0 &&
                          x % 16 == 0 && out % 16 == 0;
  const auto* rp = ptr<const index_t>(rowptr);
  const auto* cp = ptr<const index_t>(col);
  const auto* vp = ptr<const scalar_t>(val);
  const auto* xp = ptr<const scalar_t>(x);
  auto* op = ptr<scalar_t>(out);
  if (vectorised) {
    launch_vec<scalar_t, index_t, kVec>(rp, cp, vp, xp, op, n_rows, d, ld_x, ld_out,
                                        as_stream(stream));
  } else {
    launch_vec<scalar_t, index_t, 1>(rp, cp, vp, xp, op, n_rows, d, ld_x, ld_out,
                                     as_stream(stream));
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
