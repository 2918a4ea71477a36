// Weight restoration (method.md section 1), CUDA: one block per output channel computes the channel's
// mean and population RMS (warp-shuffle + shared-memory sums in double) and writes the signs; the
// backward is one block per channel too. The channel's later passes hit L1/L2. Same per-element math as
// the CPU (common/restore_math.h). Current stream, no host sync: b, mean, alpha are read on the device.
//
// Non-finite weights: the CPU raises ValueError, but a CUDA forward cannot check without a host sync,
// so NaN/Inf propagate instead: that channel's mean/alpha are NaN or Inf and its w_b is all NaN.
#include <torch/library.h>

#include "common/checks.h"
#include "common/restore_math.h"
#include "cuda_utils.cuh"
#include "restore_cuda.cuh"
#include "reduce.cuh"

namespace erbnn {
namespace cuda {
namespace {

constexpr int kWeightThreads = 256;

template <typename scalar_t, typename stat_t>
__global__ void __launch_bounds__(kWeightThreads) weight_forward_kernel(const scalar_t* __restrict__ w,
                                                                        scalar_t* __restrict__ out,
                                                                        stat_t* __restrict__ mean,
                                                                        stat_t* __restrict__ alpha, int64_t n) {
  __shared__ double smem[32];
  const int64_t o = blockIdx.x;
  const scalar_t* row = w + o * n;
  scalar_t* dst = out + o * n;
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += static_cast<double>(static_cast<stat_t>(row[i]));
  s = block_sum(s, smem);
  const stat_t mu = static_cast<stat_t>(s / double(n));
  double q = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const stat_t d = static_cast<stat_t>(row[i]) - mu;
    q += static_cast<double>(d) * static_cast<double>(d);
  }
  q = block_sum(q, smem);
  const stat_t al = static_cast<stat_t>(sqrt(q / double(n)));
  if (threadIdx.x == 0) {
    mean[o] = mu;
    alpha[o] = al;
  }
  const stat_t a = clamp_eps(al);
  const bool finite = isfinite(s) && isfinite(q);
  const scalar_t pos(1), neg(-1), nan(NAN);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
    dst[i] = !finite ? nan : ((static_cast<stat_t>(row[i]) - mu) / a >= stat_t(0) ? pos : neg);
}

template <typename scalar_t, typename stat_t>
__global__ void __launch_bounds__(kWeightThreads) weight_backward_kernel(
    const scalar_t* __restrict__ grad, const scalar_t* __restrict__ w, const stat_t* __restrict__ mean,
    const stat_t* __restrict__ alpha, const stat_t* __restrict__ b, scalar_t* __restrict__ dw, int64_t n) {
  __shared__ double smem[32];
  const int64_t o = blockIdx.x;
  const scalar_t* row = w + o * n;
  const scalar_t* grow = grad + o * n;
  const stat_t mu = mean[o], a = clamp_eps(alpha[o]), inv_a = stat_t(1) / a;
  const stat_t bw = *b, inv_b = stat_t(1) / bw, scale = surrogate_scale(bw);
  double sg = 0.0, sgw = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const stat_t what = (static_cast<stat_t>(row[i]) - mu) / a;
    const stat_t g = static_cast<stat_t>(grow[i]) * surrogate_grad(what, inv_b, scale);
    sg += static_cast<double>(g);
    sgw += static_cast<double>(g * what);
  }
  sg = block_sum(sg, smem);
  sgw = block_sum(sgw, smem);
  const stat_t mg = static_cast<stat_t>(sg / double(n)), mgw = static_cast<stat_t>(sgw / double(n));
  // g is recomputed rather than stored: tanh is cheap next to a second buffer's memory traffic.
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const stat_t what = (static_cast<stat_t>(row[i]) - mu) / a;
    const stat_t g = static_cast<stat_t>(grow[i]) * surrogate_grad(what, inv_b, scale);
    dw[o * n + i] = static_cast<scalar_t>(restore_weight_grad(g, what, mg, mgw, inv_a));
  }
}

