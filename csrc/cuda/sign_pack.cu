// pack_signs / unpack_signs on CUDA and the packing pass of the binary convolutions.
#include <torch/library.h>

#include "common/checks.h"
#include "common/pack_shape.h"
#include "cuda_utils.cuh"
#include "sign_pack_cuda.cuh"

namespace erbnn {
namespace cuda {
namespace {

struct View4 {
  int64_t A, B, D, C, sa, sb, sd, sc, words;
};

// One thread per output word: reads up to 32 strided elements, compares, ORs the bits.
// shift_ptr: the shift on the device (nullptr: 0), read here so that the host never waits for it; a
// non-finite shift sets the NaN flag like a NaN input.
template <typename scalar_t, typename cmp_t>
__global__ void pack_kernel(const scalar_t* __restrict__ x, View4 v, const double* __restrict__ shift_ptr,
                            uint32_t* __restrict__ out, int* __restrict__ nan_flag) {
  const cmp_t shift = shift_ptr ? static_cast<cmp_t>(*shift_ptr) : cmp_t(0);
  if (shift_ptr && blockIdx.x == 0 && threadIdx.x == 0 && !isfinite(*shift_ptr)) atomicOr(nan_flag, 1);
  const int64_t total = v.A * v.B * v.D * v.words;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t k = i % v.words, pix = i / v.words;
    const int64_t d = pix % v.D, ab = pix / v.D, b = ab % v.B, a = ab / v.B;
    const scalar_t* px = x + a * v.sa + b * v.sb + d * v.sd;
    const int64_t c0 = k * 32, c1 = min(c0 + 32, v.C);
    uint32_t word = 0;
    bool nan = false;
    for (int64_t c = c0; c < c1; ++c) {
      const cmp_t e = static_cast<cmp_t>(px[c * v.sc]);
      nan |= e != e;
      word |= uint32_t(e >= shift) << (c - c0);
    }
    out[i] = word;
    if (nan) atomicOr(nan_flag, 1);
  }
}

__global__ void unpack_kernel(const uint32_t* __restrict__ packed, int64_t rows, int64_t n, int64_t words,
                              float* __restrict__ out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < rows * n; i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t r = i / n, c = i % n;
    out[i] = ((packed[r * words + (c >> 5)] >> (c & 31)) & 1u) ? 1.0f : -1.0f;
  }
}

at::Tensor pack_signs_cuda(const at::Tensor& x, int64_t dim) {
  check_cuda_input(x, "x");
  c10::cuda::CUDAGuard guard(x.device());
  const PackPlan p = plan_pack(x, dim, kCudaWordBits);
  at::Tensor flag = at::zeros({1}, x.options().dtype(at::kInt));
  at::Tensor packed = pack_signs_4d_cuda(as_4d(p.xm), at::Tensor(), flag);
  // pack_signs is a utility, not a forward: a host check gives the clear error.
  TORCH_CHECK_VALUE(flag.item<int>() == 0, "x contains NaN: its sign is undefined");
  return packed.view(p.shape);
}

at::Tensor unpack_signs_cuda(const at::Tensor& packed_in, int64_t n, int64_t dim) {
  check_cuda_input(packed_in, "packed");
  const std::vector<int64_t> shape = plan_unpack(packed_in, n, at::kInt, kCudaWordBits, "CUDA");
  c10::cuda::CUDAGuard guard(packed_in.device());
  const at::Tensor packed = packed_in.contiguous();
  at::Tensor out = at::empty(shape, packed.options().dtype(at::kFloat));
  const int64_t rows = n == 0 ? 0 : out.numel() / n;
  if (out.numel() > 0) {
    ERBNN_LAUNCH(grid_for(out.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream(), unpack_kernel)(
        reinterpret_cast<const uint32_t*>(packed.const_data_ptr<int32_t>()), rows, n, packed.size(-1),
        out.mutable_data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out.movedim(-1, c10::maybe_wrap_dim(dim, out.dim())).contiguous();
}

}  // namespace

at::Tensor pack_signs_4d_cuda(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& nan_flag) {
  TORCH_CHECK(x.dim() == 4, "pack_signs_4d_cuda: expected a 4-D view");
  check_float_input(x, "x");
  View4 v{x.size(0), x.size(1), x.size(2), x.size(3), x.stride(0), x.stride(1), x.stride(2), x.stride(3),
          cuda_words(x.size(3))};
  at::Tensor out = at::empty({v.A, v.B, v.D, v.words}, x.options().dtype(at::kInt));
  if (out.numel() == 0) return out;
  auto* dst = reinterpret_cast<uint32_t*>(out.mutable_data_ptr<int32_t>());
  int* flag = nan_flag.mutable_data_ptr<int>();
  const at::Tensor shift64 = shift.defined() ? shift.reshape({1}).to(at::kDouble) : at::Tensor();
  const double* shift_ptr = shift64.defined() ? shift64.const_data_ptr<double>() : nullptr;
  auto stream = at::cuda::getCurrentCUDAStream();
  ERBNN_CUDA_DISPATCH_FLOATS(x.scalar_type(), "pack_signs_cuda", [&] {
    // Compare in float64 for float64 input (no rounding of tiny values to -0.0), float32 otherwise.
    using cmp_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    ERBNN_LAUNCH(grid_for(out.numel()), kThreads, 0, stream, pack_kernel<scalar_t, cmp_t>)(
        x.const_data_ptr<scalar_t>(), v, shift_ptr, dst, flag);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace cuda

ERBNN_CUDA_OPS(m) {
  m.impl("pack_signs", &cuda::pack_signs_cuda);
  m.impl("unpack_signs", &cuda::unpack_signs_cuda);
}

}  // namespace erbnn
