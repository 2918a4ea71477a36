// The int8 engines of the CPU binary convolution (layouts and the exactness argument: int8_conv.h):
// sign -> int8 channels-last conversion, weight unpacking, the per-tile im2col into the AMX B-tile
// layout, the AVX512-VNNI microkernel, and the AMX driver around the tile kernel of amx_tiles.h. The
// fused epilogue is the XNOR engine's (conv_epilogue_avx512.h), so every engine yields bit-identical
// outputs.
#include "int8_conv.h"

#include <ATen/Parallel.h>

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <type_traits>
#include <vector>

#include "amx_tiles.h"
#include "conv_epilogue_avx512.h"

#define ERBNN_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma")))

namespace erbnn {
namespace {

// The calling thread's 64-byte aligned im2col tile of at least n dwords, kept across calls (grown when a
// larger layer needs more): no allocation per call.
uint32_t* tile_scratch(size_t n) {
  thread_local std::vector<uint32_t> buf;
  if (buf.size() < n + 16) buf.resize(n + 16);
  return reinterpret_cast<uint32_t*>((reinterpret_cast<uintptr_t>(buf.data()) + 63) & ~uintptr_t(63));
}

struct I8Geom {
  int64_t Cp, Cp4;  // channels padded to a multiple of 4; in 32-bit words
  int64_t Kp, Kp4;  // reduction length padded (to 64 for AMX, 4 for VNNI); in 4-byte rows
  int64_t Op;       // output channels padded to 16
  int8_t bias;      // added to the +-1 activations (1 for VPDPBUSD's unsigned operand, 0 for AMX)
  uint32_t pad_word;  // four out-of-frame activation bytes (= bias)
};

I8Geom make_i8_geom(const ConvGeom& g, bool amx) {
  I8Geom q{};
  q.Cp = (g.C + 3) / 4 * 4;
  q.Cp4 = q.Cp / 4;
  const int64_t k = g.taps * q.Cp, mult = amx ? 64 : 4;
  q.Kp = (k + mult - 1) / mult * mult;
  q.Kp4 = q.Kp / 4;
  q.Op = (g.O + 15) / 16 * 16;
  q.bias = amx ? 0 : 1;
  q.pad_word = uint32_t(uint8_t(q.bias)) * 0x01010101u;
  return q;
}

// Xq is [N * H][Cp4][W] dwords (4 channels of one pixel per dword): a row of an image's channel group is
// contiguous, so the conversion from NCHW stores whole vectors and the im2col gathers dwords.

// float32 row (n, h) with W contiguous: 16 pixels x 4 channels per step, channel i's compare mask blends
// byte i of the 16 dwords.
ERBNN_EPI_AVX512 bool quantize_row_avx512(const float* row, int64_t sc, int64_t C, int64_t Cp4, int64_t W, float shift,
                                          int8_t pos, int8_t neg, int8_t bias, uint32_t* d) {
  const __m512 s = _mm512_set1_ps(shift);
  __mmask16 nan = 0;
  for (int64_t c4 = 0; c4 < Cp4; ++c4)
    for (int64_t w = 0; w < W; w += 16) {
      const int64_t k = std::min<int64_t>(16, W - w);
      const __mmask16 m = k == 16 ? __mmask16(0xFFFF) : __mmask16((1u << k) - 1);
      __m512i v = _mm512_setzero_si512();
      for (int i = 0; i < 4; ++i) {
        const int64_t c = c4 * 4 + i;
        const uint32_t p = uint32_t(uint8_t(pos)) << (8 * i), n = uint32_t(uint8_t(neg)) << (8 * i);
        if (c >= C) {
          v = _mm512_or_si512(v, _mm512_set1_epi32(int32_t(uint32_t(uint8_t(bias)) << (8 * i))));
          continue;
        }
        const __m512 x = _mm512_maskz_loadu_ps(m, row + c * sc + w);
        nan |= _mm512_mask_cmp_ps_mask(m, x, x, _CMP_UNORD_Q);
        const __mmask16 ge = _mm512_mask_cmp_ps_mask(m, x, s, _CMP_GE_OQ);
        v = _mm512_or_si512(v, _mm512_mask_blend_epi32(ge, _mm512_set1_epi32(int32_t(n)), _mm512_set1_epi32(int32_t(p))));
      }
      _mm512_mask_storeu_epi32(d + c4 * W + w, m, v);
    }
  return nan != 0;
}

// sign(x - shift) + bias as bytes in the Xq layout; channel pad bytes = bias (their weights are 0).
template <typename T>
at::Tensor quantize_typed(const at::Tensor& x, T shift, const I8Geom& q) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), Cp4 = q.Cp4;
  const int64_t sn = x.stride(0), sc = x.stride(1), sh = x.stride(2), sw = x.stride(3);
  at::Tensor out = at::empty({N, H, Cp4, W * 4}, x.options().dtype(at::kChar));
  const T* src = x.const_data_ptr<T>();
  int8_t* dst = out.mutable_data_ptr<int8_t>();
  const int8_t pos = int8_t(1 + q.bias), neg = int8_t(-1 + q.bias);
  std::atomic<bool> nan{false};
  at::parallel_for(0, N * H, 1, [&](int64_t lo, int64_t hi) {
    bool bad = false;
    for (int64_t r = lo; r < hi; ++r) {
      const T* row = src + (r / H) * sn + (r % H) * sh;
      int8_t* d = dst + r * Cp4 * W * 4;
      if constexpr (std::is_same_v<T, float>) {
        if (sw == 1) {
          bad |= quantize_row_avx512(row, sc, C, Cp4, W, shift, pos, neg, q.bias, reinterpret_cast<uint32_t*>(d));
          continue;
        }
      }
      for (int64_t c = 0; c < Cp4 * 4; ++c)
        for (int64_t w = 0; w < W; ++w) {
          int8_t b = q.bias;
          if (c < C) {
            const T v = row[c * sc + w * sw];
            bad |= v != v;
            b = v >= shift ? pos : neg;
          }
          d[((c / 4) * W + w) * 4 + c % 4] = b;
        }
    }
    if (bad) nan.store(true);
  });
  TORCH_CHECK_VALUE(!nan.load(), "x contains NaN: its sign is undefined");
  return out;
}

