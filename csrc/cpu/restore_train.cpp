// The training ops, CPU: one call per layer side does the restoration, measures the adaptive
// percentile q of the standardised values (method.md section 3) inside the restoration's passes
// (restore_*_with_q_cpu) and updates the layer's state (the q ring and the width b; activations also
// push mean and sigma into their rings).
//   restore_weight_train:     q = two_sided_quantile((w - mean_o) / max(alpha_o, eps), p)
//   restore_activation_train: q = two_sided_quantile((x - mean) / max(sigma, eps), p)
// An empty input changes no state and returns the current width as b_step.
#include <torch/library.h>

#include "common/ring_math.h"
#include "common/train_state.h"
#include "cpu_utils.h"
#include "restore_cpu.h"

namespace erbnn {
namespace {

// A 0-dim CPU tensor's value as double, read directly (item() is a dispatched op).
double value_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kDouble: return *t.const_data_ptr<double>();
    case at::kFloat: return *t.const_data_ptr<float>();
    default: return t.item<double>();
  }
}

double read_p(const at::Tensor& p) {
  const double v = value_of(p);
  TORCH_CHECK_VALUE(v >= 0.0 && v <= 1.0, "p must be in [0, 1], got ", v);
  return v;
}

// b_step: the width as a 0-dim tensor of the statistics dtype of x.
at::Tensor width_step(const at::Tensor& width, const at::Tensor& x) {
  return at::scalar_tensor(*width.const_data_ptr<double>(), x.options().dtype(stat_dtype(x)));
}

// The previous step's q, the weight op's hint for this step's (0: no step yet). Weights move slowly: in
// 20 training steps of resnet20_1w1a on random batches (SGD, lr 1e-3 to 0.1) the weights' q moved by
// more than its band once in 342 layer-steps. The activations' q moved by 5-10% (median) between
// batches and missed its band 87-93% of the time, so the activation op takes no hint: its radix
// select builds the first histogram in the write pass instead.
double last_q(const at::Tensor& q_values, const at::Tensor& q_count) {
  const int64_t c = *q_count.const_data_ptr<int64_t>(), r = q_values.numel();
  return c > 0 ? q_values.const_data_ptr<double>()[(c - 1) % r] : 0.0;
}

// Pushes q, updates the width; returns b_step.
at::Tensor push_q(const at::Tensor& q_values, const at::Tensor& q_count, const at::Tensor& width, double q,
                  double min_width, const at::Tensor& x) {
  double* qv = q_values.mutable_data_ptr<double>();
  int64_t* qc = q_count.mutable_data_ptr<int64_t>();
  ring_push(qv, q_values.numel(), qc, q);
  *width.mutable_data_ptr<double>() = ring_width(qv, q_values.numel(), *qc, min_width);
  return width_step(width, x);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> restore_weight_train_cpu(
    const at::Tensor& w, const at::Tensor& p, const at::Tensor& q_values, const at::Tensor& q_count,
    const at::Tensor& width, double min_width) {
  check_float_input(w, "w");
  check_ring(q_values, "q_values", q_count, "q_count", w);
  check_width_and_p(width, p, w);
  if (w.numel() == 0) {
    auto [w_b, mean, alpha] = restore_weight_cpu(w);
    return {w_b, mean, alpha, width_step(width, w)};
  }
  float q = 0.f;
  auto [w_b, mean, alpha] = restore_weight_with_q_cpu(w, read_p(p), &q, last_q(q_values, q_count));
  return {w_b, mean, alpha, push_q(q_values, q_count, width, q, min_width, w)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> activation_train(
    const at::Tensor& x, const at::Tensor& p, const at::Tensor& q_values, const at::Tensor& q_count,
    const at::Tensor& width, const at::Tensor& mean_values, const at::Tensor& mean_count,
    const at::Tensor& sigma_values, const at::Tensor& sigma_count, double min_width, bool nhwc,
    at::Tensor* bits = nullptr, bool write_y = true) {
  check_float_input(x, "x");
  check_ring(q_values, "q_values", q_count, "q_count", x);
  check_ring(mean_values, "mean_values", mean_count, "mean_count", x);
  check_ring(sigma_values, "sigma_values", sigma_count, "sigma_count", x);
  check_width_and_p(width, p, x);
  if (x.numel() == 0) {
    auto [y, mean, sigma, rms] = restore_activation_with_q_cpu(x, 0.0, nullptr, nhwc, bits, write_y);
    return {y, mean, sigma, rms, width_step(width, x)};
  }
  float q = 0.f;
  auto [y, mean, sigma, rms] = restore_activation_with_q_cpu(x, read_p(p), &q, nhwc, bits, write_y);  // no hint (see last_q)
  ring_push(mean_values.mutable_data_ptr<double>(), mean_values.numel(), mean_count.mutable_data_ptr<int64_t>(),
            value_of(mean));
  ring_push(sigma_values.mutable_data_ptr<double>(), sigma_values.numel(),
            sigma_count.mutable_data_ptr<int64_t>(), value_of(sigma));
  return {y, mean, sigma, rms, push_q(q_values, q_count, width, q, min_width, x)};
}

using TrainOut = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

TrainOut restore_activation_train_cpu(const at::Tensor& x, const at::Tensor& p, const at::Tensor& q_values,
                                      const at::Tensor& q_count, const at::Tensor& width, const at::Tensor& mean_values,
                                      const at::Tensor& mean_count, const at::Tensor& sigma_values,
                                      const at::Tensor& sigma_count, double min_width) {
  return activation_train(x, p, q_values, q_count, width, mean_values, mean_count, sigma_values, sigma_count,
                          min_width, /*nhwc=*/false);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> restore_activation_train_nhwc_cpu(
    const at::Tensor& x, const at::Tensor& p, const at::Tensor& q_values, const at::Tensor& q_count,
    const at::Tensor& width, const at::Tensor& mean_values, const at::Tensor& mean_count,
    const at::Tensor& sigma_values, const at::Tensor& sigma_count, double min_width) {
  at::Tensor bits;
  auto [y, mean, sigma, rms, b] = activation_train(x, p, q_values, q_count, width, mean_values, mean_count,
                                                   sigma_values, sigma_count, min_width, /*nhwc=*/true, &bits);
  return {y, mean, sigma, rms, b, bits};
}

// The same without y: the lean ER step keeps y's signs only.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> restore_activation_train_bits_cpu(
    const at::Tensor& x, const at::Tensor& p, const at::Tensor& q_values, const at::Tensor& q_count,
    const at::Tensor& width, const at::Tensor& mean_values, const at::Tensor& mean_count,
    const at::Tensor& sigma_values, const at::Tensor& sigma_count, double min_width) {
  at::Tensor bits;
  auto [y, mean, sigma, rms, b] = activation_train(x, p, q_values, q_count, width, mean_values, mean_count,
                                                   sigma_values, sigma_count, min_width, /*nhwc=*/true, &bits,
                                                   /*write_y=*/false);
  return {mean, sigma, rms, b, bits};
}

}  // namespace

TORCH_LIBRARY_IMPL(erbnn, CPU, m) {
  m.impl("restore_weight_train", &restore_weight_train_cpu);
  m.impl("restore_activation_train", &restore_activation_train_cpu);
  m.impl("restore_activation_train_nhwc", &restore_activation_train_nhwc_cpu);
  m.impl("restore_activation_train_bits", &restore_activation_train_bits_cpu);
}

}  // namespace erbnn
