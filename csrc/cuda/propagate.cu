// propagate (CUDA): out = 1/(L+1) * sum_{k=0}^{L} A^k x, one launch per layer.
//
// A group of LPR lanes (a power of two <= 32, chosen so LPR * VEC covers the width when it can)
// owns one row; each lane owns VEC-wide column slices (16-byte loads when the width and pointers
// allow). The epilogue fuses the layer mean: it stores the layer only when the next layer reads it
// (ping-pong buffers) and writes out = (base + layer) * scale, where base is x for layer 1 and the
// running sum in out afterwards, and scale is 1/(L+1) on the last layer. Each output element is
// written by one lane with a fixed summation order and no atomics: bitwise reproducible.
#include "cuda/cuda_utils.cuh"

namespace sgfd {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t, int VEC>
struct alignas(sizeof(scalar_t) * VEC) Pack {
  scalar_t v[VEC];
};

template <typename scalar_t, typename index_t, int VEC, int LPR>
__global__ void propagate_layer_kernel(const index_t* __restrict__ rowptr,
                                       const index_t* __restrict__ col,
                                       const scalar_t* __restrict__ val,
                                       const scalar_t* __restrict__ src, scalar_t* layer,
                                       const scalar_t* base, scalar_t* out, std::int64_t n,
                                       std::int64_t d, scalar_t scale) {
  using P = Pack<scalar_t, VEC>;
  const std::int64_t row =
      static_cast<std::int64_t>(blockIdx.x) * (kThreads / LPR) + threadIdx.x / LPR;
  const int lane = threadIdx.x % LPR;
  if (row >= n) return;
  const index_t begin = rowptr[row];
  const index_t end = rowptr[row + 1];
  for (std::int64_t j = static_cast<std::int64_t>(lane) * VEC; j < d; j += LPR * VEC) {
    scalar_t acc[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] = scalar_t(0);
#pragma unroll 4
    for (index_t e = begin; e < end; ++e) {
      const scalar_t w = val[e];
      const P xv = *reinterpret_cast<const P*>(src + static_cast<std::int64_t>(col[e]) * d + j);
#pragma unroll
      for (int k = 0; k < VEC; ++k) acc[k] += w * xv.v[k];
    }
    const std::int64_t at = row * d + j;
    if (layer != nullptr) {
      P lv;
#pragma unroll
      for (int k = 0; k < VEC; ++k) lv.v[k] = acc[k];
      *reinterpret_cast<P*>(layer + at) = lv;
    }
    // base may alias out (the running sum): this lane reads its slice before writing it.
    P o = *reinterpret_cast<const P*>(base + at);
#pragma unroll
    for (int k = 0; k < VEC; ++k) o.v[k] = (o.v[k] + acc[k]) * scale;
    *reinterpret_cast<P*>(out + at) = o;
  }
}

template <typename scalar_t, typename index_t, int VEC>
void launch_layer(int lpr, const index_t* rowptr, const index_t* col, const scalar_t* val,
                  const scalar_t* src, scalar_t* layer, const scalar_t* base, scalar_t* out,
                  std::int64_t n, std::int64_t d, scalar_t scale, cudaStream_t stream) {
  const dim3 block(kThreads);
  const dim3 grid(ceil_div(n, kThreads / lpr));
#define SGFD_PROPAGATE_CASE(L)                                                           \
  case L:                                                                                \
    propagate_layer_kernel<scalar_t, index_t, VEC, L><<<grid, block, 0, stream>>>(       \
        rowptr, col, val, src, layer, base, out, n, d, scale);                           \
    break;
  switch (lpr) {
    SGFD_PROPAGATE_CASE(1)
    SGFD_PROPAGATE_CASE(2)
    SGFD_PROPAGATE_CASE(4)
    SGFD_PROPAGATE_CASE(8)
    SGFD_PROPAGATE_CASE(16)
    default:
      SGFD_PROPAGATE_CASE(32)
  }
#undef SGFD_PROPAGATE_CASE
}

template <typename scalar_t, typename index_t, int VEC>
void launch_layers(const index_t* rowptr, const index_t* col, const scalar_t* val,
                   const scalar_t* x, scalar_t* out, scalar_t* buf0, scalar_t* buf1,
                   std::int64_t n, std::int64_t d, std::int64_t n_layers, cudaStream_t stream) {
  int lpr = 1;  // lanes per row: enough VEC slices to cover d, at most a warp
  while (lpr < 32 && static_cast<std::int64_t>(lpr) * VEC < d) lpr *= 2;
  const scalar_t inv = scalar_t(1) / static_cast<scalar_t>(n_layers + 1);
  scalar_t* bufs[2] = {buf0, buf1};
  for (std::int64_t k = 1; k <= n_layers; ++k) {
    const scalar_t* src = k == 1 ? x : bufs[(k - 2) % 2];
    scalar_t* layer = k < n_layers ? bufs[(k - 1) % 2] : nullptr;
    const scalar_t* base = k == 1 ? x : out;
    launch_layer<scalar_t, index_t, VEC>(lpr, rowptr, col, val, src, layer, base, out, n, d,
                                         k == n_layers ? inv : scalar_t(1), stream);
  }
}

template <typename scalar_t, typename index_t>
void launch(std::uintptr_t rowptr, std::uintptr_t col, std::uintptr_t val, std::uintptr_t x,
            std::uintptr_t out, std::uintptr_t buf0, std::uintptr_t buf1, std::int64_t n,
            std::int64_t d, std::int64_t n_layers, std::uintptr_t stream) {
  if (n == 0 || d == 0) return;
  constexpr int kVec = 16 / sizeof(scalar_t);
  const bool vectorised = d % kVec == 0 && x % 16 == 0 && out % 16 == 0 && buf0 % 16 == 0 &&
                          buf1 % 16 == 0;
  const auto* rp = ptr<const index_t>(rowptr);
  const auto* c = ptr<const index_t>(col);
  const auto* v = ptr<const scalar_t>(val);
  if (vectorised) {
    launch_layers<scalar_t, index_t, kVec>(rp, c, v, ptr<const scalar_t>(x), ptr<scalar_t>(out),
                                           ptr<scalar_t>(buf0), ptr<scalar_t>(buf1), n, d,
                                           n_layers, as_stream(stream));
  } else {
    launch_layers<scalar_t, index_t, 1>(rp, c, v, ptr<const scalar_t>(x), ptr<scalar_t>(out),
                                        ptr<scalar_t>(buf0), ptr<scalar_t>(buf1), n, d, n_layers,
                                        as_stream(stream));
  }
  check_cuda(cudaGetLastError(), "propagate");
}

}  // namespace

