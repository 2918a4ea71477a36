// Tile builder and the XNOR-popcount microkernels of the CPU binary convolution (binary_conv_cpu.h).
// AVX-512: XOR -> VPOPCNTQ -> VPADDQ, register-blocked 8 output channels x 16 pixels (16 zmm
// accumulators), the weight word an embedded broadcast. AVX2: nibble-LUT popcount (vpshufb) with byte
// accumulators flushed by vpsadbw. Portable: __builtin_popcountll.
#include "binary_conv_cpu.h"
#include "conv_epilogue_avx512.h"
#include "cpu_isa.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>

#define ERBNN_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq,fma")))
#define ERBNN_AVX2 __attribute__((target("avx2,fma,popcnt")))

namespace erbnn {

namespace {

void finish_tile(const ConvGeom& g, Tile& t) {
  for (int j = 0; j < kTilePx; ++j) {
    t.keff[j] = int32_t(g.C * t.nvalid[j]);
    t.oob_c[j] = int32_t(g.C * (g.taps - t.nvalid[j]));
  }
}

// All pixels of the tile in one output row: a tap's source pixels are one input row, in frame for a
// contiguous range of j, at stride sw: a branch-free strided copy (a memcpy for Cw = 1, stride 1).
void build_row_tile(const ConvGeom& g, const uint64_t* __restrict img, Tile& t) {
  // Locals: the uint64 stores below may alias int64 fields, which would force reloads in the copy loops.
  const int64_t Cw = g.Cw, oy = t.p0 / g.OW, ox0 = t.p0 % g.OW, sw = g.sw, np = t.np;
  const uint32_t full = (1u << t.np) - 1;
  uint64_t* __restrict dst = t.buf;
  for (int64_t ky = 0; ky < g.kh; ++ky) {
    const int64_t iy = oy * g.sh - g.ph + ky * g.dh;
    for (int64_t kx = 0; kx < g.kw; ++kx, dst += Cw * kTilePx) {
      // ix(j) = ix_first + j * sw in [0, W)  <=>  j in [jlo, jhi)
      const int64_t ix_first = ox0 * g.sw - g.pw + kx * g.dw;
      int64_t jlo = 0, jhi = 0;
      if (iy >= 0 && iy < g.H) {
        jlo = ix_first >= 0 ? 0 : (-ix_first + g.sw - 1) / g.sw;
        jhi = ix_first >= g.W ? 0 : std::min<int64_t>(np, (g.W - 1 - ix_first) / sw + 1);
        jlo = std::min(jlo, jhi);
      }
      std::fill(dst, dst + Cw * kTilePx, uint64_t(0));
      const uint64_t* src = img + (jhi > jlo ? (iy * g.W + ix_first) * Cw : 0);
      if (Cw == 1 && sw == 1) {
        for (int64_t j = jlo; j < jhi; ++j) dst[j] = src[j];
      } else if (Cw == 1) {
        for (int64_t j = jlo; j < jhi; ++j) dst[j] = src[j * sw];
      } else {
        for (int64_t j = jlo; j < jhi; ++j)
          for (int64_t cw = 0; cw < Cw; ++cw) dst[cw * kTilePx + j] = src[j * sw * Cw + cw];
      }
      for (int64_t j = jlo; j < jhi; ++j) ++t.nvalid[j];
      const uint32_t ok = uint32_t(((uint64_t(1) << jhi) - 1) & ~((uint64_t(1) << jlo) - 1));
      if (ok != full) {
        t.part_tap.push_back(int32_t(ky * g.kw + kx));
        t.part_bad.push_back(~ok & ((1u << kTilePx) - 1));
      }
    }
  }
}

// build_row_tile for one word per pixel (Cw == 1) at stride 1, AVX-512: a tap's 16 source words are one
// masked load (out-of-frame lanes 0), its in-frame lanes one masked add to nvalid; with Kd > 0 the taps
// are shifted and ORed straight into the dense words (compress_dense's layout), so the per-tap buffer is
// never written. Small-C layers (ResNet-20's 16 and 32 channels) spend as long here as in the popcounts.
ERBNN_AVX512 void build_row_tile_w1_avx512(const ConvGeom& g, const uint64_t* __restrict img, Tile& t, int64_t Kd) {
  const int64_t oy = t.p0 / g.OW, ox0 = t.p0 % g.OW, np = t.np, C = g.C;
  const uint32_t full = (1u << t.np) - 1;
  const __m512i one = _mm512_set1_epi32(1);
  __m512i nvalid = _mm512_setzero_si512();
  uint64_t* __restrict buf = t.buf;
  if (Kd > 0) std::fill(buf, buf + Kd * kTilePx, uint64_t(0));
  for (int64_t ky = 0; ky < g.kh; ++ky) {
    const int64_t iy = oy * g.sh - g.ph + ky * g.dh;
    for (int64_t kx = 0; kx < g.kw; ++kx) {
      const int64_t tap = ky * g.kw + kx, ix_first = ox0 - g.pw + kx * g.dw;
      int64_t jlo = 0, jhi = 0;
      if (iy >= 0 && iy < g.H) {
        jlo = ix_first >= 0 ? 0 : -ix_first;
        jhi = ix_first >= g.W ? 0 : std::min<int64_t>(np, g.W - ix_first);
        jlo = std::min(jlo, jhi);
      }
      const uint32_t ok = uint32_t(((uint64_t(1) << jhi) - 1) & ~((uint64_t(1) << jlo) - 1));
      // lane j reads img[iy * W + ix_first + j]; masked-off lanes are not read
      const uint64_t* src = img + (ok ? iy * g.W + ix_first : 0);
      const __m512i v0 = _mm512_maskz_loadu_epi64(__mmask8(ok), src);
      const __m512i v1 = _mm512_maskz_loadu_epi64(__mmask8(ok >> 8), src + 8);
      nvalid = _mm512_mask_add_epi32(nvalid, __mmask16(ok), nvalid, one);
      if (ok != full) {
        t.part_tap.push_back(int32_t(tap));
        t.part_bad.push_back(~ok & ((1u << kTilePx) - 1));
      }
      if (Kd == 0) {
        _mm512_store_si512(buf + tap * kTilePx, v0);
        _mm512_store_si512(buf + tap * kTilePx + 8, v1);
        continue;
      }
      // tap bits [tap*C, (tap+1)*C) of the dense bit string: one or two words
      for (int64_t w = tap * C / 64; w * 64 < (tap + 1) * C; ++w) {
        const int64_t off = tap * C - w * 64;
        const __m128i cnt = _mm_cvtsi64_si128(off >= 0 ? off : -off);
        const __m512i a0 = off >= 0 ? _mm512_sll_epi64(v0, cnt) : _mm512_srl_epi64(v0, cnt);
        const __m512i a1 = off >= 0 ? _mm512_sll_epi64(v1, cnt) : _mm512_srl_epi64(v1, cnt);
        uint64_t* d = buf + w * kTilePx;
        _mm512_store_si512(d, _mm512_or_si512(_mm512_load_si512(d), a0));
        _mm512_store_si512(d + 8, _mm512_or_si512(_mm512_load_si512(d + 8), a1));
      }
    }
  }
  _mm512_storeu_si512(t.nvalid, nvalid);
}

}  // namespace

void build_tile(const ConvGeom& g, const uint64_t* P, Tile& t, int64_t Kd) {
  const int64_t Cw = g.Cw;
  t.storage.resize(size_t(g.K) * kTilePx + 8);
  t.buf = reinterpret_cast<uint64_t*>((reinterpret_cast<uintptr_t>(t.storage.data()) + 63) & ~uintptr_t(63));
  t.part_tap.clear();
  t.part_bad.clear();
  const uint64_t* img = P + t.n * g.H * g.W * Cw;
  // A row tile needs no per-pixel origins (tile_origins' 32 divisions cost as much as a small tile's taps).
  if (t.p0 / g.OW == (t.p0 + t.np - 1) / g.OW) {
    if (Cw == 1 && g.sw == 1 && active_cpu_isa() == CpuIsa::kAvx512) {
      build_row_tile_w1_avx512(g, img, t, Kd);
    } else {
      std::fill(t.nvalid, t.nvalid + kTilePx, 0);
      build_row_tile(g, img, t);
      if (Kd > 0) compress_dense<kTilePx>(g.C, g.taps, Kd, t.buf, t.buf, kTilePx);
    }
    return finish_tile(g, t);
  }
  int64_t iy0[kTilePx], ix0[kTilePx];
  tile_origins(g, t, iy0, ix0);
  const uint32_t full = (1u << t.np) - 1;
  uint64_t* dst = t.buf;
  for (int64_t ky = 0; ky < g.kh; ++ky) {
    for (int64_t kx = 0; kx < g.kw; ++kx, dst += Cw * kTilePx) {
      uint32_t ok = 0;
      for (int j = 0; j < kTilePx; ++j) {
        const int64_t iy = iy0[j] + ky * g.dh, ix = ix0[j] + kx * g.dw;
        if (j < t.np && iy >= 0 && iy < g.H && ix >= 0 && ix < g.W) {
          ok |= 1u << j;
          ++t.nvalid[j];
          const uint64_t* src = img + (iy * g.W + ix) * Cw;
          for (int64_t cw = 0; cw < Cw; ++cw) dst[cw * kTilePx + j] = src[cw];
        } else {
          for (int64_t cw = 0; cw < Cw; ++cw) dst[cw * kTilePx + j] = 0;
        }
      }
      if (ok != full) {
        t.part_tap.push_back(int32_t(ky * g.kw + kx));
        t.part_bad.push_back(~ok & ((1u << kTilePx) - 1));
      }
    }
  }
  if (Kd > 0) compress_dense<kTilePx>(g.C, g.taps, Kd, t.buf, t.buf, kTilePx);
  finish_tile(g, t);
}

void epilogue_scalar(const ConvGeom& g, const Tile& t, int64_t o, const int64_t* s, const Epilogue& e,
                     float* out) {
  const int64_t at = out_offset(g, t, o);
  const int32_t* pop = e.tap_pop + o * g.taps;
  const int32_t C = int32_t(g.C), taps = int32_t(g.taps);
  for (int j = 0; j < t.np; ++j) {
    int32_t corr = 0;
    for (size_t i = 0; i < t.part_tap.size(); ++i)
      if ((t.part_bad[i] >> j) & 1u) corr += pop[t.part_tap[i]];
    const int32_t conv = conv_from_mismatches(C, t.nvalid[j], int32_t(s[j]), corr);
    const float v = epilogue_value(e, o, conv, e.ones ? ones_conv_at(e.ones_full[o], corr, C, taps, t.nvalid[j]) : 0);
    const float y = epilogue_tail(e, o, v, e.residual ? e.residual[at + j] : 0.0f);
    if (e.float_out) out[at + j] = y;
    if (e.emit_bits) emit_bit(t, e, o, j, y);
  }
}

namespace {

// Bit j of masks[c] (c < 64) -> bit c of words[j]: 64 channel masks of 16 pixels to 16 pixel words
// (vpmovw2m takes bit 15 of each 16-bit lane: pixel j's bit is shifted there). hi: channels 32-63 in use.
ERBNN_AVX512 void transpose_masks_avx512(const uint16_t* masks, bool hi, uint64_t* words) {
  const __m512i lo_v = _mm512_loadu_si512(masks), hi_v = _mm512_loadu_si512(masks + 32);
#pragma GCC unroll 16
  for (int j = 0; j < kTilePx; ++j) {
    const uint64_t a = uint32_t(_mm512_movepi16_mask(_mm512_slli_epi16(lo_v, 15 - j)));
    const uint64_t b = hi ? uint32_t(_mm512_movepi16_mask(_mm512_slli_epi16(hi_v, 15 - j))) : 0u;
    words[j] = a | (b << 32);
  }
}

// Any bit set in masks[0, n) (n a multiple of 64).
ERBNN_AVX512 bool any_mask_avx512(const uint16_t* masks, int64_t n) {
  __m512i acc = _mm512_setzero_si512();
  for (int64_t i = 0; i < n; i += 32) acc = _mm512_or_si512(acc, _mm512_loadu_si512(masks + i));
  return _mm512_test_epi16_mask(acc, acc) != 0;
}

void transpose_masks_scalar(const uint16_t* masks, uint64_t* words) {
  for (int j = 0; j < kTilePx; ++j) {
    uint64_t w = 0;
    for (int c = 0; c < 64; ++c) w |= uint64_t((masks[c] >> j) & 1u) << c;
    words[j] = w;
  }
}

}  // namespace

void BitsOut::finish(const ConvGeom& g, const Tile& t, int64_t o0, int64_t o1) const {
  if (!t.masks) return;
  const bool avx512 = active_cpu_isa() == CpuIsa::kAvx512;
  const int64_t a = o0 / 64 * 64, b = (o1 + 63) / 64 * 64;
  bool nan = false;
  if (avx512) {
    nan = any_mask_avx512(t.masks + t.nan_at + a, b - a);
  } else {
    for (int64_t o = a; o < b; ++o) nan |= t.masks[t.nan_at + o] != 0;
  }
  TORCH_CHECK_VALUE(!nan, "the binary conv output contains NaN: the next layer's signs (next_shift) are undefined");
  uint64_t* d = dst + (t.n * g.OH * g.OW + t.p0) * Ow;
  alignas(64) uint64_t words[kTilePx];
  for (int64_t k = a / 64; k < b / 64; ++k) {
    if (avx512) {
      transpose_masks_avx512(t.masks + k * 64, g.O - k * 64 > 32, words);
    } else {
      transpose_masks_scalar(t.masks + k * 64, words);
    }
    for (int j = 0; j < t.np; ++j) d[j * Ow + k] = words[j];
  }
}

// ------------------------------------------------------------------------------------------ portable
void tile_kernel_scalar(const ConvGeom& g, const Tile& t, const uint64_t* Wp, int64_t o0, int64_t o1,
                        const Epilogue& e, float* out) {
  const uint64_t* b = t.buf;
  for (int64_t o = o0; o < o1; ++o) {
    int64_t s[kTilePx] = {};
    const uint64_t* w = Wp + o * g.K;
    for (int64_t k = 0; k < g.K; ++k) {
      const uint64_t wv = w[k];
      for (int j = 0; j < kTilePx; ++j) s[j] += __builtin_popcountll(b[k * kTilePx + j] ^ wv);
    }
    epilogue_scalar(g, t, o, s, e, out);
  }
}

// ---------------------------------------------------------------------------------------------- AVX2
namespace {

template <int OB>
ERBNN_AVX2 void block_avx2(const ConvGeom& g, const Tile& t, const uint64_t* Wp, int64_t o,
                           const Epilogue& e, float* out) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                       0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low4 = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
  const uint64_t* b = t.buf;
  const int64_t K = g.K;
  __m256i acc[OB][4];
  for (int i = 0; i < OB; ++i)
    for (int q = 0; q < 4; ++q) acc[i][q] = zero;
  // Byte counters hold at most 8 per word: flush every 31 words, before 255 can overflow.
  for (int64_t kb = 0; kb < K; kb += 31) {
    const int64_t ke = std::min<int64_t>(K, kb + 31);
    __m256i cnt[OB][4];
    for (int i = 0; i < OB; ++i)
      for (int q = 0; q < 4; ++q) cnt[i][q] = zero;
    for (int64_t k = kb; k < ke; ++k) {
      __m256i x[4];
      for (int q = 0; q < 4; ++q) x[q] = _mm256_load_si256(reinterpret_cast<const __m256i*>(b + k * kTilePx + 4 * q));
      for (int i = 0; i < OB; ++i) {
        const __m256i wv = _mm256_set1_epi64x(int64_t(Wp[(o + i) * K + k]));
        for (int q = 0; q < 4; ++q) {
          const __m256i v = _mm256_xor_si256(x[q], wv);
          const __m256i lo = _mm256_and_si256(v, low4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
          cnt[i][q] = _mm256_add_epi8(cnt[i][q], _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo),
                                                                 _mm256_shuffle_epi8(lut, hi)));
        }
      }
    }
    for (int i = 0; i < OB; ++i)
      for (int q = 0; q < 4; ++q) acc[i][q] = _mm256_add_epi64(acc[i][q], _mm256_sad_epu8(cnt[i][q], zero));
  }
  for (int i = 0; i < OB; ++i) {
    alignas(32) int64_t s[kTilePx];
    for (int q = 0; q < 4; ++q) _mm256_store_si256(reinterpret_cast<__m256i*>(s + 4 * q), acc[i][q]);
    epilogue_scalar(g, t, o + i, s, e, out);
  }
}

}  // namespace

