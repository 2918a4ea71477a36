// Sign-bit packing on CUDA: 32-bit words along the last axis (bit j of word k = element 32k + j, 1 for
// x >= shift, tail bits 0). NaN sets a device flag instead of syncing: the convolutions read it on the
// device and write NaN outputs; pack_signs / pack_conv_weight (not forwards) check it on the host.
#pragma once

#include <ATen/ATen.h>

namespace erbnn {
namespace cuda {

constexpr int64_t kCudaWordBits = 32;

inline int64_t cuda_words(int64_t n) { return (n + kCudaWordBits - 1) / kCudaWordBits; }

// x4: a 4-D view [A, B, D, C] (any strides, float dtypes). Returns int32 [A, B, D, ceil(C/32)];
// shift: undefined (0) or a 1-element float tensor on x4's device, read by the kernel (no host sync);
// nan_flag (int32, 1 element, zeroed by the caller) is set to 1 if x holds a NaN or shift is not finite.
at::Tensor pack_signs_4d_cuda(const at::Tensor& x4, const at::Tensor& shift, const at::Tensor& nan_flag);

}  // namespace cuda
}  // namespace erbnn
