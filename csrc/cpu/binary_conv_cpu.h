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

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/conv_epilogue.h"
#include "common/conv_geom.h"
#include "common/dense_layout.h"

namespace erbnn {

constexpr int kTilePx = 16;  // output pixels per tile (two zmm of 8 x u64)

// Fused epilogue: out = scale[o] * conv + bias[o] + ones[o] * conv(1, W_b)[o, pixel] (common/conv_epilogue.h).
using Epilogue = ConvEpilogue;

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
  uint16_t* masks = nullptr;      // Epilogue::emit_bits: per-channel sign and NaN masks of the tile (BitsOut)
  int64_t nan_at = 0;             // offset of the NaN masks in masks
};

// Offset of out[n, o, p0] in the [N, O, OH*OW] output (and the residual) of tile t.
inline int64_t out_offset(const ConvGeom& g, const Tile& t, int64_t o) { return (t.n * g.O + o) * (g.OH * g.OW) + t.p0; }

// The epilogue's packed output (Epilogue::emit_bits). Per output channel o the epilogue stores two 16-bit
// masks over the tile's pixels: masks[o] (bit j: out >= next_shift at pixel j) and masks[nan_at + o] (bit j:
// out is NaN), plain stores with no dependency between channels; finish() transposes each 64-channel group
// into the 16 pixels' words. A task owns whole words (run_tiles with block 64): it clears its masks before
// its kernel and stores the words to dst [N, OH*OW, Ow] after, so the packed activation is written once,
// with no pass over the floats.
struct BitsOut {
  uint64_t* dst = nullptr;
  int64_t Ow = 0;
  uint16_t* scratch = nullptr;  // [threads][2][64 * Ow] masks, from PyTorch's allocator

  int64_t masks_per_thread() const { return 2 * 64 * Ow; }
  uint16_t* for_thread() const {
    return scratch ? scratch + int64_t(at::get_thread_num()) * masks_per_thread() : nullptr;
  }
  void begin(const Tile& t, int64_t o0, int64_t o1) const {
    if (!t.masks) return;
    const int64_t a = o0 / 64 * 64, b = (o1 + 63) / 64 * 64;
    std::fill(t.masks + a, t.masks + b, uint16_t(0));
    std::fill(t.masks + t.nan_at + a, t.masks + t.nan_at + b, uint16_t(0));
  }
  void finish(const ConvGeom& g, const Tile& t, int64_t o0, int64_t o1) const;
};

// The epilogue's bit for channel o, pixel j of value y (scalar engines).
inline void emit_bit(const Tile& t, const ConvEpilogue& e, int64_t o, int j, float y) {
  t.masks[t.nan_at + o] |= uint16_t(uint32_t(y != y) << j);
  t.masks[o] |= uint16_t(uint32_t(y >= e.next_shift) << j);
}

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

// The work split of every engine: tasks = (pixel tile, chunk of output channels); with too few tiles to
// feed every thread (small images, batch 1) the output channels are split too, in multiples of `block`
// (the engine's register block). make_worker() is called once per thread range and returns an object with
// build(Tile&) (fill the tile whose n / p0 / np are set) and run(const Tile&, o0, o1); consecutive tasks of
// one tile share its build.
template <typename MakeWorker>
void run_tiles(const ConvGeom& g, int64_t block, const MakeWorker& make_worker) {
  const int64_t ohw = g.OH * g.OW, nblk = (ohw + kTilePx - 1) / kTilePx, tiles = g.N * nblk;
  const int64_t want = 4 * int64_t(at::get_num_threads()), oblocks = (g.O + block - 1) / block;
  int64_t nch = 1;
  if (tiles < want) nch = std::min<int64_t>(oblocks, (want + tiles - 1) / tiles);
  const int64_t ochunk = (oblocks + nch - 1) / nch * block;
  nch = (g.O + ochunk - 1) / ochunk;
  at::parallel_for(0, tiles * nch, 1, [&](int64_t lo, int64_t hi) {
    auto worker = make_worker();
    // The thread's tile, kept across calls: its buffers (im2col words, partial-tap lists) keep their
    // capacity, so after a shape's first call none is allocated per call; every build overwrites what the
    // kernels then read, as it does for the next tile of the same task.
    thread_local Tile t;
    int64_t built = -1;
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t tile = task / nch, ch = task % nch;
      if (tile != built) {
        t.n = tile / nblk;
        t.p0 = (tile % nblk) * kTilePx;
        t.np = int(std::min<int64_t>(kTilePx, ohw - t.p0));
        worker.build(t);
        built = tile;
      }
      worker.run(t, ch * ochunk, std::min(g.O, (ch + 1) * ochunk));
    }
  });
}

// The full-reduction ("dense") layout for C < 64 (common/dense_layout.h): 3*3*16 = 144 bits in 3 words,
// not 9. The kernels and the epilogue are unchanged: they sum popc(x ^ w) over K = Kd words, and the bits
// past taps*C are 0 on both sides. 0 where the layout saves nothing (C >= 64, or 1x1).
inline int64_t dense_words(const ConvGeom& g) { return dense_word_count(g.C, g.Cw, g.taps, 64); }

// dense_word for a tile's 16 pixels at once: tap t of lane j at src[t * stride + j], dense word w of lane j
// to dst[w * stride + j]. dst may be src: dense word w only reads taps >= w.
template <int LANES>
void compress_dense(int64_t C, int64_t taps, int64_t Kd, const uint64_t* src, uint64_t* dst, int64_t stride) {
  for (int64_t w = 0; w < Kd; ++w) {
    uint64_t acc[LANES] = {};
    const int64_t b0 = w * 64, b1 = std::min(b0 + 64, taps * C);
    for (int64_t t = b0 / C; t * C < b1; ++t) {
      const int64_t off = t * C - b0;
      const uint64_t* s = src + t * stride;
      if (off >= 0) {
        for (int j = 0; j < LANES; ++j) acc[j] |= s[j] << off;
      } else {
        for (int j = 0; j < LANES; ++j) acc[j] |= s[j] >> -off;
      }
    }
    for (int j = 0; j < LANES; ++j) dst[w * stride + j] = acc[j];
  }
}

// Fills t.buf, t.nvalid, t.part_* for pixels [p0, p0 + np) of image n; Kd > 0: t.buf in the dense layout
// (dense_words), Kd words.
void build_tile(const ConvGeom& g, const uint64_t* P, Tile& t, int64_t Kd = 0);

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