// Packed signs -> Xq for one row of W pixels, 16 pixels at a time: per 64-channel word, the 16 pixels'
// words (a gather at stride Cw) split into their low and high dwords; channel group i of the word is
// nibble i, which a 16-entry table (vpermd) turns into its 4 bytes. lut_last: the table of the last
// group, whose channels past C (bits 0, checked by the caller) are pad bytes.
ERBNN_EPI_AVX512 void quantize_bits_row_avx512(const uint64_t* row, int64_t W, int64_t Cw, int64_t Cp4,
                                               const uint32_t* lut_all, const uint32_t* lut_end, uint32_t* d) {
  const __m512i lut = _mm512_loadu_si512(lut_all), lut_last = _mm512_loadu_si512(lut_end);
  const __m256i idx = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(int32_t(Cw)));
  const __m512i nibble = _mm512_set1_epi32(15);
  for (int64_t w0 = 0; w0 < W; w0 += 16) {
    const int64_t k = std::min<int64_t>(16, W - w0);
    const __mmask16 m = k == 16 ? __mmask16(0xFFFF) : __mmask16((1u << k) - 1);
    for (int64_t cw = 0; cw < Cw; ++cw) {
      const uint64_t* p = row + w0 * Cw + cw;
      // the second 8 pixels' base may lie past the row: it is only formed, every lane masked off
      const auto* p8 = reinterpret_cast<const long long*>(reinterpret_cast<uintptr_t>(p) + uintptr_t(8 * Cw) * 8);
      const __m512i a = _mm512_mask_i32gather_epi64(_mm512_setzero_si512(), __mmask8(m), idx,
                                                    reinterpret_cast<const long long*>(p), 8);
      const __m512i b = _mm512_mask_i32gather_epi64(_mm512_setzero_si512(), __mmask8(m >> 8), idx, p8, 8);
      const __m512i lo =
          _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(a)), _mm512_cvtepi64_epi32(b), 1);
      const __m512i hi = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(_mm512_srli_epi64(a, 32))),
                                            _mm512_cvtepi64_epi32(_mm512_srli_epi64(b, 32)), 1);
      for (int i = 0; i < 16 && cw * 16 + i < Cp4; ++i) {
        const int64_t c4 = cw * 16 + i;
        const __m512i n = _mm512_and_si512(_mm512_srli_epi32(i < 8 ? lo : hi, unsigned(4 * (i % 8))), nibble);
        _mm512_mask_storeu_epi32(d + c4 * W + w0, m, _mm512_permutexvar_epi32(n, c4 == Cp4 - 1 ? lut_last : lut));
      }
    }
  }
}

