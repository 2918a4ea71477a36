// Helpers shared by the CPU kernels: argument checks and the dtype dispatch they all use.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <cmath>

#include "common/checks.h"

namespace erbnn {

inline void check_same_device(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn) {
  TORCH_CHECK(a.device() == b.device(), an, " is on ", a.device(), " but ", bn, " is on ", b.device());
}

inline void check_same_shape(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn) {
  TORCH_CHECK(a.sizes() == b.sizes(), an, " has shape ", a.sizes(), " but ", bn, " has shape ", b.sizes());
}

// The surrogate width b: a 0-dim (or 1-element) tensor read once per call.
inline double read_width(const at::Tensor& b) {
  TORCH_CHECK(b.numel() == 1, "b must hold one value (the surrogate width), got ", b.numel(), " values");
  const double v = b.item<double>();
  TORCH_CHECK_VALUE(v > 0 && std::isfinite(v), "b (the surrogate width) must be finite and > 0, got ", v);
  return v;
}

// Grain for at::parallel_for over elements: large enough that a task outweighs its scheduling.
constexpr int64_t kElemGrain = 1 << 15;

}  // namespace erbnn

// float, double, half, bfloat16 (the project's float inputs).
#define ERBNN_DISPATCH_FLOATS(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, TYPE, NAME, __VA_ARGS__)
