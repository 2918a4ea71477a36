// The int8 engines of the CPU binary convolution (layouts and the exactness argument: int8_conv.h):
// sign -> int8 channels-last conversion, weight unpacking, the per-tile im2col into the AMX B-tile
// layout, the AVX512-VNNI microkernel, and the AMX driver. The fused epilogue is the XNOR engine's
// (conv_epilogue_avx512.h), so every engine yields bit-identical outputs.
#include "int8_conv.h"

#include <ATen/Parallel.h>

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <type_traits>
#include <vector>

#include "conv_epilogue_avx512.h"

#define ERBNN_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma")))

namespace erbnn {
namespace {

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

// The same bytes from packed signs P [N, H, W, Cw] (bit c of a pixel's words: channel c).
at::Tensor quantize_bits(const ConvGeom& g, const at::Tensor& P, const I8Geom& q) {
  const int64_t H = g.H, W = g.W, Cw = g.Cw, Cp4 = q.Cp4;
  at::Tensor out = at::empty({g.N, H, Cp4, W * 4}, P.options().dtype(at::kChar));
  const uint64_t* src = reinterpret_cast<const uint64_t*>(P.const_data_ptr<int64_t>());
  int8_t* dst = out.mutable_data_ptr<int8_t>();
  const int8_t pos = int8_t(1 + q.bias), neg = int8_t(-1 + q.bias);
  at::parallel_for(0, g.N * H, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const uint64_t* row = src + r * W * Cw;
      int8_t* d = dst + r * Cp4 * W * 4;
      for (int64_t c = 0; c < Cp4 * 4; ++c)
        for (int64_t w = 0; w < W; ++w)
          d[((c / 4) * W + w) * 4 + c % 4] =
              c < g.C ? ((row[w * Cw + c / 64] >> (c % 64)) & 1 ? pos : neg) : q.bias;
    }
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
// the epilogue needs (nvalid, part_tap/part_bad, oob_c): the same meaning as build_tile's. Per tap, one
// masked gather moves 4 channels of all 16 pixels (out-of-frame lanes get the pad word); images of
// 2^31 words or more (int32 gather offsets) take the scalar copy.
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
        off[j] = in && gather ? int32_t(iy * row + ix) : 0;
        if (!gather)
          for (int64_t c = 0; c < Cp4; ++c) dst[c * kTilePx + j] = in ? img[iy * row + c * g.W + ix] : q.pad_word;
      }
      if (gather) {
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

ERBNN_EPI_AVX512 void block_amx(const ConvGeom& g, const I8Geom& q, const Tile& t, const uint32_t* At,
                                const int8_t* Wq, int64_t o, const Epilogue& e, float* out) {
  alignas(64) int32_t C[16 * 16];
  (amx_emulated() ? amx_block_16x16_emulated : amx_block_16x16)(Wq + o * q.Kp, q.Kp,
                                                                 reinterpret_cast<const uint8_t*>(At), C);
  const __mmask16 store = __mmask16((1u << t.np) - 1);
  const int64_t n = std::min<int64_t>(16, g.O - o);
  for (int64_t i = 0; i < n; ++i)
    store_conv_avx512(t, o + i, _mm512_load_si512(C + i * 16), oob_pop_avx512(g, t, o + i, e), e, store, out,
                      out_offset(g, t, o + i));
}

}  // namespace

void int8_conv_run(const ConvGeom& g, const at::Tensor& x, double shift, PackedWeights& w, const Epilogue& e,
                   bool amx, float* out, const BitsOut& bits) {
  const I8Geom q = make_i8_geom(g, amx);
  const at::Tensor xq = x.scalar_type() == at::kLong ? quantize_bits(g, x, q) : quantize_x(x, shift, q);
  {
    std::lock_guard<std::mutex> lock(w.mu);
    if (amx && w.wq_amx.empty()) w.wq_amx = unpack_weights(g, q, w.words.data());
    if (!amx && w.wb_vnni.empty()) w.wb_vnni = block_weights(q, unpack_weights(g, q, w.words.data()));
  }
  packed_weights_grew();
  const std::vector<int8_t>& wq = w.wq_amx;
  const std::vector<int32_t>& wb = w.wb_vnni;
  const uint32_t* X = reinterpret_cast<const uint32_t*>(xq.const_data_ptr<int8_t>());

  struct Worker {
    const ConvGeom& g;
    const I8Geom& q;
    const uint32_t* X;
    const std::vector<int8_t>& wq;
    const std::vector<int32_t>& wb;
    const Epilogue& e;
    float* out;
    const BitsOut& bits;
    bool amx, tiles = amx && !amx_emulated();
    std::vector<uint32_t> storage = std::vector<uint32_t>(size_t(q.Kp4 * kTilePx + 16));
    uint32_t* At = reinterpret_cast<uint32_t*>((reinterpret_cast<uintptr_t>(storage.data()) + 63) & ~uintptr_t(63));
    Worker(const ConvGeom& g, const I8Geom& q, const uint32_t* X, const std::vector<int8_t>& wq,
           const std::vector<int32_t>& wb, const Epilogue& e, float* out, const BitsOut& bits, bool amx)
        : g(g), q(q), X(X), wq(wq), wb(wb), e(e), out(out), bits(bits), amx(amx) {
      if (tiles) amx_tiles_configure();
    }
    ~Worker() {
      if (tiles) amx_tiles_release();
    }
    void build(Tile& t) {
      build_tile_i8(g, q, X + t.n * g.H * g.W * q.Cp4, t, At);
      t.masks = bits.for_thread();
      t.nan_at = 64 * bits.Ow;
    }
    void run(const Tile& t, int64_t o0, int64_t o1) {
      bits.begin(t, o0, o1);
      for (int64_t o = o0; o < o1; o += 16) {
        if (amx)
          block_amx(g, q, t, At, wq.data(), o, e, out);
        else
          block_vnni(g, q, t, At, wb.data(), o, e, out);
      }
      bits.finish(g, t, o0, o1);
    }
  };
  run_tiles(g, e.emit_bits ? 64 : 16, [&] { return Worker(g, q, X, wq, wb, e, out, bits, amx); });
}

}  // namespace erbnn
