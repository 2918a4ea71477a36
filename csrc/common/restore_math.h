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
