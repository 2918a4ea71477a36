// The training ops, CUDA (see csrc/cpu/restore_train.cpp for the contract). Everything stays on the
// device: the quantile's radix select (quantile_kernels.cuh) reads the standardised values computed
// from x on the fly and p from device memory, and one single-thread kernel pushes q (and mean, sigma)
// into the rings and writes the new width and b_step. Current stream, no host sync. A non-finite input
// gives a NaN q (the CPU raises), which then reaches the ring and the width.
#include <torch/library.h>

#include "common/checks.h"
#include "common/macros.h"
#include "common/restore_math.h"
#include "common/ring_math.h"
#include "common/train_state.h"
#include "cuda_utils.cuh"
#include "quantile_kernels.cuh"
#include "restore_cuda.cuh"

namespace erbnn {
namespace cuda {
namespace {

// One ring of the activation statistics: its values, count and the 0-dim value pushed.
template <typename stat_t>
struct StatRing {
  double* values;
  int64_t size;
  int64_t* count;
  const stat_t* value;
};

template <typename stat_t>
__global__ void ring_update_kernel(const float* __restrict__ q, double* q_values, int64_t q_size, int64_t* q_count,
                                   double* width, double min_width, stat_t* b_step, StatRing<stat_t> mean_ring,
                                   StatRing<stat_t> sigma_ring) {
  ring_push(q_values, q_size, q_count, double(*q));
  const double w = ring_width(q_values, q_size, *q_count, min_width);
  *width = w;
  *b_step = static_cast<stat_t>(w);
  if (mean_ring.values) ring_push(mean_ring.values, mean_ring.size, mean_ring.count, double(*mean_ring.value));
  if (sigma_ring.values) ring_push(sigma_ring.values, sigma_ring.size, sigma_ring.count, double(*sigma_ring.value));
}

// IEEE subtraction and division with no flush of subnormals, whatever the build's fast-math flags:
// the standardised values must equal PyTorch's (x - mean) / max(sigma, eps) bit for bit.
#ifdef ERBNN_CUDA_EMU
__device__ __forceinline__ float sub_rn(float a, float b) { return a - b; }  // IEEE on the CPU
__device__ __forceinline__ float div_rn(float a, float b) { return a / b; }
#else
__device__ __forceinline__ float sub_rn(float a, float b) {
  float r;
  asm("sub.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
__device__ __forceinline__ float div_rn(float a, float b) {
  float r;
  asm("div.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
#endif
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ double div_rn(double a, double b) { return __ddiv_rn(a, b); }

// The standardised values (x[i] - mean[o]) / max(scale[o], eps), o = i / per_row, computed where the
// quantile's kernels read them: never materialised.
template <typename scalar_t, typename stat_t>
struct StandardisedValues {
  using value_t = stat_t;
  const scalar_t* x;
  const stat_t* mean;
  const stat_t* scale;
  int64_t per_row;  // values per (mean, scale) entry
  __device__ __forceinline__ stat_t operator()(int64_t i) const {
    const int64_t o = i / per_row;
    return div_rn(sub_rn(static_cast<stat_t>(x[i]), mean[o]), clamp_eps(scale[o]));
  }
};

// q of the standardised values of x (contiguous), the ring pushes and b_step, all queued on the
// current stream.
at::Tensor measure_and_push(const at::Tensor& x, const at::Tensor& x_mean, const at::Tensor& x_scale,
                            int64_t per_row, const at::Tensor& p, const at::Tensor& q_values,
                            const at::Tensor& q_count, const at::Tensor& width, double min_width,
                            const at::Tensor* mean, const at::Tensor* mean_values, const at::Tensor* mean_count,
                            const at::Tensor* sigma, const at::Tensor* sigma_values, const at::Tensor* sigma_count) {
  const at::Tensor p_dev = p.to(at::kDouble).reshape({}).contiguous();
  at::Tensor q = at::empty({}, x.options().dtype(at::kFloat));
  ERBNN_CUDA_DISPATCH_FLOATS(x.scalar_type(), "restore_train_q", [&] {
    using stat_t = at::opmath_type<scalar_t>;
    const StandardisedValues<scalar_t, stat_t> src{x.const_data_ptr<scalar_t>(), x_mean.const_data_ptr<stat_t>(),
                                                   x_scale.const_data_ptr<stat_t>(), per_row};
    quantile_of_values(src, x.numel(), x, p_dev.const_data_ptr<double>(), 0.0, q.mutable_data_ptr<float>());
  });
  at::Tensor b_step = at::empty({}, x.options().dtype(stat_dtype(x)));
  AT_DISPATCH_FLOATING_TYPES(b_step.scalar_type(), "restore_train_ring", [&] {
    StatRing<scalar_t> mr{nullptr, 0, nullptr, nullptr}, sr{nullptr, 0, nullptr, nullptr};
    if (mean) {
      mr = {mean_values->mutable_data_ptr<double>(), mean_values->numel(), mean_count->mutable_data_ptr<int64_t>(),
            mean->const_data_ptr<scalar_t>()};
      sr = {sigma_values->mutable_data_ptr<double>(), sigma_values->numel(),
            sigma_count->mutable_data_ptr<int64_t>(), sigma->const_data_ptr<scalar_t>()};
    }
    ERBNN_LAUNCH(1, 1, 0, at::cuda::getCurrentCUDAStream(), ring_update_kernel<scalar_t>)(
        q.const_data_ptr<float>(), q_values.mutable_data_ptr<double>(), q_values.numel(),
        q_count.mutable_data_ptr<int64_t>(), width.mutable_data_ptr<double>(), min_width,
        b_step.mutable_data_ptr<scalar_t>(), mr, sr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return b_step;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> restore_weight_train_cuda(
    const at::Tensor& w, const at::Tensor& p, const at::Tensor& q_values, const at::Tensor& q_count,
    const at::Tensor& width, double min_width) {
  check_cuda_input(w, "w");
  check_float_input(w, "w");
  check_ring(q_values, "q_values", q_count, "q_count", w);
  check_width_and_p(width, p, w);
  c10::cuda::CUDAGuard guard(w.device());
  auto [w_b, mean, alpha] = restore_weight_cuda(w);
  if (w.numel() == 0) return {w_b, mean, alpha, width.to(stat_dtype(w)).reshape({}).clone()};
  const at::Tensor wc = w.contiguous();
  at::Tensor b_step = measure_and_push(wc, mean, alpha, wc.numel() / wc.size(0), p, q_values, q_count, width, min_width, nullptr, nullptr, nullptr,
                                       nullptr, nullptr, nullptr);
  return {w_b, mean, alpha, b_step};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> restore_activation_train_cuda(
    const at::Tensor& x, const at::Tensor& p, const at::Tensor& q_values, const at::Tensor& q_count,
    const at::Tensor& width, const at::Tensor& mean_values, const at::Tensor& mean_count,
    const at::Tensor& sigma_values, const at::Tensor& sigma_count, double min_width) {
  check_cuda_input(x, "x");
  check_float_input(x, "x");
  check_ring(q_values, "q_values", q_count, "q_count", x);
  check_ring(mean_values, "mean_values", mean_count, "mean_count", x);
  check_ring(sigma_values, "sigma_values", sigma_count, "sigma_count", x);
  check_width_and_p(width, p, x);
  c10::cuda::CUDAGuard guard(x.device());
  auto [y, mean, sigma, rms] = restore_activation_cuda(x);
  if (x.numel() == 0) return {y, mean, sigma, rms, width.to(stat_dtype(x)).reshape({}).clone()};
  const at::Tensor xc = x.contiguous();
  at::Tensor b_step = measure_and_push(xc, mean, sigma, xc.numel(), p, q_values, q_count, width, min_width, &mean, &mean_values,
                                       &mean_count, &sigma, &sigma_values, &sigma_count);
  return {y, mean, sigma, rms, b_step};
}

}  // namespace
}  // namespace cuda

ERBNN_CUDA_OPS(m) {
  m.impl("restore_weight_train", &cuda::restore_weight_train_cuda);
  m.impl("restore_activation_train", &cuda::restore_activation_train_cuda);
}

}  // namespace erbnn
