// Helpers shared by the CPU restoration kernels (restore_weight.cpp, restore_activation.cpp, restore_train.cpp).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>

#include "common/checks.h"
#include "common/restore_math.h"
#include "simd.h"

namespace erbnn {

// The forward restorations; the _with_q forms (q non-null) also measure *q = two_sided_quantile of
// the standardised values at p inside the same passes (the training ops, restore_train.cpp).
std::tuple<at::Tensor, at::Tensor, at::Tensor> restore_weight_cpu(const at::Tensor& w);
std::tuple<at::Tensor, at::Tensor, at::Tensor> restore_weight_with_q_cpu(const at::Tensor& w, double p, float* q);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> restore_activation_cpu(const at::Tensor& x);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> restore_activation_with_q_cpu(const at::Tensor& x,
                                                                                     double p, float* q);
at::Tensor two_sided_quantile_cpu(const at::Tensor& x, double p);

// ER-BNN's surrogate d sign(x)/dx (method.md section 3) with inv_b = 1/b, scale = max(b,1)/b.
// float32 uses the branch-free sech^2 of simd.h so that the loops vectorise; float64 uses tanh.
inline float surrogate_cpu(float x, float inv_b, float scale) { return scale * sech2(x * inv_b); }
inline double surrogate_cpu(double x, double inv_b, double scale) { return surrogate_grad(x, inv_b, scale); }

// The 0-dim statistics tensors (mean, alpha, sigma, ...) as contiguous tensors of the stats dtype.
inline at::Tensor as_stat(const at::Tensor& t, at::ScalarType st, const char* name, int64_t numel) {
  TORCH_CHECK(t.numel() == numel, name, " must hold ", numel, " values, got ", t.numel());
  return t.to(t.device(), st).contiguous();
}

// Work items for the activation kernels: each sample's D elements split into blocks of at most
// kBlock elements, so a batch of one huge sample still runs on all threads.
struct SampleBlocks {
  static constexpr int64_t kBlock = 1 << 14;
  int64_t n, d, per_sample;
  SampleBlocks(int64_t n_, int64_t d_) : n(n_), d(d_), per_sample(std::max<int64_t>(1, (d_ + kBlock - 1) / kBlock)) {}
  int64_t items() const { return n * per_sample; }
  int64_t sample(int64_t item) const { return item / per_sample; }
  int64_t begin(int64_t item) const { return (item % per_sample) * kBlock; }
  int64_t end(int64_t item) const { return std::min(d, begin(item) + kBlock); }
};

}  // namespace erbnn
