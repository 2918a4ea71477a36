// The AVX-512 fused epilogue of the binary convolutions: common/conv_epilogue.h's formula in 16 lanes, shared
// by the XNOR-popcount engine and the int8 engines so that every engine turns the same integer conv into
// bit-identical floats.
#pragma once

#include <immintrin.h>

#include "binary_conv_cpu.h"

#define ERBNN_EPI_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))

namespace erbnn {

// Per pixel of the tile: sum of popc(w_tap) of channel o over the taps out of frame for that pixel.
ERBNN_EPI_AVX512 inline __m512i oob_pop_avx512(const ConvGeom& g, const Tile& t, int64_t o, const Epilogue& e) {
  const int32_t* pop = e.tap_pop + o * g.taps;
  __m512i corr = _mm512_setzero_si512();
  for (size_t i = 0; i < t.part_tap.size(); ++i)
    corr = _mm512_mask_add_epi32(corr, __mmask16(t.part_bad[i]), corr, _mm512_set1_epi32(pop[t.part_tap[i]]));
  return corr;
}

// out = scale[o] * conv + bias[o] + ones[o] * conv(1, W_b), conv the exact zero-padded integer conv of
// channel o for the tile's 16 pixels and corr = oob_pop_avx512(...); then the tail (epilogue_tail);
// stores the `store` lanes at out + at (at = out_offset(...), also the residual's index).
// kChain = false: a caller that knows the epilogue writes floats only (no emit_bits, float_out) compiles
// without the chaining branches in its per-channel path.
template <bool kChain = true>
ERBNN_EPI_AVX512 inline void store_conv_avx512(const Tile& t, int64_t o, __m512i conv, __m512i corr,
                                               const Epilogue& e, __mmask16 store, float* out, int64_t at) {
  __m512 v = _mm512_cvtepi32_ps(conv);
  if (e.scale || e.bias || e.ones) {
    v = _mm512_fmadd_ps(_mm512_set1_ps(e.scale ? e.scale[o] : 1.0f), v, _mm512_set1_ps(e.bias ? e.bias[o] : 0.0f));
    if (e.ones) {
      // ones_full - sum over out-of-frame taps of (2 popc(w_tap) - C)
      const __m512i oob_c = _mm512_loadu_si512(t.oob_c);
      const __m512i oc = _mm512_add_epi32(
          _mm512_sub_epi32(_mm512_set1_epi32(int32_t(e.ones_full[o])), _mm512_slli_epi32(corr, 1)), oob_c);
      v = _mm512_fmadd_ps(_mm512_set1_ps(e.ones[o]), _mm512_cvtepi32_ps(oc), v);
    }
  }
  if (e.residual) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(store, e.residual + at));
  if (e.act) {
    const __m512 u = _mm512_add_ps(v, _mm512_set1_ps(e.act[o]));
    const __mmask16 neg = _mm512_cmp_ps_mask(u, _mm512_setzero_ps(), _CMP_LT_OQ);
    v = _mm512_add_ps(_mm512_mask_mul_ps(u, neg, u, _mm512_set1_ps(e.act[e.O + o])),
                      _mm512_set1_ps(e.act[2 * e.O + o]));
  }
  if (!kChain || e.float_out) _mm512_mask_storeu_ps(out + at, store, v);
  if (kChain && e.emit_bits) {
    t.masks[o] = uint16_t(_mm512_mask_cmp_ps_mask(store, v, _mm512_set1_ps(e.next_shift), _CMP_GE_OQ));
    t.masks[t.nan_at + o] = uint16_t(_mm512_mask_cmp_ps_mask(store, v, v, _CMP_UNORD_Q));
  }
}

}  // namespace erbnn
