// CUDA helpers shared by the kernel files of _C_cuda.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "common.h"

namespace sgfd {

inline void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("sgfd_fast CUDA error in ") + what + ": " +
                             cudaGetErrorString(status));
  }
}

inline cudaStream_t as_stream(std::uintptr_t stream) {
  return reinterpret_cast<cudaStream_t>(stream);
}

inline unsigned int ceil_div(std::int64_t a, std::int64_t b) {
  return static_cast<unsigned int>((a + b - 1) / b);
}

}  // namespace sgfd
