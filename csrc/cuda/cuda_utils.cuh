// Helpers shared by the CUDA kernels: launch configuration, the current stream, launch checks, and the
// hooks of the emulation build (ERBNN_CUDA_EMU: these sources compiled as C++ against csrc/cuda_emu,
// into erbnn_ext._C_emu, the kernels registered as CPU ops torch.ops.erbnn_emu.*; docs/kernels.md).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

namespace erbnn {
namespace cuda {

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n elements (capped: the loop covers the rest).
inline int grid_for(int64_t n, int threads = kThreads) {
  const int64_t want = (n + threads - 1) / threads;
  const int64_t cap = int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 32;
  return static_cast<int>(want < 1 ? 1 : (want > cap ? cap : want));
}

inline void check_cuda_input(const at::Tensor& t, const char* name) {
#ifdef ERBNN_CUDA_EMU
  TORCH_CHECK(t.is_cpu(), name, " must be a CPU tensor (the emulated CUDA device's memory), got one on ", t.device());
#else
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got one on ", t.device());
#endif
}

}  // namespace cuda
}  // namespace erbnn

#define ERBNN_CUDA_DISPATCH_FLOATS(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, TYPE, NAME, __VA_ARGS__)

// ERBNN_LAUNCH(grid, block, smem, stream, kernel)(args...) is kernel<<<grid, block, smem, stream>>>(args...)
// (the kernel last: a template's commas). Keep the macro's own arguments on one line: the emulator
// names a launch site by that line.
#ifdef ERBNN_CUDA_EMU
#define ERBNN_LAUNCH(grid, block, smem, stream, ...) \
  ::cuda_emu::Launch(__FILE__ ":" ERBNN_STRINGIFY(__LINE__), grid, block, smem, stream)(__VA_ARGS__)
#define ERBNN_STRINGIFY(x) ERBNN_STRINGIFY_(x)
#define ERBNN_STRINGIFY_(x) #x
#else
#define ERBNN_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#endif

// Where the kernels register: the CUDA dispatch key of torch.ops.erbnn, or in the emulation build the
// CPU key of torch.ops.erbnn_emu (the same schemas, csrc/cuda_emu/schemas.cpp).
#ifdef ERBNN_CUDA_EMU
#define ERBNN_CUDA_OPS(m) TORCH_LIBRARY_IMPL(erbnn_emu, CPU, m)
#else
#define ERBNN_CUDA_OPS(m) TORCH_LIBRARY_IMPL(erbnn, CUDA, m)
#endif