void tile_kernel_avx2(const ConvGeom& g, const Tile& t, const uint64_t* Wp, int64_t o0, int64_t o1,
                      const Epilogue& e, float* out) {
  int64_t o = o0;
  for (; o + 2 <= o1; o += 2) block_avx2<2>(g, t, Wp, o, e, out);
  if (o < o1) block_avx2<1>(g, t, Wp, o, e, out);
}

// ------------------------------------------------------------------------------------------- AVX-512
namespace {

// Integer conv and fused epilogue of channel o for the tile's 16 pixels, from the popcount sums of
// pixels 0-7 (a0) and 8-15 (a1) in 64-bit lanes.
template <bool kChain>
ERBNN_AVX512 inline void epilogue_avx512(const ConvGeom& g, const Tile& t, int64_t o, __m512i a0, __m512i a1,
                                         const Epilogue& e, __m512i keff, __mmask16 store, float* out) {
  // low 32 bits of each 64-bit lane of a0 then a1: the 16 sums in pixel order
  const __m512i idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i s = _mm512_permutex2var_epi32(a0, idx, a1);
  const __m512i corr = oob_pop_avx512(g, t, o, e);
  const __m512i conv = _mm512_add_epi32(keff, _mm512_slli_epi32(_mm512_sub_epi32(corr, s), 1));
  store_conv_avx512<kChain>(t, o, conv, corr, e, store, out, out_offset(g, t, o));
}

template <int OB, bool kChain>
ERBNN_AVX512 void block_avx512(const ConvGeom& g, const Tile& t, const uint64_t* Wp, int64_t o,
                               const Epilogue& e, float* out) {
  const uint64_t* b = t.buf;
  const int64_t K = g.K;
  const uint64_t* w = Wp + o * K;
  __m512i a0[OB], a1[OB];
#pragma GCC unroll 16
  for (int i = 0; i < OB; ++i) a0[i] = a1[i] = _mm512_setzero_si512();
  for (int64_t k = 0; k < K; ++k) {
    const __m512i x0 = _mm512_load_si512(b + k * kTilePx), x1 = _mm512_load_si512(b + k * kTilePx + 8);
#pragma GCC unroll 16
    for (int i = 0; i < OB; ++i) {
      const __m512i wv = _mm512_set1_epi64(int64_t(w[i * K + k]));
      a0[i] = _mm512_add_epi64(a0[i], _mm512_popcnt_epi64(_mm512_xor_si512(x0, wv)));
      a1[i] = _mm512_add_epi64(a1[i], _mm512_popcnt_epi64(_mm512_xor_si512(x1, wv)));
    }
  }
  const __m512i keff = _mm512_loadu_si512(t.keff);
  const __mmask16 store = __mmask16((1u << t.np) - 1);
#pragma GCC unroll 16
  for (int i = 0; i < OB; ++i) epilogue_avx512<kChain>(g, t, o + i, a0[i], a1[i], e, keff, store, out);
}

}  // namespace

