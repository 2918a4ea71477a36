// Activation restoration (method.md section 2), CUDA. x is viewed as [N, D]. The reductions are
// grid-wide and two-level: a partials kernel (one block per (sample, chunk), block sums in double
// into a buffer from at::empty), then one tiny single-block kernel that combines them and writes the
// statistics (forward) or the two backward coefficients (backward); a final elementwise kernel reads
// those from device memory. Current stream, no host sync, b/mean/sigma read on the device.
//
// Non-finite x: the CPU raises ValueError; here, without a host sync, NaN/Inf propagate into mean,
// sigma, sample_rms and y instead.
#include <torch/library.h>

#include "common/checks.h"
#include "common/restore_math.h"
#include "cuda_utils.cuh"
#include "restore_cuda.cuh"
#include "reduce.cuh"

namespace erbnn {
namespace cuda {
namespace {

constexpr int kRedThreads = 256;
constexpr int64_t kChunk = kRedThreads * 16;  // elements per partials block
constexpr int kCombineThreads = 512;

struct Layout {
  int64_t n, d, per_sample;
  __host__ __device__ int64_t items() const { return n * per_sample; }
};

Layout make_layout(int64_t n, int64_t d) {
  const Layout L{n, d, d == 0 ? 1 : (d + kChunk - 1) / kChunk};
  TORCH_CHECK(L.items() <= INT32_MAX, "x is too large for one grid of partial sums");
  return L;
}

// ------------------------------------------------------------------------------------------ forward
template <typename scalar_t, typename stat_t>
__global__ void __launch_bounds__(kRedThreads) stats_partials_kernel(const scalar_t* __restrict__ x, Layout L,
                                                                     double* __restrict__ part) {
  __shared__ double smem[32];
  const int64_t item = blockIdx.x, s = item / L.per_sample;
  const scalar_t* row = x + s * L.d;
  const int64_t lo = (item % L.per_sample) * kChunk, hi = min(L.d, lo + kChunk);
  const double k = static_cast<double>(static_cast<stat_t>(row[0]));  // shift: the sample's first element
  double s1 = 0.0, s2 = 0.0;
  for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
    const double v = static_cast<double>(static_cast<stat_t>(row[i])) - k;
    s1 += v;
    s2 += v * v;
  }
  s1 = block_sum(s1, smem);
  s2 = block_sum(s2, smem);
  if (threadIdx.x == 0) {
    part[2 * item] = s1;
    part[2 * item + 1] = s2;
  }
}

template <typename scalar_t, typename stat_t>
__global__ void __launch_bounds__(kCombineThreads) stats_combine_kernel(
    const scalar_t* __restrict__ x, Layout L, const double* __restrict__ part, double* __restrict__ ws,
    stat_t* __restrict__ mean, stat_t* __restrict__ sigma, stat_t* __restrict__ rms) {
  __shared__ double smem[32];
  const double D = double(L.d);
  double acc = 0.0;
  for (int64_t s = threadIdx.x; s < L.n; s += blockDim.x) {
    double s1 = 0.0, s2 = 0.0;
    for (int64_t j = 0; j < L.per_sample; ++j) {
      s1 += part[2 * (s * L.per_sample + j)];
      s2 += part[2 * (s * L.per_sample + j) + 1];
    }
    ws[2 * s] = s1;
    ws[2 * s + 1] = s2;
    acc += static_cast<double>(static_cast<stat_t>(x[s * L.d])) + s1 / D;
  }
  const double mu = block_sum(acc, smem) / double(L.n);
  acc = 0.0;
  for (int64_t s = threadIdx.x; s < L.n; s += blockDim.x) {
    const double k = static_cast<double>(static_cast<stat_t>(x[s * L.d]));
    const double r = sqrt(centered_sq_sum(ws[2 * s], ws[2 * s + 1], D, mu - k) / D);
    rms[s] = static_cast<stat_t>(r);
    acc += r;
  }
  const double sig = block_sum(acc, smem) / double(L.n);
  if (threadIdx.x == 0) {
    *mean = static_cast<stat_t>(mu);
    *sigma = static_cast<stat_t>(sig);
  }
}

template <typename scalar_t, typename stat_t>
__global__ void two_values_kernel(const scalar_t* __restrict__ x, const stat_t* __restrict__ mean,
                                  const stat_t* __restrict__ sigma, scalar_t* __restrict__ y, int64_t total) {
  const stat_t mu = *mean, sig = *sigma, sc = clamp_eps(sig);
  const scalar_t y_pos = static_cast<scalar_t>(sig + mu), y_neg = static_cast<scalar_t>(mu - sig);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(blockDim.x) * gridDim.x)
    y[i] = restore_activation_value(static_cast<stat_t>(x[i]), mu, sc, y_pos, y_neg);
}

void check_x(const at::Tensor& x) {
  check_cuda_input(x, "x");
  check_float_input(x, "x");
}

at::Tensor device_stat(const at::Tensor& t, const at::Tensor& like, const char* name, int64_t numel) {
  TORCH_CHECK(t.numel() == numel, name, " must hold ", numel, " values, got ", t.numel());
  return t.to(like.device(), stat_dtype(like)).contiguous();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> restore_activation_cuda(const at::Tensor& x_in) {
  check_x(x_in);
  TORCH_CHECK_VALUE(x_in.dim() >= 1, "x must have a batch dimension, got a ", x_in.dim(), "-D tensor");
  c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const int64_t N = x.size(0), D = N == 0 ? 0 : x.numel() / N;
  const auto opts = x.options().dtype(stat_dtype(x));
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor mean = at::zeros({}, opts), sigma = at::zeros({}, opts), rms = at::zeros({N}, opts);
  if (x.numel() == 0) return {y, mean, sigma, rms};
  const Layout L = make_layout(N, D);
  at::Tensor part = at::empty({2 * L.items()}, x.options().dtype(at::kDouble));
  at::Tensor ws = at::empty({2 * N}, x.options().dtype(at::kDouble));
  const auto stream = at::cuda::getCurrentCUDAStream();
  ERBNN_CUDA_DISPATCH_FLOATS(x.scalar_type(), "restore_activation_cuda", [&] {
    using stat_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    ERBNN_LAUNCH(L.items(), kRedThreads, 0, stream, stats_partials_kernel<scalar_t, stat_t>)(xp, L, part.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    ERBNN_LAUNCH(1, kCombineThreads, 0, stream, stats_combine_kernel<scalar_t, stat_t>)(
        xp, L, part.const_data_ptr<double>(), ws.mutable_data_ptr<double>(), mean.mutable_data_ptr<stat_t>(),
        sigma.mutable_data_ptr<stat_t>(), rms.mutable_data_ptr<stat_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    ERBNN_LAUNCH(grid_for(x.numel()), kThreads, 0, stream, two_values_kernel<scalar_t, stat_t>)(
        xp, mean.const_data_ptr<stat_t>(), sigma.const_data_ptr<stat_t>(), y.mutable_data_ptr<scalar_t>(), x.numel());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {y, mean, sigma, rms};
}

namespace {

// ----------------------------------------------------------------------------------------- backward
constexpr int kSums = 5;  // sum(g*sign(xhat)), sum(gs*xhat), sum(g), sum(gs), sum(xc)

template <typename scalar_t, typename stat_t>
__global__ void __launch_bounds__(kRedThreads) grad_partials_kernel(
    const scalar_t* __restrict__ g, const scalar_t* __restrict__ x, const stat_t* __restrict__ mean,
    const stat_t* __restrict__ sigma, const stat_t* __restrict__ b, Layout L, double* __restrict__ part) {
  __shared__ double smem[32];
  const stat_t mu = *mean, sc = clamp_eps(*sigma), bw = *b, inv_b = stat_t(1) / bw, scale = surrogate_scale(bw);
  const int64_t item = blockIdx.x, s = item / L.per_sample;
  const int64_t base = s * L.d, lo = (item % L.per_sample) * kChunk, hi = min(L.d, lo + kChunk);
  double acc[kSums] = {0, 0, 0, 0, 0};
  for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
    const stat_t xc = static_cast<stat_t>(x[base + i]) - mu, xhat = xc / sc;
    const stat_t gv = static_cast<stat_t>(g[base + i]), gs = gv * surrogate_grad(xhat, inv_b, scale);
    acc[0] += static_cast<double>(xhat >= stat_t(0) ? gv : -gv);
    acc[1] += static_cast<double>(gs * xhat);
    acc[2] += static_cast<double>(gv);
    acc[3] += static_cast<double>(gs);
    acc[4] += static_cast<double>(xc);
  }
#pragma unroll
  for (int k = 0; k < kSums; ++k) {
    const double v = block_sum(acc[k], smem);
    if (threadIdx.x == 0) part[kSums * item + k] = v;
  }
}

template <typename stat_t>
__global__ void __launch_bounds__(kCombineThreads) grad_combine_kernel(const double* __restrict__ part, Layout L,
                                                                       const stat_t* __restrict__ rms,
                                                                       double* __restrict__ coef) {
  __shared__ double smem[32];
  double t[4] = {0, 0, 0, 0}, dsdmu = 0.0;
  for (int64_t s = threadIdx.x; s < L.n; s += blockDim.x) {
    double xc = 0.0;
    for (int64_t j = 0; j < L.per_sample; ++j) {
      const double* p = part + kSums * (s * L.per_sample + j);
      t[0] += p[0], t[1] += p[1], t[2] += p[2], t[3] += p[3];
      xc += p[4];
    }
    dsdmu -= (xc / double(L.d)) / static_cast<double>(clamp_eps(rms[s]));
  }
  for (int k = 0; k < 4; ++k) t[k] = block_sum(t[k], smem);
  dsdmu = block_sum(dsdmu, smem) / double(L.n);
  if (threadIdx.x == 0) {
    const ActivationGradCoef cf = activation_grad_coef(t[0], t[1], t[2], t[3], dsdmu);
    const double nd = double(L.n) * double(L.d);
    coef[0] = cf.g_sigma / nd;
    coef[1] = cf.g_mu / nd;
  }
}

template <typename scalar_t, typename stat_t>
__global__ void grad_write_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                                  const stat_t* __restrict__ mean, const stat_t* __restrict__ sigma,
                                  const stat_t* __restrict__ rms, const stat_t* __restrict__ b,
                                  const double* __restrict__ coef, scalar_t* __restrict__ dx, int64_t d,
                                  int64_t total) {
  const stat_t mu = *mean, sc = clamp_eps(*sigma), bw = *b, inv_b = stat_t(1) / bw, scale = surrogate_scale(bw);
  const stat_t c_sigma = static_cast<stat_t>(coef[0]), c_mu = static_cast<stat_t>(coef[1]);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(blockDim.x) * gridDim.x) {
    const stat_t xc = static_cast<stat_t>(x[i]) - mu;
    const stat_t gs = static_cast<stat_t>(g[i]) * surrogate_grad(xc / sc, inv_b, scale);
    dx[i] = static_cast<scalar_t>(gs + (c_sigma / clamp_eps(rms[i / d])) * xc + c_mu);
  }
}

at::Tensor restore_activation_backward_cuda(const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& mean_in,
                                            const at::Tensor& sigma_in, const at::Tensor& rms_in, const at::Tensor& b) {
  check_x(x_in);
  TORCH_CHECK_VALUE(x_in.dim() >= 1, "x must have a batch dimension, got a ", x_in.dim(), "-D tensor");
  TORCH_CHECK(grad_in.sizes() == x_in.sizes(), "grad_y has shape ", grad_in.sizes(), " but x has shape ", x_in.sizes());
  c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const int64_t N = x.size(0), D = N == 0 ? 0 : x.numel() / N;
  const at::Tensor mean = device_stat(mean_in, x, "mean", 1), sigma = device_stat(sigma_in, x, "sigma", 1);
  const at::Tensor rms = device_stat(rms_in, x, "sample_rms", N), bw = device_stat(b, x, "b", 1);
  at::Tensor dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (x.numel() == 0) return dx.zero_();
  const at::Tensor g = grad_in.to(x.scalar_type()).contiguous();
  const Layout L = make_layout(N, D);
  at::Tensor part = at::empty({kSums * L.items()}, x.options().dtype(at::kDouble));
  at::Tensor coef = at::empty({2}, x.options().dtype(at::kDouble));
  const auto stream = at::cuda::getCurrentCUDAStream();
  ERBNN_CUDA_DISPATCH_FLOATS(x.scalar_type(), "restore_activation_backward_cuda", [&] {
    using stat_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    ERBNN_LAUNCH(L.items(), kRedThreads, 0, stream, grad_partials_kernel<scalar_t, stat_t>)(
        gp, xp, mean.const_data_ptr<stat_t>(), sigma.const_data_ptr<stat_t>(), bw.const_data_ptr<stat_t>(), L,
        part.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    ERBNN_LAUNCH(1, kCombineThreads, 0, stream, grad_combine_kernel<stat_t>)(part.const_data_ptr<double>(), L,
                                                                   rms.const_data_ptr<stat_t>(),
                                                                   coef.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    ERBNN_LAUNCH(grid_for(x.numel()), kThreads, 0, stream, grad_write_kernel<scalar_t, stat_t>)(
        gp, xp, mean.const_data_ptr<stat_t>(), sigma.const_data_ptr<stat_t>(), rms.const_data_ptr<stat_t>(),
        bw.const_data_ptr<stat_t>(), coef.const_data_ptr<double>(), dx.mutable_data_ptr<scalar_t>(), D, x.numel());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dx;
}

// ---------------------------------------------------------------------------------- fixed statistics
at::Tensor restore_activation_fixed_cuda(const at::Tensor& x_in, const at::Tensor& mean_in, const at::Tensor& sigma_in) {
  check_x(x_in);
  c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor mean = device_stat(mean_in, x, "mean", 1), sigma = device_stat(sigma_in, x, "sigma", 1);
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (x.numel() == 0) return y;
  ERBNN_CUDA_DISPATCH_FLOATS(x.scalar_type(), "restore_activation_fixed_cuda", [&] {
    using stat_t = at::opmath_type<scalar_t>;
    ERBNN_LAUNCH(grid_for(x.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream(), two_values_kernel<scalar_t, stat_t>)(
        x.const_data_ptr<scalar_t>(), mean.const_data_ptr<stat_t>(), sigma.const_data_ptr<stat_t>(),
        y.mutable_data_ptr<scalar_t>(), x.numel());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

template <typename scalar_t, typename stat_t>
__global__ void fixed_grad_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                                  const stat_t* __restrict__ mean, const stat_t* __restrict__ sigma,
                                  const stat_t* __restrict__ b, scalar_t* __restrict__ dx, int64_t total) {
  const stat_t mu = *mean, sig = *sigma, sc = clamp_eps(sig), bw = *b;
  const stat_t inv_b = stat_t(1) / bw, scale = surrogate_scale(bw) * (sig / sc);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(blockDim.x) * gridDim.x)
    dx[i] = static_cast<scalar_t>(static_cast<stat_t>(g[i]) *
                                  surrogate_grad((static_cast<stat_t>(x[i]) - mu) / sc, inv_b, scale));
}

at::Tensor restore_activation_fixed_backward_cuda(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                  const at::Tensor& mean_in, const at::Tensor& sigma_in,
                                                  const at::Tensor& b) {
  check_x(x_in);
  TORCH_CHECK(grad_in.sizes() == x_in.sizes(), "grad_y has shape ", grad_in.sizes(), " but x has shape ", x_in.sizes());
  c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor mean = device_stat(mean_in, x, "mean", 1), sigma = device_stat(sigma_in, x, "sigma", 1);
  const at::Tensor bw = device_stat(b, x, "b", 1);
  at::Tensor dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (x.numel() == 0) return dx;
  const at::Tensor g = grad_in.to(x.scalar_type()).contiguous();
  ERBNN_CUDA_DISPATCH_FLOATS(x.scalar_type(), "restore_activation_fixed_backward_cuda", [&] {
    using stat_t = at::opmath_type<scalar_t>;
    ERBNN_LAUNCH(grid_for(x.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream(), fixed_grad_kernel<scalar_t, stat_t>)(
        g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), mean.const_data_ptr<stat_t>(),
        sigma.const_data_ptr<stat_t>(), bw.const_data_ptr<stat_t>(), dx.mutable_data_ptr<scalar_t>(), x.numel());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dx;
}

}  // namespace
}  // namespace cuda

ERBNN_CUDA_OPS(m) {
  m.impl("restore_activation", &cuda::restore_activation_cuda);
  m.impl("_restore_activation_backward", &cuda::restore_activation_backward_cuda);
  m.impl("restore_activation_fixed", &cuda::restore_activation_fixed_cuda);
  m.impl("_restore_activation_fixed_backward", &cuda::restore_activation_fixed_backward_cuda);
}

}  // namespace erbnn
