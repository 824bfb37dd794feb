// The module entry point shared by _C (CPU) and _C_cuda: it runs every SGFD_BIND block linked in.
#include "common.h"

#ifdef SGFD_WITH_OPENMP
#include <omp.h>
#endif

namespace sgfd {
std::vector<BindFn>& binders() {
  static std::vector<BindFn> fns;
  return fns;
}
}  // namespace sgfd

#ifndef SGFD_CUDA_ARCHS
#define SGFD_CUDA_ARCHS ""
#endif

PYBIND11_MODULE(SGFD_MODULE_NAME, m) {
  m.doc() = "sgfd_fast compiled kernels (raw-pointer API; use sgfd_fast.ops)";
  pybind11::dict info;
  info["compiler"] = SGFD_COMPILER;
#ifdef SGFD_WITH_OPENMP
  info["openmp"] = true;
  info["max_threads"] = omp_get_max_threads();
#else
  info["openmp"] = false;
#endif
#ifdef SGFD_WITH_CUDA
  info["cuda_archs"] = SGFD_CUDA_ARCHS;
#endif
  m.attr("build_info") = info;
  for (auto fn : sgfd::binders()) fn(m);
}
