// Shared by the CPU (C++) and CUDA (nvcc) translation units.
#pragma once

#if defined(__CUDACC__)
#define ERBNN_HD __host__ __device__ __forceinline__
#else
#define ERBNN_HD inline
#endif

namespace erbnn {

// Floor for divisions by alpha (weights) and sigma / per-sample RMS (activations): a constant channel
// has alpha == 0, and dividing by max(alpha, kEps) keeps the restored value 0 (sign +1) and the
// backward finite. method.md section 1 fixes it at 1e-12 for float32; float64 uses the same value.
constexpr double kEps = 1e-12;

}  // namespace erbnn