SGFD_BIND(propagate) {
  m.def(
      "propagate",
      [](std::uintptr_t rowptr, std::uintptr_t col, std::uintptr_t val, std::uintptr_t x,
         std::uintptr_t out, std::uintptr_t buf0, std::uintptr_t buf1, std::int64_t n_rows,
         std::int64_t d, std::int64_t n_layers, const std::string& index_dtype,
         const std::string& dtype, std::uintptr_t stream) {
        if (n_layers < 1) throw std::invalid_argument("sgfd_fast propagate: n_layers must be >= 1");
        dispatch_float_index(dtype, index_dtype, [&](auto scalar_tag, auto index_tag) {
          using scalar_t = decltype(scalar_tag);
          using index_t = decltype(index_tag);
          launch<scalar_t, index_t>(rowptr, col, val, x, out, buf0, buf1, n_rows, d, n_layers,
                                    stream);
        });
      },
      "out = mean of x, A x, ..., A^L x for CSR A on a CUDA stream (buf0 is needed when L >= 2 "
      "and buf1 when L >= 3)",
      py::arg("rowptr"), py::arg("col"), py::arg("val"), py::arg("x"), py::arg("out"),
      py::arg("buf0"), py::arg("buf1"), py::arg("n_rows"), py::arg("d"), py::arg("n_layers"),
      py::arg("index_dtype"), py::arg("dtype"), py::arg("stream"),
      py::call_guard<py::gil_scoped_release>());
}

}  // namespace sgfd