// The bytes of 4 channels [4 * c4, 4 * c4 + 4) for each nibble of their sign bits (channels >= C: bias).
std::array<uint32_t, 16> nibble_table(int64_t c4, int64_t C, int8_t pos, int8_t neg, int8_t bias) {
  std::array<uint32_t, 16> t{};
  for (uint32_t n = 0; n < 16; ++n)
    for (int b = 0; b < 4; ++b) {
      const int8_t v = 4 * c4 + b < C ? ((n >> b) & 1 ? pos : neg) : bias;
      t[n] |= uint32_t(uint8_t(v)) << (8 * b);
    }
  return t;
}

// The same bytes from packed signs P [N, H, W, Cw] (bit c of a pixel's words: channel c).
at::Tensor quantize_bits(const ConvGeom& g, const at::Tensor& P, const I8Geom& q) {
  const int64_t H = g.H, W = g.W, Cw = g.Cw, Cp4 = q.Cp4;
  at::Tensor out = at::empty({g.N, H, Cp4, W * 4}, P.options().dtype(at::kChar));
  const uint64_t* src = reinterpret_cast<const uint64_t*>(P.const_data_ptr<int64_t>());
  uint32_t* dst = reinterpret_cast<uint32_t*>(out.mutable_data_ptr<int8_t>());
  const int8_t pos = int8_t(1 + q.bias), neg = int8_t(-1 + q.bias);
  const std::array<uint32_t, 16> lut = nibble_table(0, 4, pos, neg, q.bias),
                                 lut_last = nibble_table(Cp4 - 1, g.C, pos, neg, q.bias);
  // AVX-512 only: the int8 engines run on the avx512 path alone (their epilogue is AVX-512), and the
  // gather offsets j * Cw fit int32 (C * taps < 2^31).
  at::parallel_for(0, g.N * H, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r)
      quantize_bits_row_avx512(src + r * W * Cw, W, Cw, Cp4, lut.data(), lut_last.data(), dst + r * Cp4 * W);
  });
  return out;
}

at::Tensor quantize_x(const at::Tensor& x, double shift, const I8Geom& q) {
  if (x.scalar_type() == at::kDouble) return quantize_typed<double>(x, shift, q);
  // float16 / bfloat16 convert to float32 exactly; the comparison runs in float32 (as sign_pack's).
  const at::Tensor xf = x.scalar_type() == at::kFloat ? x : x.to(at::kFloat);
  return quantize_typed<float>(xf, static_cast<float>(shift), q);
}

// One weight tap: 64 channels per step, a packed word is the blend mask of +1 over -1.
ERBNN_EPI_AVX512 void unpack_tap(const uint64_t* bits, int64_t C, int8_t* d) {
  const __m512i pos = _mm512_set1_epi8(1), neg = _mm512_set1_epi8(-1);
  for (int64_t c0 = 0; c0 < C; c0 += 64) {
    const int64_t n = std::min<int64_t>(64, C - c0);
    const __mmask64 lanes = n == 64 ? ~__mmask64(0) : (__mmask64(1) << n) - 1;
    _mm512_mask_storeu_epi8(d + c0, lanes, _mm512_mask_blend_epi8(__mmask64(bits[c0 / 64]), neg, pos));
  }
}

