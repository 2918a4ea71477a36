// Activation restoration with fixed statistics (eval mode: the running mean and sigma), CPU: y =
// restore_activation_value(x) and its backward g * surrogate'((x - mean) / sigma), one pass each
// (method.md section 2).
#include <torch/library.h>

#include <atomic>

#include "cpu_utils.h"
#include "restore_cpu.h"

namespace erbnn {
namespace {

template <typename scalar_t, typename stat_t>
bool write_two_values_checked(const scalar_t* p, scalar_t* y, int64_t len, stat_t mu, stat_t sc, scalar_t y_pos,
                              scalar_t y_neg) {
  int nan = 0;
#pragma omp simd reduction(| : nan)
  for (int64_t i = 0; i < len; ++i) {
    const stat_t v = static_cast<stat_t>(p[i]);
    nan |= v != v;
    y[i] = restore_activation_value(v, mu, sc, y_pos, y_neg);
  }
  return nan == 0;
}

at::Tensor restore_activation_fixed_cpu(const at::Tensor& x_in, const at::Tensor& mean_in, const at::Tensor& sigma_in) {
  check_float_input(x_in, "x");
  const at::Tensor x = x_in.contiguous();
  const auto st = stat_dtype(x);
  const at::Tensor mean = as_stat(mean_in, st, "mean", 1), sigma = as_stat(sigma_in, st, "sigma", 1);
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (x.numel() == 0) return y;
  ERBNN_DISPATCH_FLOATS(x.scalar_type(), "restore_activation_fixed_cpu", [&] {
    using stat_t = stat_type<scalar_t>;
    const stat_t mu = *mean.const_data_ptr<stat_t>(), sig = *sigma.const_data_ptr<stat_t>(), sc = clamp_eps(sig);
    const scalar_t y_pos = static_cast<scalar_t>(sig + mu), y_neg = static_cast<scalar_t>(mu - sig);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    std::atomic<bool> ok{true};
    at::parallel_for(0, x.numel(), kElemGrain, [&](int64_t lo, int64_t hi) {
      bool fine = true;
      isa_call([&] { fine = write_two_values_checked<scalar_t, stat_t>(xp + lo, yp + lo, hi - lo, mu, sc, y_pos, y_neg); });
      if (!fine) ok.store(false, std::memory_order_relaxed);
    });
    TORCH_CHECK_VALUE(ok.load(), "x contains NaN: its restored value is undefined");
  });
  return y;
}

template <typename scalar_t, typename stat_t>
void fixed_grad(const scalar_t* gp, const scalar_t* xp, scalar_t* dx, int64_t len, stat_t mu, stat_t sc,
                stat_t inv_b, stat_t scale) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    const stat_t xhat = (static_cast<stat_t>(xp[i]) - mu) / sc;
    dx[i] = static_cast<scalar_t>(static_cast<stat_t>(gp[i]) * surrogate_cpu(xhat, inv_b, scale));
  }
}

at::Tensor restore_activation_fixed_backward_cpu(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                 const at::Tensor& mean_in, const at::Tensor& sigma_in,
                                                 const at::Tensor& b) {
  check_float_input(x_in, "x");
  check_same_shape(grad_in, "grad_y", x_in, "x");
  const at::Tensor x = x_in.contiguous();
  const auto st = stat_dtype(x);
  const at::Tensor mean = as_stat(mean_in, st, "mean", 1), sigma = as_stat(sigma_in, st, "sigma", 1);
  const double bw = read_width(b);
  at::Tensor dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (x.numel() == 0) return dx;
  const at::Tensor g = grad_in.to(x.scalar_type()).contiguous();
  ERBNN_DISPATCH_FLOATS(x.scalar_type(), "restore_activation_fixed_backward_cpu", [&] {
    using stat_t = stat_type<scalar_t>;
    const stat_t mu = *mean.const_data_ptr<stat_t>(), sig = *sigma.const_data_ptr<stat_t>(), sc = clamp_eps(sig);
    // dy/dx = sigma * surrogate'(xhat) / max(sigma, eps): the ratio folds into the surrogate's height.
    const stat_t inv_b = stat_t(1) / stat_t(bw), scale = surrogate_scale(stat_t(bw)) * (sig / sc);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* dp = dx.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), kElemGrain, [&](int64_t lo, int64_t hi) {
      isa_call([&] { fixed_grad<scalar_t, stat_t>(gp + lo, xp + lo, dp + lo, hi - lo, mu, sc, inv_b, scale); });
    });
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(erbnn, CPU, m) {
  m.impl("restore_activation_fixed", &restore_activation_fixed_cpu);
  m.impl("_restore_activation_fixed_backward", &restore_activation_fixed_backward_cpu);
}

}  // namespace erbnn