void check_weight(const at::Tensor& w) {
  check_cuda_input(w, "w");
  check_float_input(w, "w");
  TORCH_CHECK_VALUE(w.dim() >= 1, "w must have at least 1 dimension (output channels first), got ", w.dim(), "-D");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> restore_weight_cuda(const at::Tensor& w_in) {
  check_weight(w_in);
  c10::cuda::CUDAGuard guard(w_in.device());
  const at::Tensor w = w_in.contiguous();
  const int64_t O = w.size(0), n = O == 0 ? 0 : w.numel() / O;
  at::Tensor w_b = at::empty_like(w, at::MemoryFormat::Contiguous);
  at::Tensor mean = at::zeros({O}, w.options().dtype(stat_dtype(w)));
  at::Tensor alpha = at::zeros({O}, w.options().dtype(stat_dtype(w)));
  if (O == 0) return {w_b, mean, alpha};
  TORCH_CHECK(O <= INT32_MAX, "w has ", O, " output channels, more than one grid of blocks (2^31 - 1)");
  if (n == 0) return {w_b.fill_(1), mean, alpha};
  ERBNN_CUDA_DISPATCH_FLOATS(w.scalar_type(), "restore_weight_cuda", [&] {
    using stat_t = at::opmath_type<scalar_t>;
    ERBNN_LAUNCH(O, kWeightThreads, 0, at::cuda::getCurrentCUDAStream(), weight_forward_kernel<scalar_t, stat_t>)(
        w.const_data_ptr<scalar_t>(), w_b.mutable_data_ptr<scalar_t>(), mean.mutable_data_ptr<stat_t>(),
        alpha.mutable_data_ptr<stat_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {w_b, mean, alpha};
}

namespace {

at::Tensor restore_weight_backward_cuda(const at::Tensor& grad_in, const at::Tensor& w_in, const at::Tensor& mean_in,
                                        const at::Tensor& alpha_in, const at::Tensor& b) {
  check_weight(w_in);
  TORCH_CHECK(grad_in.sizes() == w_in.sizes(), "grad_wb has shape ", grad_in.sizes(), " but w has shape ",
              w_in.sizes());
  c10::cuda::CUDAGuard guard(w_in.device());
  const at::Tensor w = w_in.contiguous();
  const int64_t O = w.size(0), n = O == 0 ? 0 : w.numel() / O;
  const auto st = stat_dtype(w);
  TORCH_CHECK(mean_in.numel() == O && alpha_in.numel() == O, "mean and alpha must hold ", O, " values, got ",
              mean_in.numel(), " and ", alpha_in.numel());
  TORCH_CHECK(b.numel() == 1, "b must hold one value (the surrogate width), got ", b.numel(), " values");
  at::Tensor dw = at::empty_like(w, at::MemoryFormat::Contiguous);
  if (O == 0 || n == 0) return dw.zero_();
  const at::Tensor mean = mean_in.to(w.device(), st).contiguous(), alpha = alpha_in.to(w.device(), st).contiguous();
  const at::Tensor bw = b.to(w.device(), st).contiguous();
  const at::Tensor g = grad_in.to(w.scalar_type()).contiguous();
  ERBNN_CUDA_DISPATCH_FLOATS(w.scalar_type(), "restore_weight_backward_cuda", [&] {
    using stat_t = at::opmath_type<scalar_t>;
    ERBNN_LAUNCH(O, kWeightThreads, 0, at::cuda::getCurrentCUDAStream(), weight_backward_kernel<scalar_t, stat_t>)(
        g.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), mean.const_data_ptr<stat_t>(),
        alpha.const_data_ptr<stat_t>(), bw.const_data_ptr<stat_t>(), dw.mutable_data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dw;
}

}  // namespace
}  // namespace cuda

ERBNN_CUDA_OPS(m) {
  m.impl("restore_weight", &cuda::restore_weight_cuda);
  m.impl("_restore_weight_backward", &cuda::restore_weight_backward_cuda);
}

}  // namespace erbnn
