// The NHWC passes of restore_activation.cpp (the ER training step in NHWC order, erbnn_ext/_nhwc.py): the
// pieces of x [N, C, P] that go through a tile in cache, their packed sign lanes, the streaming write of y
// and the backward's prefetch. Included by restore_activation.cpp only.
#pragma once

#include <ATen/ATen.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cpu_isa.h"
#include "transpose.h"
#include "tuning.h"

namespace erbnn {

// The NHWC passes of the ER step (x in NCHW [N, C, P], y or grad_y in NHWC rows [N, P, C]): pieces of
// up to kRows channel rows x kCols pixels of one sample, which go through a tile in cache and out (or
// in) transposed, so neither side needs a separate transpose pass.
struct NhwcPiece {
  int64_t n, c0, p0, rows, cols;
};
// Pixels per piece: kFwdCols / kBwdCols (tuning.h).

template <int64_t kCols>
struct NhwcPieces {
  static constexpr int64_t kRows = kTransposeTile;
  using Piece = NhwcPiece;
  int64_t N, C, P, cblocks, pchunks;
  NhwcPieces(int64_t n, int64_t c, int64_t p)
      : N(n), C(c), P(p), cblocks((c + kRows - 1) / kRows), pchunks((p + kCols - 1) / kCols) {}
  int64_t items() const { return N * cblocks * pchunks; }
  int64_t per_sample() const { return cblocks * pchunks; }
  Piece piece(int64_t it) const {
    const int64_t n = it / per_sample(), r = it % per_sample(), c0 = (r / pchunks) * kRows, p0 = (r % pchunks) * kCols;
    return {n, c0, p0, std::min(kRows, C - c0), std::min(kCols, P - p0)};
  }
  int64_t nchw(const Piece& pc, int64_t r) const { return (pc.n * C + pc.c0 + r) * P + pc.p0; }  // row r's start
  int64_t nhwc(const Piece& pc) const { return (pc.n * P + pc.p0) * C + pc.c0; }                // the piece's corner
};

// 16 channels' sign bits (y >= mu) of each of n pixels (rows of y at stride C), float32 on AVX-512: one
// masked compare per pixel. lanes: the first pixel's 16-bit lane, `step` lanes per pixel.
__attribute__((target("avx512f"))) inline void pack16_avx512(const float* y, int64_t C, int64_t n, int64_t rows, float mu,
                                                       uint16_t* lanes, int64_t step) {
  const __mmask16 valid = static_cast<__mmask16>((uint32_t(1) << rows) - 1);
  const __m512 vmu = _mm512_set1_ps(mu);
  for (int64_t p = 0; p < n; ++p)
    lanes[p * step] = static_cast<uint16_t>(_mm512_mask_cmp_ps_mask(valid, _mm512_maskz_loadu_ps(valid, y + p * C), vmu,
                                                                    _CMP_GE_OQ));
}

// A piece's 16 channels are the 16-bit lane (c0 % 64) / 16 of each pixel's word c0 / 64 (pieces start at
// multiples of 16 channels, so pieces on other threads write other lanes). out: the piece's first pixel's
// words; returns that pixel's lane of this piece (the next pixel's is words(C) * 4 lanes on).
inline uint16_t* piece_lane(uint64_t* out, const NhwcPiece& pc) {
  return reinterpret_cast<uint16_t*>(out) + (pc.c0 / 64) * 4 + (pc.c0 % 64) / 16;
}

// Zeroes the lanes past the last channel, in the piece holding it. out: as piece_lane's.
inline void zero_tail_lanes(int64_t C, const NhwcPiece& pc, uint64_t* out) {
  const int64_t step = (C + 63) / 64 * 4, after = 3 - (pc.c0 % 64) / 16;  // lanes after this one in its word
  uint16_t* lanes = piece_lane(out, pc);
  if (pc.c0 + pc.rows == C)
    for (int64_t p = 0; p < pc.cols; ++p)
      for (int64_t k = 1; k <= after; ++k) lanes[p * step + k] = 0;
}

// The sign bits (y >= mu, as pack_signs(y - mu)) of one NhwcPieces piece of y's NHWC rows, in the piece's
// lane (piece_lane); the piece holding the last channels also zeroes the lanes past them. out: the
// piece's first pixel's words.
template <typename scalar_t, typename stat_t>
void pack_piece(const scalar_t* y, int64_t C, const NhwcPiece& pc, stat_t mu, uint64_t* out) {
  const int64_t step = (C + 63) / 64 * 4;
  uint16_t* lanes = piece_lane(out, pc);
  zero_tail_lanes(C, pc, out);
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (active_cpu_isa() == CpuIsa::kAvx512) return pack16_avx512(y, C, pc.cols, pc.rows, mu, lanes, step);
  }
  for (int64_t p = 0; p < pc.cols; ++p) {
    uint32_t m = 0;
    for (int64_t r = 0; r < pc.rows; ++r) m |= uint32_t(static_cast<stat_t>(y[p * C + r]) >= mu) << r;
    lanes[p * step] = static_cast<uint16_t>(m);
  }
}