// Wq [Op, Kp]: +-1 from the packed sign bits, 0 in every pad position.
std::vector<int8_t> unpack_weights(const ConvGeom& g, const I8Geom& q, const uint64_t* Wp) {
  std::vector<int8_t> w(size_t(q.Op * q.Kp), 0);
  at::parallel_for(0, g.O, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t o = lo; o < hi; ++o)
      for (int64_t t = 0; t < g.taps; ++t)
        unpack_tap(Wp + (o * g.taps + t) * g.Cw, g.C, w.data() + o * q.Kp + t * q.Cp);
  });
  return w;
}

// im2col of pixels [p0, p0 + np) of image n into At [Kp4][16] words, plus the out-of-frame bookkeeping
// the epilogue needs (nvalid, part_tap/part_bad, oob_c): the same meaning as build_tile's. Per tap and
// 4 channels, one 16-lane vector (out-of-frame lanes get the pad word): at stride 1 the tile's pixels are
// at most 3 runs along output rows (OW >= 8), each reading consecutive input words, so a masked load per
// run; otherwise a masked gather, and for images of 2^31 words or more (int32 gather offsets) the
// scalar copy.
ERBNN_EPI_AVX512 void build_tile_i8(const ConvGeom& g, const I8Geom& q, const uint32_t* img, Tile& t,
                                    uint32_t* At) {
  t.part_tap.clear();
  t.part_bad.clear();
  const int64_t Cp4 = q.Cp4;
  const bool gather = g.H * g.W * Cp4 < (int64_t(1) << 31);
  const int64_t row = Cp4 * g.W;  // words per image row
  int64_t iy0[kTilePx], ix0[kTilePx];
  tile_origins(g, t, iy0, ix0);
  const uint32_t full = (1u << t.np) - 1;
  const __m512i padv = _mm512_set1_epi32(int32_t(q.pad_word));
  int nrun = 0, run0[kTilePx];  // first lane of each run of pixels in one output row
  for (int j = 0; j < t.np && g.sw == 1; ++j)
    if (j == 0 || iy0[j] != iy0[j - 1]) run0[nrun++] = j;
  const bool runs = g.sw == 1 && nrun <= 3;
  for (int64_t ky = 0; ky < g.kh; ++ky)
    for (int64_t kx = 0; kx < g.kw; ++kx) {
      const int64_t tap = ky * g.kw + kx;
      uint32_t* dst = At + tap * Cp4 * kTilePx;
      uint32_t ok = 0;
      alignas(64) int32_t off[kTilePx];
      for (int j = 0; j < kTilePx; ++j) {
        const int64_t iy = iy0[j] + ky * g.dh, ix = ix0[j] + kx * g.dw;
        const bool in = j < t.np && iy >= 0 && iy < g.H && ix >= 0 && ix < g.W;
        ok |= uint32_t(in) << j;
        t.nvalid[j] += in;
        off[j] = in && gather && !runs ? int32_t(iy * row + ix) : 0;
        if (!gather && !runs)
          for (int64_t c = 0; c < Cp4; ++c) dst[c * kTilePx + j] = in ? img[iy * row + c * g.W + ix] : q.pad_word;
      }
      if (runs) {
        // Run r's lane j reads word base[r] + j (+ c * W): lane 0's position extrapolated along the row;
        // only in-frame lanes are loaded (a masked load does not touch the others).
        __mmask16 mask[3];
        int64_t base[3];
        for (int r = 0; r < nrun; ++r) {
          const int j0 = run0[r], j1 = r + 1 < nrun ? run0[r + 1] : t.np;
          mask[r] = __mmask16(ok & (((1u << j1) - 1) & ~((1u << j0) - 1)));
          base[r] = (iy0[j0] + ky * g.dh) * row + ix0[j0] + kx * g.dw - j0;
        }
        for (int64_t c = 0; c < Cp4; ++c) {
          __m512i v = padv;
          for (int r = 0; r < nrun; ++r) {
            if (!mask[r]) continue;
            const uintptr_t at = reinterpret_cast<uintptr_t>(img) + uintptr_t(base[r] + c * g.W) * 4;
            v = _mm512_mask_loadu_epi32(v, mask[r], reinterpret_cast<const void*>(at));
          }
          _mm512_store_si512(dst + c * kTilePx, v);
        }
      } else if (gather) {
        __m512i idx = _mm512_load_si512(off);
        const __m512i step = _mm512_set1_epi32(int32_t(g.W));
        for (int64_t c = 0; c < Cp4; ++c, idx = _mm512_add_epi32(idx, step))
          _mm512_store_si512(dst + c * kTilePx, _mm512_mask_i32gather_epi32(padv, __mmask16(ok), idx, img, 4));
      }
      if (ok != full) {
        t.part_tap.push_back(int32_t(tap));
        t.part_bad.push_back(~ok & ((1u << kTilePx) - 1));
      }
    }
  std::fill(At + g.taps * Cp4 * kTilePx, At + q.Kp4 * kTilePx, q.pad_word);
  for (int j = 0; j < kTilePx; ++j) t.oob_c[j] = int32_t(g.C * (g.taps - t.nvalid[j]));
}

