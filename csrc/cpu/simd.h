// One kernel body, three CPU code paths. A kernel is written once as plain loops (with `#pragma omp
// simd` where a reduction must be reordered) and run through isa_call(), which inlines it into a
// function compiled for AVX-512, AVX2 or the x86-64 baseline (flatten + target attributes), chosen by
// erbnn::active_cpu_isa(). One build thus runs on any x86-64 and GCC vectorises each copy for its ISA.
#pragma once

#include <cstdint>
#include <cstring>

#include "cpu_isa.h"

namespace erbnn {

#if defined(__x86_64__) && defined(__GNUC__)
#define ERBNN_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq"), flatten))
#define ERBNN_TARGET_AVX2 __attribute__((target("avx2,fma,popcnt"), flatten))
#define ERBNN_FLATTEN __attribute__((flatten))
#define ERBNN_SIMD_X86 1
#else
#define ERBNN_FLATTEN
#endif

namespace simd_detail {
#ifdef ERBNN_SIMD_X86
template <typename F>
ERBNN_TARGET_AVX512 void run_avx512(F& f) { f(); }
template <typename F>
ERBNN_TARGET_AVX2 void run_avx2(F& f) { f(); }
#endif
template <typename F>
ERBNN_FLATTEN void run_baseline(F& f) { f(); }
}  // namespace simd_detail

// Run f() (a lambda holding the loops) compiled for the active ISA. Call it per parallel_for chunk:
// the loops must be inside f, not behind another indirect call, or they are not re-vectorised.
template <typename F>
inline void isa_call(F&& f) {
#ifdef ERBNN_SIMD_X86
  switch (active_cpu_isa()) {
    case CpuIsa::kAvx512: simd_detail::run_avx512(f); return;
    case CpuIsa::kAvx2: simd_detail::run_avx2(f); return;
    default: break;
  }
#endif
  simd_detail::run_baseline(f);
}

// exp(x) for x <= 0 in float32, about 2 ulp, branch-free so that loops calling it vectorise
// (std::exp / std::tanh are library calls that GCC does not vectorise without -ffast-math).
// Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, then a degree-7 Taylor polynomial (error < 1e-8 relative).
inline float exp_nonpos(float x) {
  x = x < -87.0f ? -87.0f : x;                                 // exp(-87) is still a normal float
  const float shifter = 12582912.0f;                           // 1.5 * 2^23: adds round to integer
  const float n = (x * 1.44269504088896341f + shifter) - shifter;
  float r = x - n * 0.693359375f;                              // ln2 split in a short high part
  r = r + n * 2.12194440e-4f;                                  // and the low part (ln2 = hi - lo)
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t e = static_cast<int32_t>(n) + 127;
  const uint32_t bits = static_cast<uint32_t>(e) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// 1 - tanh(z)^2 = 4t / (1 + t)^2 with t = exp(-2|z|): no cancellation for large |z|, vectorises.
inline float sech2(float z) {
  const float a = z < 0.0f ? z : -z;
  const float t = exp_nonpos(2.0f * a);
  const float u = 1.0f + t;
  return 4.0f * t / (u * u);
}

}  // namespace erbnn
