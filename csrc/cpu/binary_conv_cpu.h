// XNOR-popcount convolution on packed signs, CPU: geometry, the per-tile im2col buffer, and the
// per-ISA microkernels (binary_conv_kernels.cpp). Layouts (kernels.md):
//   activations P[N, H, W, Cw]  uint64, bit j of word k = channel 64k + j, tail bits 0;
//   weights     Wp[O, kh, kw, Cw] uint64, the same bit order (row o is K = kh*kw*Cw contiguous words).
// A tile is kTilePx consecutive output pixels (row-major oy*OW + ox) of one image and a range of output
// channels. Its im2col buffer is pixel-interleaved, Bt[k][kTilePx] with k = (ky*kw + kx)*Cw + cw, so a
// vector load gives one word for 8 pixels and the weight word is a broadcast: every lane is useful at
// any channel count. Out-of-frame taps hold 0 in Bt; the kernel sums popc(x ^ w) over all taps and the
// epilogue removes the out-of-frame taps exactly:
//   conv = Keff - 2 * (S - sum_{oob taps} popc(w_tap)),   Keff = C * (valid taps of the pixel).
#pragma once

#include <cstdint>
#include <vector>

#include "common/conv_geom.h"

namespace erbnn {

constexpr int kTilePx = 16;  // output pixels per tile (two zmm of 8 x u64)

// Fused epilogue: out = scale[o] * conv + bias[o] + ones[o] * conv(1, W_b)[o, pixel]; nullptr = absent
// (scale 1, bias 0, ones 0). conv(1, W_b) is zero-padding aware: only in-frame taps count.
struct Epilogue {
  const float* scale = nullptr;
  const float* bias = nullptr;
  const float* ones = nullptr;
  const int32_t* tap_pop = nullptr;   // [O, taps] popcount of each weight tap (over Cw words)
  const int64_t* ones_full = nullptr; // [O] conv(1, W_b) with every tap in frame
};

// One tile's im2col buffer and the bookkeeping of its out-of-frame taps.
struct Tile {
  int64_t n = 0, p0 = 0;  // image, first output pixel
  int np = 0;             // valid pixels (<= kTilePx)
  std::vector<uint64_t> storage;  // holds buf, 64-byte aligned for the vector loads
  uint64_t* buf = nullptr;        // [K][kTilePx]
  int32_t nvalid[kTilePx];        // in-frame taps per pixel
  int32_t keff[kTilePx];          // C * nvalid: the effective reduction length
  int32_t oob_c[kTilePx];         // C * (taps - nvalid)
  std::vector<int32_t> part_tap;  // taps that are out of frame for some pixel of the tile ...
  std::vector<uint32_t> part_bad; // ... and, per such tap, the bit mask of pixels where it is out of frame
};

// Start of both engines' im2col builders: the input position of tap (0, 0) for each pixel of the tile
// (negative inside the top/left padding) and t.nvalid reset, so the two engines share one geometry.
inline void tile_origins(const ConvGeom& g, Tile& t, int64_t* iy0, int64_t* ix0) {
  for (int j = 0; j < kTilePx; ++j) {
    const int64_t p = t.p0 + j;
    iy0[j] = (p / g.OW) * g.sh - g.ph;
    ix0[j] = (p % g.OW) * g.sw - g.pw;
    t.nvalid[j] = 0;
  }
}

// Fills t.buf, t.nvalid, t.part_* for pixels [p0, p0 + np) of image n.
void build_tile(const ConvGeom& g, const uint64_t* P, Tile& t);

// Computes out[n, o, p0 + j] for o in [o0, o1), j < t.np. out points at the [N, O, OH*OW] float output.
void tile_kernel_scalar(const ConvGeom& g, const Tile& t, const uint64_t* Wp, int64_t o0, int64_t o1,
                        const Epilogue& e, float* out);
void tile_kernel_avx2(const ConvGeom& g, const Tile& t, const uint64_t* Wp, int64_t o0, int64_t o1,
                      const Epilogue& e, float* out);
void tile_kernel_avx512(const ConvGeom& g, const Tile& t, const uint64_t* Wp, int64_t o0, int64_t o1,
                        const Epilogue& e, float* out);

// Scalar epilogue for output channel o given per-pixel popcount sums s[j] (shared by scalar and AVX2).
void epilogue_scalar(const ConvGeom& g, const Tile& t, int64_t o, const int64_t* s, const Epilogue& e,
                     float* out);

}  // namespace erbnn