// The NHWC write of one float32 piece of 16 channels on AVX-512: y's pixels from the tile (16 channel rows
// of `cols` pixels) by register transposes and streaming stores, and each pixel's sign bits (y >= mu) from
// the same registers. Streaming, because y is next read by the backward's conv, after the rest of the
// step's traffic: caching it would only evict x, which the backward reads too. Needs C % 16 == 0 and a
// 64-byte aligned y (every pixel's 16 channels one aligned line).
// Only for a y of kStreamBytes or more (tuning.h). y null: the signs only (pack_tile_piece).
__attribute__((target("avx512f"))) inline void stream_piece16_avx512(const float* tile, int64_t cols, float* y, int64_t C,
                                                                float mu, uint16_t* lanes, int64_t step) {
  const __m512 vmu = _mm512_set1_ps(mu);
  int64_t c = 0;
  for (; c + 16 <= cols; c += 16) {
    __m512 o[16];
    transpose16_regs(tile + c, cols, o);
    for (int i = 0; i < 16; ++i) {
      if (y) _mm512_stream_ps(y + (c + i) * C, o[i]);
      if (lanes) lanes[(c + i) * step] = static_cast<uint16_t>(_mm512_cmp_ps_mask(o[i], vmu, _CMP_GE_OQ));
    }
  }
  const __m512i rows = _mm512_mullo_epi32(_mm512_set1_epi32(static_cast<int>(cols)),
                                          _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  for (; c < cols; ++c) {  // tail pixels: one column of the tile each
    const __m512 v = _mm512_i32gather_ps(rows, tile + c, 4);
    if (y) _mm512_stream_ps(y + c * C, v);
    if (lanes) lanes[c * step] = static_cast<uint16_t>(_mm512_cmp_ps_mask(v, vmu, _CMP_GE_OQ));
  }
}

// One piece's NHWC write (and packed signs) by stream_piece16_avx512 where it applies: float32 on
// AVX-512, C % 16 == 0 (so every piece has 16 channels) and an aligned y; false otherwise.
template <typename scalar_t>
bool stream_piece(const scalar_t* tile, const NhwcPiece& pc, scalar_t* y, int64_t C, float mu, uint64_t* bits) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (C % kTransposeTile != 0 || reinterpret_cast<uintptr_t>(y) % 64 != 0 || active_cpu_isa() != CpuIsa::kAvx512)
      return false;
    uint16_t* lanes = nullptr;
    if (bits) {
      zero_tail_lanes(C, pc, bits);
      lanes = piece_lane(bits, pc);
    }
    stream_piece16_avx512(tile, pc.cols, y, C, mu, lanes, (C + 63) / 64 * 4);
    return true;
  }
  return false;
}

// One piece's packed signs (as pack_piece's) straight from its tile (pc.rows channel rows of pc.cols pixels),
// y not written: the lean ER step keeps the signs only. 16 channels on AVX-512: stream_piece16_avx512's
// register transposes, without its stores.
template <typename scalar_t, typename stat_t>
void pack_tile_piece(const scalar_t* tile, const NhwcPiece& pc, int64_t C, stat_t mu, uint64_t* out) {
  const int64_t step = (C + 63) / 64 * 4;
  zero_tail_lanes(C, pc, out);
  uint16_t* lanes = piece_lane(out, pc);
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (pc.rows == kTransposeTile && active_cpu_isa() == CpuIsa::kAvx512)
      return stream_piece16_avx512(tile, pc.cols, nullptr, C, mu, lanes, step);
  }
  for (int64_t p = 0; p < pc.cols; ++p) {
    uint32_t m = 0;
    for (int64_t r = 0; r < pc.rows; ++r) m |= uint32_t(static_cast<stat_t>(tile[r * pc.cols + p]) >= mu) << r;
    lanes[p * step] = static_cast<uint16_t>(m);
  }
}

// Prefetches one NhwcPieces piece of the backward's sums pass (grad_y's rows and x's channel runs) into L1
// while the piece before it is summed: x's runs (one per channel, kBwdCols long) are too short for the
// hardware prefetcher to ramp up (measured with benchmarks.train_step --batch 64, ResNet-20's layer2.0.conv1).
template <typename grad_t, typename scalar_t, typename Pieces>
void prefetch_piece(const grad_t* gp, const scalar_t* xp, const Pieces& np, const NhwcPiece& pc) {
  const auto fetch = [](const void* q) { _mm_prefetch(static_cast<const char*>(q), _MM_HINT_T0); };
  const grad_t* g = gp + np.nhwc(pc);
  if (pc.rows == np.C) {  // grad_y's piece is one contiguous run
    for (int64_t i = 0; i < pc.cols * np.C; i += int64_t(64 / sizeof(grad_t))) fetch(g + i);
  } else {  // each pixel's channels: at most two lines
    for (int64_t p = 0; p < pc.cols; ++p) fetch(g + p * np.C), fetch(g + p * np.C + pc.rows - 1);
  }
  for (int64_t r = 0; r < pc.rows; ++r)
    for (int64_t i = 0; i < pc.cols; i += int64_t(64 / sizeof(scalar_t))) fetch(xp + np.nchw(pc, r) + i);
}

}  // namespace erbnn
