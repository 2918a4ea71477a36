// Per-element math of ER-BNN (method.md sections 1-3), shared by CPU and CUDA kernels so that the
// CPU tests exercise the same arithmetic the GPU runs.
#pragma once

#include <cmath>

#include "macros.h"

namespace erbnn {

// sign with the project's convention: +1 for x >= 0 (also -0.0), -1 otherwise.
template <typename T>
ERBNN_HD T sign_pm1(T x) {
  return x >= T(0) ? T(1) : T(-1);
}

// Sign bit of the packed layout: 1 for +1, 0 for -1.
template <typename T>
ERBNN_HD unsigned sign_bit(T x) {
  return x >= T(0) ? 1u : 0u;
}

// Height factor h / b of the tanh surrogate, h = max(b, 1) (method.md section 3).
template <typename T>
ERBNN_HD T surrogate_scale(T b) {
  return (b > T(1) ? b : T(1)) / b;
}

// d sign(x) / dx as ER-BNN's surrogate: (h / b) * (1 - tanh(x / b)^2), with inv_b = 1 / b and
// scale = surrogate_scale(b) computed once per call.
template <typename T>
ERBNN_HD T surrogate_grad(T x, T inv_b, T scale) {
  const T t = tanh(x * inv_b);
  return scale * (T(1) - t * t);
}

// max(v, eps): the divisor used for alpha, sigma and per-sample RMS.
template <typename T>
ERBNN_HD T clamp_eps(T v) {
  return v > T(kEps) ? v : T(kEps);
}

}  // namespace erbnn

namespace erbnn {

// ---- weight restoration (method.md section 1) ----
// dL/dW for one element: (g - mean(g) - What * mean(g * What)) * inv_alpha, inv_alpha = 1 / max(alpha, eps).
template <typename T>
ERBNN_HD T restore_weight_grad(T g, T what, T mean_g, T mean_gw, T inv_alpha) {
  return (g - mean_g - what * mean_gw) * inv_alpha;
}

// ---- activation restoration (method.md section 2) ----
// y = sigma * sign((x - mu) / max(sigma, eps)) + mu takes two values, y_pos = sigma + mu for
// (x - mu) / sigma >= 0 and y_neg = mu - sigma otherwise; the caller computes both once.
template <typename T, typename Y>
ERBNN_HD Y restore_activation_value(T x, T mu, T sigma_clamped, Y y_pos, Y y_neg) {
  return (x - mu) / sigma_clamped >= T(0) ? y_pos : y_neg;
}

// Combined coefficients of the activation backward (reference.restore_activation_backward), from the
// global sums over all N*D elements (xc = x - mu, xhat = xc / max(sigma, eps), gs = g * surrogate'(xhat)):
//   g_sigma = sum(g * sign(xhat)) - sum(gs * xhat)
//   g_mu    = sum(g) - sum(gs) + g_sigma * dsigma_dmu,  dsigma_dmu = -(1/N) sum_n mean_d(xc_n) / r_n
// and then dL/dx = gs + g_sigma * xc / (N * D * r_n) + g_mu / (N * D).
struct ActivationGradCoef {
  double g_sigma;
  double g_mu;
};

ERBNN_HD ActivationGradCoef activation_grad_coef(double sum_g_sign, double sum_gs_xhat, double sum_g,
                                                 double sum_gs, double dsigma_dmu) {
  const double g_sigma = sum_g_sign - sum_gs_xhat;
  return {g_sigma, sum_g - sum_gs + g_sigma * dsigma_dmu};
}

// Sum of (x - mu)^2 over D elements from sums shifted by k (s1 = sum(x - k), s2 = sum((x - k)^2)):
// shifting by a value inside the data keeps the cancellation small. Clamped at 0 against rounding.
ERBNN_HD double centered_sq_sum(double s1, double s2, double d, double mu_minus_k) {
  const double v = s2 - 2.0 * mu_minus_k * s1 + d * mu_minus_k * mu_minus_k;
  return v > 0.0 ? v : 0.0;
}

}  // namespace erbnn
