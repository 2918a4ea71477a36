// Blocked 2-D transposes on the CPU: the NCHW <-> NHWC moves of an ER layer's training step
// (_batch_transpose in transpose.cpp, and the NHWC activation backward writing dx in NCHW order).
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include <c10/util/BFloat16.h>

#include "cpu_isa.h"

namespace erbnn {

constexpr int64_t kTransposeTile = 16;

#if defined(__x86_64__) && defined(__GNUC__)
#define ERBNN_TRANSPOSE_AVX512 __attribute__((target("avx512f")))

ERBNN_TRANSPOSE_AVX512 inline __m512d transpose_pd(__m512 v) { return _mm512_castps_pd(v); }

// One 16x16 tile of 4-byte elements transposed in registers: o[c] = (r[i] lane c)_i, by the unpack and
// 128-bit-lane shuffle network (r is clobbered).
ERBNN_TRANSPOSE_AVX512 inline void transpose16_net(__m512 r[16], __m512 o[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {  // 32-bit interleave of row pairs
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // 64-bit interleave: each 128-bit lane now holds a 4x4 block
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(transpose_pd(t[i]), transpose_pd(t[i + 2])));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(transpose_pd(t[i]), transpose_pd(t[i + 2])));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(transpose_pd(t[i + 1]), transpose_pd(t[i + 3])));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(transpose_pd(t[i + 1]), transpose_pd(t[i + 3])));
  }
  for (int i = 0; i < 4; ++i) {  // 128-bit lanes: gather the 4x4 blocks of one output row
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 4; ++i) {
    o[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    o[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    o[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
    o[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xdd);
  }
}

// o[c] = (src[r * ls + c])_r for one 16x16 tile, by 16 row loads and transpose16_net.
ERBNN_TRANSPOSE_AVX512 inline void transpose16_regs(const float* src, int64_t ls, __m512 o[16]) {
  __m512 r[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * ls);
  transpose16_net(r, o);
}

// dst[c * ld + r] = src[r * ls + c] for one 16x16 tile.
ERBNN_TRANSPOSE_AVX512 inline void transpose_tile16(const float* src, int64_t ls, float* dst, int64_t ld) {
  __m512 o[16];
  transpose16_regs(src, ls, o);
  for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + i * ld, o[i]);
}

// transpose_tile16 from bfloat16 rows (bit patterns) into float32: each value widened exactly (its bits
// shifted into the float's high half) as it is loaded.
ERBNN_TRANSPOSE_AVX512 inline void transpose_tile16_bf16(const uint16_t* src, int64_t ls, float* dst, int64_t ld) {
  __m512 r[16], o[16];
  for (int i = 0; i < 16; ++i)
    r[i] = _mm512_castsi512_ps(_mm512_slli_epi32(
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i * ls))), 16));
  transpose16_net(r, o);
  for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + i * ld, o[i]);
}

// transpose_tile16 of 2-byte elements (bit patterns): each row widened to 32-bit lanes as it is loaded,
// transposed by the same network, narrowed as it is stored.
ERBNN_TRANSPOSE_AVX512 inline void transpose_tile16_w16(const uint16_t* src, int64_t ls, uint16_t* dst, int64_t ld) {
  __m512 r[16], o[16];
  for (int i = 0; i < 16; ++i)
    r[i] = _mm512_castsi512_ps(
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i * ls))));
  transpose16_net(r, o);
  for (int i = 0; i < 16; ++i)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i * ld), _mm512_cvtepi32_epi16(_mm512_castps_si512(o[i])));
}
#endif

#if defined(__x86_64__) && defined(__GNUC__)
// The AVX-512 part of transpose_block: whole 16-row bands by tile (on the elements' bit patterns, TS / TD),
// each band's last columns element by element; returns how many rows it did.
template <typename T, typename D, typename TS, typename TD>
int64_t transpose_bands(const T* src, int64_t ls, D* dst, int64_t ld, int64_t rows, int64_t cols,
                        void (*tile)(const TS*, int64_t, TD*, int64_t)) {
  constexpr int64_t K = kTransposeTile;
  const auto* s = reinterpret_cast<const TS*>(src);
  auto* d = reinterpret_cast<TD*>(dst);
  int64_t r0 = 0;
  for (; r0 + K <= rows; r0 += K) {
    int64_t c = 0;
    for (; c + K <= cols; c += K) tile(s + r0 * ls + c, ls, d + c * ld + r0, ld);
    for (; c < cols; ++c)
      for (int64_t i = 0; i < K; ++i) dst[c * ld + r0 + i] = static_cast<D>(src[(r0 + i) * ls + c]);
  }
  return r0;
}
#endif

// dst[c * ld + r] = src[r * ls + c] for r < rows, c < cols, converted to D: 16x16 register tiles for 4- and
// 2-byte types and for bfloat16 into float32 on AVX-512, element loops blocked by 16 columns otherwise and
// for the tails.
template <typename T, typename D>
void transpose_block(const T* src, int64_t ls, D* dst, int64_t ld, int64_t rows, int64_t cols) {
  constexpr int64_t K = kTransposeTile;
  int64_t r0 = 0;
#if defined(__x86_64__) && defined(__GNUC__)
  if (active_cpu_isa() == CpuIsa::kAvx512) {
    if constexpr (std::is_same_v<T, c10::BFloat16> && std::is_same_v<D, float>)
      r0 = transpose_bands(src, ls, dst, ld, rows, cols, &transpose_tile16_bf16);
    else if constexpr (sizeof(T) == 2 && std::is_same_v<T, D>)
      r0 = transpose_bands(src, ls, dst, ld, rows, cols, &transpose_tile16_w16);
    else if constexpr (sizeof(T) == 4 && std::is_same_v<T, D>)
      r0 = transpose_bands(src, ls, dst, ld, rows, cols, &transpose_tile16);
  }
#endif
  for (int64_t c0 = 0; c0 < cols; c0 += K) {
    const int64_t c1 = std::min(c0 + K, cols);
    for (int64_t r = r0; r < rows; ++r)
      for (int64_t c = c0; c < c1; ++c) dst[c * ld + r] = static_cast<D>(src[r * ls + c]);
  }
}

}  // namespace erbnn
