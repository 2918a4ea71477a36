// Sign-bit packing on the CPU (kernels.md): +1 (x >= shift, also -0.0 when shift == 0) -> bit 1,
// -1 -> bit 0, along the last (channel / reduction) axis into 64-bit words; bit j of word k holds
// element 64*k + j; tail bits are 0. NaN raises ValueError.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace erbnn {

constexpr int64_t kCpuWordBits = 64;

inline int64_t cpu_words(int64_t n) { return (n + kCpuWordBits - 1) / kCpuWordBits; }

// Packs sign(x - shift) of a 4-D view x[A, B, D, C] (any strides, float32/float64/float16/bfloat16;
// the comparison x >= shift runs in float32, or float64 for float64 x) into a new contiguous int64
// tensor [A, B, D, ceil(C/64)]. `name` names the argument in the NaN error.
at::Tensor pack_signs_4d_cpu(const at::Tensor& x4, double shift, const char* name);

}  // namespace erbnn
