// The integer bookkeeping and fused per-channel epilogue of the binary convolutions, one copy for the CPU
// engines (scalar path; the AVX-512 path of conv_epilogue_avx512.h is this formula in 16 lanes) and the
// CUDA kernels. Kernels sum S = sum over ALL taps of popc(x ^ w) with out-of-frame x words 0, so each
// out-of-frame tap adds popc(w_tap) to S; with corr = the sum of popc(w_tap) over the pixel's
// out-of-frame taps and nvalid its in-frame taps, the zero-padded conv and conv(1, W_b) are exact:
//   conv      = C * nvalid - 2 * (S - corr)
//   ones_conv = ones_full - 2 * corr + C * (taps - nvalid),  ones_full = sum_t (2 popc(w_t) - C).
// The fused tail of a deployed block follows the affine: + residual, then RPReLU (y = PReLU(v + b1) + b2).
#pragma once

#include <cmath>
#include <cstdint>

#include "common/macros.h"

namespace erbnn {

// The per-channel inputs of the epilogue; nullptr = absent (scale 1, bias 0, ones 0).
struct ConvEpilogue {
  const float* scale = nullptr;
  const float* bias = nullptr;
  const float* ones = nullptr;
  const int32_t* tap_pop = nullptr;    // [O, taps] popcount of each weight tap
  const int32_t* ones_full = nullptr;  // [O] conv(1, W_b) with every tap in frame
  const float* residual = nullptr;     // [N, O, OH, OW] like the output: added after the affine
  const float* act = nullptr;          // [3, O]: RPReLU shift_in, slope, shift_out, applied last
  int64_t O = 0;                       // rows of act
  // The next binary layer's input: emit_bits packs sign(out - next_shift) along the channels
  // (the layout of its packing pass) instead of leaving it to re-read the floats; float_out = false skips
  // the float output where nothing else reads it.
  bool emit_bits = false;
  bool float_out = true;
  float next_shift = 0.0f;             // CPU (the CUDA kernels read it on the device)
};

ERBNN_HD int32_t conv_from_mismatches(int32_t C, int32_t nvalid, int32_t s, int32_t corr) {
  return C * nvalid - 2 * (s - corr);
}

ERBNN_HD int32_t ones_conv_at(int32_t ones_full, int32_t corr, int32_t C, int32_t taps, int32_t nvalid) {
  return ones_full - 2 * corr + C * (taps - nvalid);
}

// out = scale[o] * conv + bias[o] + ones[o] * ones_conv, as two fused multiply-adds in float32 (every
// engine and device rounds identically).
ERBNN_HD float epilogue_value(const ConvEpilogue& e, int64_t o, int32_t conv, int32_t ones_conv) {
  float v = float(conv);
  if (e.scale || e.bias || e.ones) {
    v = fmaf(e.scale ? e.scale[o] : 1.0f, v, e.bias ? e.bias[o] : 0.0f);
    if (e.ones) v = fmaf(e.ones[o], float(ones_conv), v);
  }
  return v;
}

// The tail after epilogue_value: v + residual (res: the residual element, read only when e.residual),
// then RPReLU. One float32 add per step, as the eval model's separate ops round.
ERBNN_HD float epilogue_tail(const ConvEpilogue& e, int64_t o, float v, float res) {
  if (e.residual) v += res;
  if (e.act) {
    const float t = v + e.act[o];
    v = (t >= 0.0f ? t : e.act[e.O + o] * t) + e.act[2 * e.O + o];
  }
  return v;
}

ERBNN_HD int32_t word_popc(uint64_t w) {
#if defined(__CUDA_ARCH__)
  return __popcll(w);
#else
  return __builtin_popcountll(w);
#endif
}

// Output channel o's tap_pop row [taps] and ones_full from its packed weights w_o [taps, Cw] (uint32 or
// uint64 words).
template <typename W>
ERBNN_HD void weight_tap_stats(const W* w_o, int64_t taps, int64_t Cw, int64_t C, int32_t* pop_o,
                               int32_t* ones_full_o) {
  int32_t tot = 0;
  for (int64_t t = 0; t < taps; ++t) {
    int32_t c = 0;
    for (int64_t cw = 0; cw < Cw; ++cw) c += word_popc(uint64_t(w_o[t * Cw + cw]));
    pop_o[t] = c;
    tot += 2 * c - int32_t(C);
  }
  *ones_full_o = tot;
}

}  // namespace erbnn
