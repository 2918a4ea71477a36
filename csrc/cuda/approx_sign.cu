// approx_sign forward (sign) and backward (tanh surrogate), CUDA. Same per-element math as the CPU
// (common/restore_math.h). The width b is read on the device: no host sync.
#include <torch/library.h>

#include "common/checks.h"
#include "common/restore_math.h"
#include "cuda_utils.cuh"

namespace erbnn {
namespace cuda {
namespace {

template <typename scalar_t>
__global__ void sign_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(blockDim.x) * gridDim.x)
    y[i] = static_cast<scalar_t>(sign_pm1(static_cast<at::opmath_type<scalar_t>>(x[i])));  // float64 stays float64
}

template <typename scalar_t, typename acc_t>
__global__ void surrogate_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                                 const acc_t* __restrict__ b, scalar_t* __restrict__ dx, int64_t n) {
  const acc_t bw = *b, inv_b = acc_t(1) / bw, scale = surrogate_scale(bw);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(blockDim.x) * gridDim.x)
    dx[i] = static_cast<scalar_t>(acc_t(g[i]) * surrogate_grad(acc_t(x[i]), inv_b, scale));
}

at::Tensor approx_sign_cuda(const at::Tensor& x_in) {
  check_cuda_input(x_in, "x");
  check_float_input(x_in, "x");
  c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t n = x.numel();
  if (n == 0) return y;
  ERBNN_CUDA_DISPATCH_FLOATS(x.scalar_type(), "approx_sign_cuda", [&] {
    ERBNN_LAUNCH(grid_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream(), sign_kernel<scalar_t>)(
        x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

at::Tensor approx_sign_backward_cuda(const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& b) {
  check_cuda_input(x_in, "x");
  check_float_input(x_in, "x");
  TORCH_CHECK(grad_in.sizes() == x_in.sizes(), "grad has shape ", grad_in.sizes(), " but x has ", x_in.sizes());
  c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor g = grad_in.to(x.scalar_type()).contiguous();
  at::Tensor dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t n = x.numel();
  if (n == 0) return dx;
  ERBNN_CUDA_DISPATCH_FLOATS(x.scalar_type(), "approx_sign_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor bw = b.to(x.device(), c10::CppTypeToScalarType<acc_t>::value).contiguous();
    ERBNN_LAUNCH(grid_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream(), surrogate_kernel<scalar_t, acc_t>)(
        g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), bw.const_data_ptr<acc_t>(),
        dx.mutable_data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dx;
}

}  // namespace
}  // namespace cuda

ERBNN_CUDA_OPS(m) {
  m.impl("approx_sign", &cuda::approx_sign_cuda);
  m.impl("_approx_sign_backward", &cuda::approx_sign_backward_cuda);
}

}  // namespace erbnn