// Wq [Op, Kp] regrouped as [Op / 16][Kp4][16] dwords: the 16 channels' weights of one k4 are one
// 64-byte line, so the kernel broadcasts them from one pointer (embedded broadcasts).
std::vector<int32_t> block_weights(const I8Geom& q, const std::vector<int8_t>& wq) {
  std::vector<int32_t> out(size_t(q.Op * q.Kp4));
  const int32_t* w = reinterpret_cast<const int32_t*>(wq.data());
  at::parallel_for(0, q.Op / 16, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b)
      for (int64_t i = 0; i < 16; ++i)
        for (int64_t k = 0; k < q.Kp4; ++k) out[(b * q.Kp4 + k) * 16 + i] = w[(b * 16 + i) * q.Kp4 + k];
  });
  return out;
}

// 16 output channels [o, o + 16) x the tile's 16 pixels: VPDPBUSD with the weight dword broadcast.
ERBNN_VNNI void block_vnni(const ConvGeom& g, const I8Geom& q, const Tile& t, const uint32_t* At,
                           const int32_t* Wb, int64_t o, const Epilogue& e, float* out) {
  const int32_t* w = Wb + o * q.Kp4;  // block o / 16
  const int64_t Kp4 = q.Kp4;
  __m512i acc[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_si512();
  for (int64_t k = 0; k < Kp4; ++k) {
    const __m512i x = _mm512_load_si512(At + k * kTilePx);
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], x, _mm512_set1_epi32(w[k * 16 + i]));
  }
  const __mmask16 store = __mmask16((1u << t.np) - 1);
  const int64_t n = std::min<int64_t>(16, g.O - o);
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) {
    if (i >= n) break;
    // sum (a + 1) w = conv + sum w (int8_conv.h)
    const __m512i conv = _mm512_sub_epi32(acc[i], _mm512_set1_epi32(int32_t(e.ones_full[o + i])));
    store_conv_avx512(t, o + i, conv, oob_pop_avx512(g, t, o + i, e), e, store, out, out_offset(g, t, o + i));
  }
}

std::atomic<int64_t>& amx_packs() {
  static std::atomic<int64_t> n{0};
  return n;
}

// Wt [Op / 16][Kt][16][64] from Wq [Op, Kp]: the A tile of 16 output channels x 64 k at K step kt is the
// 1 KiB block (o / 16) * Kt + kt.
std::vector<TileRow> tile_weights(const I8Geom& q, const std::vector<int8_t>& wq) {
  const int64_t Kt = q.Kp / 64;
  std::vector<TileRow> out(size_t(q.Op * Kt));
  at::parallel_for(0, q.Op / 16, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b)
      for (int64_t kt = 0; kt < Kt; ++kt)
        for (int64_t r = 0; r < 16; ++r)
          std::memcpy(out[size_t((b * Kt + kt) * 16 + r)].b, wq.data() + (b * 16 + r) * q.Kp + kt * 64, 64);
  });
  amx_packs().fetch_add(1, std::memory_order_relaxed);
  return out;
}

