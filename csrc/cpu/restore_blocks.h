// The per-block loops of the restorations' passes (restore_*.cpp, band_select.h): the standardised values
// and the two-valued outputs. Plain loops: call them inside isa_call.
#pragma once

#include <cstdint>

namespace erbnn {

// Standardised values (x - mu) / sc of x[0, len) into xhat: the division kept (no reciprocal) so that
// they equal the reference's bit for bit.
template <typename scalar_t, typename stat_t>
void standardise_block(const scalar_t* x, stat_t* xhat, int64_t len, stat_t mu, stat_t sc) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) xhat[i] = (static_cast<stat_t>(x[i]) - mu) / sc;
}

// y = (x - mu) / sc >= 0 ? y_pos : y_neg over x[0, len) (the restorations' two-valued outputs); with
// xhat, the standardised values themselves too (for q).
template <typename scalar_t, typename stat_t>
void two_values_block(const scalar_t* x, scalar_t* y, stat_t* xhat, int64_t len, stat_t mu, stat_t sc,
                      scalar_t y_pos, scalar_t y_neg) {
  if (xhat) {
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) {
      const stat_t v = (static_cast<stat_t>(x[i]) - mu) / sc;
      xhat[i] = v;
      y[i] = v >= stat_t(0) ? y_pos : y_neg;
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) y[i] = (static_cast<stat_t>(x[i]) - mu) / sc >= stat_t(0) ? y_pos : y_neg;
  }
}

}  // namespace erbnn
