// approx_sign forward (sign) and backward (tanh surrogate), CPU.
#include <torch/library.h>

#include <atomic>

#include "common/restore_math.h"
#include "cpu_utils.h"
#include "restore_cpu.h"
#include "simd.h"

namespace erbnn {
namespace {

// y = sign(x) of x[0, n); false when x holds NaN. The sign is taken in float64 for float64 input: a
// cast to float would turn -1e-300 into -0.0 (+1).
template <typename scalar_t>
bool sign_block(const scalar_t* x, scalar_t* y, int64_t n) {
  using stat_t = stat_type<scalar_t>;
  const scalar_t pos(1), neg(-1);
  int nan = 0;
#pragma omp simd reduction(| : nan)
  for (int64_t i = 0; i < n; ++i) {
    const stat_t v = static_cast<stat_t>(x[i]);
    nan |= v != v;
    y[i] = v >= stat_t(0) ? pos : neg;
  }
  return nan == 0;
}

at::Tensor approx_sign_cpu(const at::Tensor& x_in) {
  check_float_input(x_in, "x");
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  ERBNN_DISPATCH_FLOATS(x.scalar_type(), "approx_sign_cpu", [&] {
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    scalar_t* dst = y.mutable_data_ptr<scalar_t>();
    std::atomic<bool> ok{true};
    at::parallel_for(0, x.numel(), kElemGrain, [&](int64_t lo, int64_t hi) {
      bool fine = true;
      isa_call([&] { fine = sign_block(src + lo, dst + lo, hi - lo); });
      if (!fine) ok.store(false, std::memory_order_relaxed);
    });
    TORCH_CHECK_VALUE(ok.load(), "x contains NaN: its sign is undefined");
  });
  return y;
}

at::Tensor approx_sign_backward_cpu(const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& b) {
  check_float_input(x_in, "x");
  check_same_shape(grad_in, "grad", x_in, "x");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor g = grad_in.to(x.scalar_type()).contiguous();
  at::Tensor dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  const double bw = read_width(b);
  ERBNN_DISPATCH_FLOATS(x.scalar_type(), "approx_sign_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t inv_b = acc_t(1) / acc_t(bw), scale = surrogate_scale(acc_t(bw));
    const scalar_t* xs = x.const_data_ptr<scalar_t>();
    const scalar_t* gs = g.const_data_ptr<scalar_t>();
    scalar_t* out = dx.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), kElemGrain, [&](int64_t lo, int64_t hi) {
      isa_call([&] {  // surrogate_cpu: the branch-free float32 sech^2 that vectorises (simd.h)
        for (int64_t i = lo; i < hi; ++i)
          out[i] = static_cast<scalar_t>(acc_t(gs[i]) * surrogate_cpu(acc_t(xs[i]), inv_b, scale));
      });
    });
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(erbnn, CPU, m) {
  m.impl("approx_sign", &approx_sign_cpu);
  m.impl("_approx_sign_backward", &approx_sign_backward_cpu);
}

}  // namespace erbnn