// The epilogue of n output channels [o, o + n) of tile t from their int32 rows C[i][16 pixels].
ERBNN_EPI_AVX512 void amx_epilogue(const ConvGeom& g, const Tile& t, int64_t o, int64_t n, const int32_t* C,
                                   const Epilogue& e, float* out) {
  const __mmask16 store = __mmask16((1u << t.np) - 1);
  for (int64_t i = 0; i < n; ++i)
    store_conv_avx512(t, o + i, _mm512_load_si512(C + i * 16), oob_pop_avx512(g, t, o + i, e), e, store, out,
                      out_offset(g, t, o + i));
}

// The tile state of a thread for one parallel range: configured on entry, released on every exit.
template <class Tiles>
struct TileScope {
  Tiles tiles;
  TileScope() { tiles.load_config(&amx::kTileConfig); }
  ~TileScope() { tiles.release(); }
};

// Pairs of tiles per amx task: the group's im2col (and its int32 results) stays in a 2 MiB L2 while each
// 32-channel block of weights is reused over the whole group (one pair per task reread all the weights
// from L3 per 32 pixels once they outgrew L2, as a 512-channel 3x3 layer's 2.3 MB do). Sized, not
// measured: the development machine has no AMX.
constexpr int64_t kAmxGroupBytes = int64_t(512) << 10, kAmxMaxPairs = 4;

// The amx engine. Tasks: (group of up to kAmxMaxPairs pairs of 16-pixel tiles, chunk of output channels),
// as run_tiles' but on groups; per 32 channels and pair one 2 x 2 register block of amx_tiles.h (the
// edges: 16 channels left, a pair with one tile). The blocks' int32 results wait in a buffer per tile
// until the chunk is done, then each tile goes through the epilogue in turn (the packed-output masks of
// BitsOut hold one tile at a time).
template <class Tiles>
void amx_conv(const ConvGeom& g, const I8Geom& q, const uint32_t* X, const TileRow* Wt, const Epilogue& e,
              float* out, const BitsOut& bits) {
  const int64_t ohw = g.OH * g.OW, nblk = (ohw + kTilePx - 1) / kTilePx, tiles = g.N * nblk;
  const int64_t at_words = q.Kp4 * kTilePx;  // one tile's im2col
  const int64_t gp = std::clamp<int64_t>(kAmxGroupBytes / (2 * 4 * at_words), 1, kAmxMaxPairs);
  const int64_t gt = 2 * gp, groups = (tiles + gt - 1) / gt;  // tiles per group, groups
  const int64_t block = e.emit_bits ? 64 : 32, Kt = q.Kp / 64, a_next = Kt * amx::kTileBytes;
  const int64_t want = 4 * int64_t(at::get_num_threads()), oblocks = (g.O + block - 1) / block;
  int64_t nch = 1;
  if (groups < want) nch = std::min<int64_t>(oblocks, (want + groups - 1) / groups);
  const int64_t ochunk = (oblocks + nch - 1) / nch * block;
  nch = (g.O + ochunk - 1) / ochunk;
  const int8_t* W = Wt->b;
  // Per thread: each tile's im2col and its results [ochunk][16] (+ 16 words to align to 64 bytes).
  const int64_t per_tile = at_words + ochunk * 16, per_thread = gt * per_tile + 16;
  at::Tensor scratch = at::empty({int64_t(at::get_num_threads()), per_thread}, at::kInt);
  at::parallel_for(0, groups * nch, 1, [&](int64_t lo, int64_t hi) {
    TileScope<Tiles> scope;
    int32_t* mine = scratch.mutable_data_ptr<int32_t>() + int64_t(at::get_thread_num()) * per_thread;
    int32_t* base = reinterpret_cast<int32_t*>((reinterpret_cast<uintptr_t>(mine) + 63) & ~uintptr_t(63));
    auto im2col = [&](int64_t i) { return base + i * per_tile; };
    auto results = [&](int64_t i) { return base + i * per_tile + at_words; };
    thread_local Tile t[2 * kAmxMaxPairs];  // kept across calls, as run_tiles' (its partial-tap lists)
    int64_t built = -1, nt = 0;
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t group = task / nch, ch = task % nch;
      if (group != built) {
        nt = std::min(gt, tiles - group * gt);
        for (int64_t i = 0; i < nt; ++i) {
          const int64_t tile = group * gt + i;
          t[i].n = tile / nblk;
          t[i].p0 = (tile % nblk) * kTilePx;
          t[i].np = int(std::min<int64_t>(kTilePx, ohw - t[i].p0));
          build_tile_i8(g, q, X + t[i].n * g.H * g.W * q.Cp4, t[i], reinterpret_cast<uint32_t*>(im2col(i)));
          t[i].masks = bits.for_thread();
          t[i].nan_at = 64 * bits.Ow;
        }
        built = group;
      }
      const int64_t o0 = ch * ochunk, o1 = std::min(g.O, o0 + ochunk);
      for (int64_t o = o0; o < o1; o += 32)
        for (int64_t i = 0; i < nt; i += 2) {
          const int nb = int(std::min<int64_t>(2, nt - i));
          amx::tile_gemm(scope.tiles, o1 - o > 16 ? 2 : 1, nb, W + (o / 16) * a_next, a_next,
                         reinterpret_cast<const int8_t*>(im2col(i)),
                         reinterpret_cast<const int8_t*>(im2col(i + nb - 1)), Kt, results(i) + (o - o0) * 16,
                         results(i + nb - 1) + (o - o0) * 16);
        }
      for (int64_t i = 0; i < nt; ++i) {
        bits.begin(t[i], o0, o1);
        amx_epilogue(g, t[i], o0, o1 - o0, results(i), e, out);
        bits.finish(g, t[i], o0, o1);
      }
    }
  });
}

}  // namespace