namespace {

template <bool kChain>
void tile_kernel_avx512_impl(const ConvGeom& g, const Tile& t, const uint64_t* Wp, int64_t o0, int64_t o1,
                             const Epilogue& e, float* out) {
  int64_t o = o0;
  for (; o + 8 <= o1; o += 8) block_avx512<8, kChain>(g, t, Wp, o, e, out);
  switch (o1 - o) {
    case 7: block_avx512<7, kChain>(g, t, Wp, o, e, out); break;
    case 6: block_avx512<6, kChain>(g, t, Wp, o, e, out); break;
    case 5: block_avx512<5, kChain>(g, t, Wp, o, e, out); break;
    case 4: block_avx512<4, kChain>(g, t, Wp, o, e, out); break;
    case 3: block_avx512<3, kChain>(g, t, Wp, o, e, out); break;
    case 2: block_avx512<2, kChain>(g, t, Wp, o, e, out); break;
    case 1: block_avx512<1, kChain>(g, t, Wp, o, e, out); break;
    default: break;
  }
}

}  // namespace

void tile_kernel_avx512(const ConvGeom& g, const Tile& t, const uint64_t* Wp, int64_t o0, int64_t o1,
                        const Epilogue& e, float* out) {
  if (e.emit_bits || !e.float_out) {
    tile_kernel_avx512_impl<true>(g, t, Wp, o0, o1, e, out);
  } else {
    tile_kernel_avx512_impl<false>(g, t, Wp, o0, o1, e, out);
  }
}

}  // namespace erbnn
