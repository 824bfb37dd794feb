// row_dropout (CPU): out = x * keep / (1 - p), keep[r][c] from a hash of (key, ids[r], c).
//
// The PyTorch reference spends ~20 passes over an (n, D) int64 tensor on the hash; here each
// element's hash lives in registers (the column loop vectorises: 64-bit multiplies are AVX-512DQ
// instructions, scalar pairs elsewhere). Element-wise, so any thread split gives the same bits.
#include "common.h"

#include <cstdint>

namespace sgfd {
namespace {

constexpr std::uint64_t kRowStep = 0x9E3779B97F4A7C15ull;
constexpr std::uint64_t kColStep = 0xD1B54A32D192ED03ull;

// splitmix64's output mixer (the constants of ops/row_dropout.py and sampling.py).
inline std::uint64_t mix64(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

template <typename scalar_t>
void row_dropout_kernel(const scalar_t* x, const std::int64_t* ids, scalar_t* out,
                        std::int64_t n_rows, std::int64_t d, double p, std::int64_t key) {
  // As the reference: the uniform and p compare in float32, the scale is 1 - p in x's dtype.
  const float p32 = static_cast<float>(p);
  const scalar_t scale = static_cast<scalar_t>(1.0 - p);
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < n_rows; ++r) {
    const std::uint64_t row = mix64(static_cast<std::uint64_t>(key) +
                                    static_cast<std::uint64_t>(ids[r]) * kRowStep);
    const scalar_t* xr = x + r * d;
    scalar_t* outr = out + r * d;
#pragma omp simd
    for (std::int64_t c = 0; c < d; ++c) {
      const std::uint64_t h = mix64(row + static_cast<std::uint64_t>(c) * kColStep);
      const float uniform = static_cast<float>(static_cast<std::int32_t>(h >> 40)) * 0x1p-24f;
      // x * keep, not a select: NaN and inf times 0 give NaN, as in the reference
      outr[c] = xr[c] * static_cast<scalar_t>(uniform >= p32) / scale;
    }
  }
}

}  // namespace

SGFD_BIND(row_dropout) {
  m.def(
      "row_dropout",
      [](std::uintptr_t x, std::uintptr_t ids, std::uintptr_t out, std::int64_t n_rows,
         std::int64_t d, double p, std::int64_t key, const std::string& dtype) {
        dispatch_float(dtype, [&](auto scalar_tag) {
          using scalar_t = decltype(scalar_tag);
          row_dropout_kernel<scalar_t>(ptr<const scalar_t>(x), ptr<const std::int64_t>(ids),
                                       ptr<scalar_t>(out), n_rows, d, p, key);
        });
      },
      "out = x * keep / (1 - p) with keep a hash of (key, ids[r], column) (row-major x, out)",
      py::arg("x"), py::arg("ids"), py::arg("out"), py::arg("n_rows"), py::arg("d"),
      py::arg("p"), py::arg("key"), py::arg("dtype"), py::call_guard<py::gil_scoped_release>());
}

}  // namespace sgfd
