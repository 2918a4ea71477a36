// Argument checks and dtype rules shared by the CPU (C++) and CUDA (nvcc) kernels, host side only.
#pragma once

#include <ATen/ATen.h>

#include <type_traits>

namespace erbnn {

// Float inputs: float32, float64, float16, bfloat16 (the last two computed in float32).
inline void check_float_input(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble ||
                       t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16,
                   name, " must be float32, float64, float16 or bfloat16, got ", t.scalar_type());
}

// dtype of the statistics (mean, alpha, sigma, ...) and accumulations of a float input: float64 for
// float64, float32 otherwise.
inline at::ScalarType stat_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// The same rule on the element type.
template <typename scalar_t>
using stat_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

}  // namespace erbnn
