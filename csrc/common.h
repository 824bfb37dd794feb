// Shared by every kernel file: self-registering pybind11 bindings and dtype dispatch.
//
// Kernels never see a torch type. Python validates every tensor (device, dtype, contiguity,
// shape), allocates outputs, and passes raw addresses as integers plus the CUDA stream handle.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace sgfd {

namespace py = pybind11;
using BindFn = void (*)(py::module_&);

// Each kernel file adds its bindings with SGFD_BIND(name) { m.def(...); } so no shared
// binding file is edited when an op is added.
std::vector<BindFn>& binders();
struct Binder {
  explicit Binder(BindFn fn) { binders().push_back(fn); }
};

#define SGFD_BIND(name)                                              \
  static void sgfd_bind_##name(::sgfd::py::module_& m);              \
  static ::sgfd::Binder sgfd_binder_##name(&sgfd_bind_##name);       \
  static void sgfd_bind_##name(::sgfd::py::module_& m)

template <typename T>
inline T* ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

// Calls fn.template operator()<scalar_t>() for "float32" / "float64".
template <typename Fn>
inline void dispatch_float(const std::string& dtype, Fn&& fn) {
  if (dtype == "float32") {
    fn(float{});
  } else if (dtype == "float64") {
    fn(double{});
  } else {
    throw std::invalid_argument("sgfd_fast: unsupported floating dtype " + dtype);
  }
}

// Calls fn(index_t{}) for "int32" / "int64".
template <typename Fn>
inline void dispatch_index(const std::string& dtype, Fn&& fn) {
  if (dtype == "int32") {
    fn(std::int32_t{});
  } else if (dtype == "int64") {
    fn(std::int64_t{});
  } else {
    throw std::invalid_argument("sgfd_fast: unsupported index dtype " + dtype);
  }
}

}  // namespace sgfd
