// Runtime queries for python -m sgfd_fast.info and backend selection.
#include "cuda/cuda_utils.cuh"

namespace sgfd {

SGFD_BIND(cuda_runtime) {
  m.def("device_count", []() {
    int n = 0;
    // No driver or no GPU (cudaErrorInsufficientDriver / NoDevice) means zero devices, not a crash.
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();
      return 0;
    }
    return n;
  });
  m.def("runtime_version", []() {
    int v = 0;
    cudaRuntimeGetVersion(&v);
    return v;
  });
}

}  // namespace sgfd