int64_t amx_weight_packs() { return amx_packs().load(); }

void int8_conv_run(const ConvGeom& g, const at::Tensor& x, double shift, PackedWeights& w, const Epilogue& e,
                   bool amx, float* out, const BitsOut& bits) {
  const I8Geom q = make_i8_geom(g, amx);
  const at::Tensor xq = x.scalar_type() == at::kLong ? quantize_bits(g, x, q) : quantize_x(x, shift, q);
  {
    std::lock_guard<std::mutex> lock(w.mu);
    if (amx && w.wt_amx.empty()) w.wt_amx = tile_weights(q, unpack_weights(g, q, w.words.data()));
    if (!amx && w.wb_vnni.empty()) w.wb_vnni = block_weights(q, unpack_weights(g, q, w.words.data()));
  }
  packed_weights_grew();
  const uint32_t* X = reinterpret_cast<const uint32_t*>(xq.const_data_ptr<int8_t>());
  if (amx) {
    if (amx_emulated())
      amx_conv<amx::EmulatedTiles>(g, q, X, w.wt_amx.data(), e, out, bits);
    else
      amx_conv<amx::RealTiles>(g, q, X, w.wt_amx.data(), e, out, bits);
    return;
  }
  const std::vector<int32_t>& wb = w.wb_vnni;

  struct Worker {
    const ConvGeom& g;
    const I8Geom& q;
    const uint32_t* X;
    const std::vector<int32_t>& wb;
    const Epilogue& e;
    float* out;
    const BitsOut& bits;
    uint32_t* At = tile_scratch(size_t(q.Kp4 * kTilePx));
    void build(Tile& t) {
      build_tile_i8(g, q, X + t.n * g.H * g.W * q.Cp4, t, At);
      t.masks = bits.for_thread();
      t.nan_at = 64 * bits.Ow;
    }
    void run(const Tile& t, int64_t o0, int64_t o1) {
      bits.begin(t, o0, o1);
      for (int64_t o = o0; o < o1; o += 16) block_vnni(g, q, t, At, wb.data(), o, e, out);
      bits.finish(g, t, o0, o1);
    }
  };
  run_tiles(g, e.emit_bits ? 64 : 16, [&] { return Worker{g, q, X, wb, e, out, bits}; });
}

}  // namespace erbnn
