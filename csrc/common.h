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
// binding file is edited when an op is added. Every m.def names its arguments with py::arg (the
// op's terms: rowptr, col, val, n_rows, index_dtype, dtype, stream, ...) and Python passes them
// by keyword.
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

// Calls fn(scalar_t{}) for the float dtype name "float32" / "float64".
template <typename Fn>
inline void dispatch_float(const std::string& dtype, Fn&& fn) {
  if (dtype == "float32") {
    fn(float{});
  } else if (dtype == "float64") {
    fn(double{});
  } else {
    throw std::invalid_argument("sgfd_fast: unsupported float dtype '" + dtype +
                                "' (expected float32 or float64)");
  }
}

// Calls fn(index_t{}) for the index dtype name "int32" / "int64".
template <typename Fn>
inline void dispatch_index(const std::string& index_dtype, Fn&& fn) {
  if (index_dtype == "int32") {
    fn(std::int32_t{});
  } else if (index_dtype == "int64") {
    fn(std::int64_t{});
  } else {
    throw std::invalid_argument("sgfd_fast: unsupported index dtype '" + index_dtype +
                                "' (expected int32 or int64)");
  }
}

// Calls fn(scalar_t{}, index_t{}) for a float and an index dtype name: the four instantiations of
// a kernel templated on <scalar_t, index_t>. Use as
//   dispatch_float_index(dtype, index_dtype, [&](auto scalar_tag, auto index_tag) {
//     using scalar_t = decltype(scalar_tag);
//     using index_t = decltype(index_tag);
//     kernel<scalar_t, index_t>(...);
//   });
template <typename Fn>
inline void dispatch_float_index(const std::string& dtype, const std::string& index_dtype,
                                 Fn&& fn) {
  dispatch_index(index_dtype, [&](auto index_tag) {
    dispatch_float(dtype, [&](auto scalar_tag) { fn(scalar_tag, index_tag); });
  });
}

}  // namespace sgfd
