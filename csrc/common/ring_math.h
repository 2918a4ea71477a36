// The ring-buffer bookkeeping of the training ops (restore_*_train), shared by the CPU and CUDA
// kernels: a float64 ring of R values, a push count, and the width b = max(mean of the filled slots,
// min_width) that module code computed as `values.sum() / count.clamp(1, R)`.
#pragma once

#include <cstdint>

#include "macros.h"

namespace erbnn {

// values[count % R] = v; ++count.
ERBNN_HD void ring_push(double* values, int64_t size, int64_t* count, double v) {
  const int64_t c = *count;
  values[((c % size) + size) % size] = v;
  *count = c + 1;
}

// max(sum(values) / min(max(count, 1), R), min_width), summed in index order.
ERBNN_HD double ring_width(const double* values, int64_t size, int64_t count, double min_width) {
  double s = 0.0;
  for (int64_t i = 0; i < size; ++i) s += values[i];
  const int64_t filled = count < 1 ? 1 : (count < size ? count : size);
  const double m = s / double(filled);
  return (m > min_width || m != m) ? m : min_width;  // a NaN mean stays NaN, as clamp_min keeps it
}

}  // namespace erbnn
