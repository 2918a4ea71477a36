// ER-BNN's surrogate derivative (h / b) (1 - tanh(z / b)^2) on 16 float32 lanes, written with AVX-512
// intrinsics for the backward kernels' hot loops: the same formula and polynomial as simd.h's sech2 /
// exp_nonpos, but the rounding to an integer exponent and the scaling by 2^n are one instruction each
// (vrndscaleps, vscalefps) where GCC's vectorisation of the portable code needs several. These loops
// are bound by floating-point throughput on Zen 4/5, so the instruction count is their speed.
#pragma once

#include <immintrin.h>

#include "simd.h"

namespace erbnn {

// exp(x) for x <= 0 (simd.h exp_nonpos: Cody-Waite reduction, degree-7 Taylor polynomial).
ERBNN_TARGET_AVX512 inline __m512 exp_nonpos_avx512(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// scale * sech^2(z * inv_b) = scale * 4t / (1 + t)^2, t = exp(-2 |z inv_b|); two_inv_b = 2 / b and
// four_scale = 4 h / b precomputed.
ERBNN_TARGET_AVX512 inline __m512 surrogate_avx512(__m512 z, __m512 two_inv_b, __m512 four_scale) {
  const __m512 neg2a = _mm512_castsi512_ps(  // -|2 z / b|: the sign bit set
      _mm512_or_si512(_mm512_castps_si512(_mm512_mul_ps(z, two_inv_b)), _mm512_set1_epi32(int(0x80000000u))));
  const __m512 t = exp_nonpos_avx512(neg2a);
  const __m512 u = _mm512_add_ps(_mm512_set1_ps(1.0f), t);
  return _mm512_div_ps(_mm512_mul_ps(four_scale, t), _mm512_mul_ps(u, u));
}

}  // namespace erbnn
