// What the exact bf16 filters share (masked_topk's and attentive_distance_topk's precision
// "bf16"): the run-time ISA check and the rounding of one operand to bf16.
//
// The filters need a compiler that knows AVX512-BF16 (GCC 10, clang 9) and compile only the
// functions that use it for that ISA, chosen at run time: the module runs on CPUs without it.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && \
    ((defined(__clang__) && __clang_major__ >= 9) || (!defined(__clang__) && __GNUC__ >= 10))
#define SGFD_BF16_FILTER 1
#include <immintrin.h>
#endif

namespace sgfd {

// Whether this CPU runs the bf16 filters (checked once).
inline bool bf16_filter_available() {
#if defined(SGFD_BF16_FILTER)
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
  return ok;
#else
  return false;
#endif
}

// x rounded to bf16 (nearest, ties to even), |x| < 2^-126 flushed to zero: the operand model of
// the bounds (x̂ = x(1 + α) + a, |α| <= 2^-8, |a| < 2^-126). Inputs are finite, far from overflow.
inline std::uint32_t bf16_bits(float x) {
  if (!(std::fabs(x) >= 0x1p-126f)) return 0;
  std::uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
}

}  // namespace sgfd
