// _unpack_restored, CPU: a restored tensor back from its packed signs, in one pass. An ER training step
// that keeps one bit per value for its backward (the lean step, erbnn_ext.functional.ERConv2dStep)
// rebuilds y = mean + sigma * s (and w_b = +-1) here, straight into the layout the conv backward reads:
// NHWC rows [N, P, C], or channels first [N, C, P]. The two values are the float sums the restoration
// wrote (mean + sigma, mean - sigma in the statistics dtype), so the result equals its y bit for bit; in
// another out dtype (a bfloat16 autocast step's conv backward), y.to(dtype) bit for bit.
#include <torch/library.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>

#include "cpu_isa.h"
#include "cpu_utils.h"

#define ERBNN_AVX512_BW __attribute__((target("avx512f,avx512bw,avx512vl")))

namespace erbnn {
namespace {

constexpr int64_t kPix = 16;  // pixels per channels-first block: one 16-lane store per channel

struct Signs {
  const uint8_t* bits;  // [N, P, B] bytes, bit j of byte k = channel 8k + j
  int64_t N, P, B, C;
};

template <typename T>
inline T pick(const uint8_t* row, int64_t c, T lo, T hi) {
  return (row[c >> 3] >> (c & 7)) & 1 ? hi : lo;
}

// Rows [r0, r1) of the NHWC form, any dtype.
template <typename T>
void rows_scalar(const Signs& s, T lo, T hi, T* out, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = s.bits + r * s.B;
    T* o = out + r * s.C;
    for (int64_t c = 0; c < s.C; ++c) o[c] = pick(row, c, lo, hi);
  }
}

// Channels-first blocks [i0, i1) (block = one sample's kPix pixels), any dtype.
template <typename T>
void cf_scalar(const Signs& s, T lo, T hi, T* out, int64_t i0, int64_t i1) {
  const int64_t pblocks = (s.P + kPix - 1) / kPix;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t n = i / pblocks, p0 = (i % pblocks) * kPix, np = std::min(kPix, s.P - p0);
    const uint8_t* rows = s.bits + (n * s.P + p0) * s.B;
    T* o = out + n * s.C * s.P + p0;
    for (int64_t c = 0; c < s.C; ++c)
      for (int64_t p = 0; p < np; ++p) o[c * s.P + p] = pick(rows + p * s.B, c, lo, hi);
  }
}

// The byte offsets of a block's 16 pixel rows (B bytes apart), for pixel_dwords' gather.
ERBNN_AVX512_BW inline __m512i row_offsets(const Signs& s) {
  return _mm512_mullo_epi32(_mm512_set1_epi32(static_cast<int>(s.B)),
                            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
}

// Bytes k..k+3 of each of the block's np pixel rows, one dword per pixel: a masked gather at the rows'
// offsets, or for a row's last bytes copies that never read past them.
ERBNN_AVX512_BW inline __m512i pixel_dwords(const Signs& s, const uint8_t* rows, int64_t k, int64_t np,
                                            __mmask16 keep, __m512i offsets) {
  if (k + 4 <= s.B) return _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), keep, offsets, rows + k, 1);
  alignas(64) uint32_t words[kPix] = {};
  for (int64_t p = 0; p < np; ++p) std::memcpy(&words[p], rows + p * s.B + k, size_t(s.B - k));
  return _mm512_load_si512(words);
}

// 16 values blended from a 16-bit sign mask, the `keep` lanes stored: float32, or a 2-byte dtype's bit
// patterns (which also store 32 at once from a 32-bit mask: kWide).
struct F32Pixels {
  static constexpr bool kWide = false;
  __m512 lo, hi;
  ERBNN_AVX512_BW explicit F32Pixels(float l, float h) : lo(_mm512_set1_ps(l)), hi(_mm512_set1_ps(h)) {}
  ERBNN_AVX512_BW void store(float* at, __mmask16 keep, __mmask16 m) const {
    _mm512_mask_storeu_ps(at, keep, _mm512_mask_blend_ps(m, lo, hi));
  }
};
struct W16Pixels {
  static constexpr bool kWide = true;
  __m512i lo, hi;
  ERBNN_AVX512_BW explicit W16Pixels(uint16_t l, uint16_t h)
      : lo(_mm512_set1_epi16(static_cast<short>(l))), hi(_mm512_set1_epi16(static_cast<short>(h))) {}
  ERBNN_AVX512_BW void store(uint16_t* at, __mmask16 keep, __mmask16 m) const {
    _mm256_mask_storeu_epi16(at, keep,
                             _mm256_mask_blend_epi16(m, _mm512_castsi512_si256(lo), _mm512_castsi512_si256(hi)));
  }
  ERBNN_AVX512_BW void store_wide(uint16_t* at, __mmask32 m) const {
    _mm512_storeu_si512(at, _mm512_mask_blend_epi16(m, lo, hi));
  }
};

// Rows [r0, r1) of the NHWC form on AVX-512: a row's 16 channels are two bytes, the blend mask of one
// store (32 channels, four bytes, where the dtype has kWide).
template <typename Pixels, typename T>
ERBNN_AVX512_BW void rows_avx512(const Signs& s, T lo, T hi, T* out, int64_t r0, int64_t r1) {
  const Pixels px(lo, hi);
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = s.bits + r * s.B;
    T* o = out + r * s.C;
    int64_t c = 0;
    if constexpr (Pixels::kWide) {
      for (; c + 32 <= s.C; c += 32) {
        uint32_t m;
        std::memcpy(&m, row + (c >> 3), 4);
        px.store_wide(o + c, m);
      }
    }
    for (; c + 16 <= s.C; c += 16) {
      uint16_t m;
      std::memcpy(&m, row + (c >> 3), 2);
      px.store(o + c, 0xFFFF, m);
    }
    if (c < s.C) {  // fewer than 16 channels left: one or two bytes (never read past the row's last byte)
      const int64_t n = s.C - c;
      uint32_t m = row[c >> 3];
      if (n > 8) m |= uint32_t(row[(c >> 3) + 1]) << 8;
      px.store(o + c, static_cast<__mmask16>((uint32_t(1) << n) - 1), static_cast<__mmask16>(m));
    }
  }
}

// Channels-first blocks on AVX-512: 32 channels of the block's 16 pixels are one dword per pixel
// (pixel_dwords), and channel c's 16 pixels then one test-mask and one blended store.
template <typename Pixels, typename T>
ERBNN_AVX512_BW void cf_avx512(const Signs& s, T lo, T hi, T* out, int64_t i0, int64_t i1) {
  const Pixels px(lo, hi);
  const int64_t pblocks = (s.P + kPix - 1) / kPix, nbytes = (s.C + 7) / 8;
  const __m512i offsets = row_offsets(s);
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t n = i / pblocks, p0 = (i % pblocks) * kPix, np = std::min(kPix, s.P - p0);
    const __mmask16 keep = static_cast<__mmask16>((uint32_t(1) << np) - 1);
    const uint8_t* rows = s.bits + (n * s.P + p0) * s.B;
    T* o = out + n * s.C * s.P + p0;
    for (int64_t k = 0; k < nbytes; k += 4) {
      const __m512i v = pixel_dwords(s, rows, k, np, keep, offsets);
      const int64_t cend = std::min<int64_t>(32, s.C - 8 * k);
      for (int64_t j = 0; j < cend; ++j)
        px.store(o + (8 * k + j) * s.P, keep,
                 _mm512_test_epi32_mask(v, _mm512_set1_epi32(static_cast<int>(uint32_t(1) << j))));
    }
  }
}

template <typename T>
uint16_t bits16(T v) {
  uint16_t b;
  std::memcpy(&b, &v, 2);
  return b;
}

// One parallel pass writing out (float32 on AVX-512 where the ISA allows, else the scalar loops).
template <typename T>
void unpack(const Signs& s, T lo, T hi, T* out, bool channels_first) {
  constexpr bool kW16 = sizeof(T) == 2;
  const bool avx512 = (std::is_same_v<T, float> || kW16) && active_cpu_isa() == CpuIsa::kAvx512;
  if (channels_first) {
    // the gather's int32 byte offsets: 15 rows of B bytes
    const bool gather = avx512 && s.B <= (int64_t(1) << 31) / kPix;
    const int64_t items = s.N * ((s.P + kPix - 1) / kPix);
    at::parallel_for(0, items, std::max<int64_t>(1, kElemGrain / (kPix * s.C)), [&](int64_t a, int64_t b) {
      if constexpr (std::is_same_v<T, float>) {
        if (gather) return cf_avx512<F32Pixels>(s, lo, hi, out, a, b);
      } else if constexpr (kW16) {
        if (gather) return cf_avx512<W16Pixels>(s, bits16(lo), bits16(hi), reinterpret_cast<uint16_t*>(out), a, b);
      }
      cf_scalar<T>(s, lo, hi, out, a, b);
    });
  } else {
    at::parallel_for(0, s.N * s.P, std::max<int64_t>(1, kElemGrain / s.C), [&](int64_t a, int64_t b) {
      if constexpr (std::is_same_v<T, float>) {
        if (avx512) return rows_avx512<F32Pixels>(s, lo, hi, out, a, b);
      } else if constexpr (kW16) {
        if (avx512) return rows_avx512<W16Pixels>(s, bits16(lo), bits16(hi), reinterpret_cast<uint16_t*>(out), a, b);
      }
      rows_scalar<T>(s, lo, hi, out, a, b);
    });
  }
}

at::Tensor unpack_restored_cpu(const at::Tensor& bits_in, int64_t channels, const at::Tensor& mean,
                               const at::Tensor& sigma, bool channels_first, std::optional<at::ScalarType> dtype) {
  TORCH_CHECK(bits_in.device().is_cpu(), "bits must be a CPU tensor, got one on ", bits_in.device());
  TORCH_CHECK_TYPE(bits_in.scalar_type() == at::kByte, "bits must be uint8 (packed sign bytes), got ",
                   bits_in.scalar_type());
  TORCH_CHECK_VALUE(bits_in.dim() == 3, "bits must be 3-D [N, P, bytes], got ", bits_in.dim(), "-D");
  TORCH_CHECK_VALUE(channels >= 0, "channels must be >= 0, got ", channels);
  TORCH_CHECK_VALUE(bits_in.size(2) * 8 >= channels, "bits holds ", bits_in.size(2) * 8,
                    " bits per row, fewer than channels (", channels, ")");
  TORCH_CHECK_TYPE(mean.scalar_type() == at::kFloat || mean.scalar_type() == at::kDouble,
                   "mean must be float32 or float64, got ", mean.scalar_type());
  TORCH_CHECK_TYPE(sigma.scalar_type() == mean.scalar_type(), "sigma must have mean's dtype (", mean.scalar_type(),
                   "), got ", sigma.scalar_type());
  TORCH_CHECK_VALUE(mean.numel() == 1 && sigma.numel() == 1, "mean and sigma must hold one value each, got ",
                    mean.numel(), " and ", sigma.numel());
  TORCH_CHECK(mean.device().is_cpu() && sigma.device().is_cpu(), "mean and sigma must be CPU tensors");
  const at::ScalarType out_type = dtype.value_or(mean.scalar_type());
  TORCH_CHECK_TYPE(at::isFloatingType(out_type), "dtype must be a floating-point dtype, got ", out_type);
  const at::Tensor bits = bits_in.contiguous();
  const int64_t N = bits.size(0), P = bits.size(1);
  at::Tensor out = at::empty(channels_first ? at::IntArrayRef{N, channels, P} : at::IntArrayRef{N, P, channels},
                             bits.options().dtype(out_type));
  if (out.numel() == 0) return out;
  const Signs s{bits.const_data_ptr<uint8_t>(), N, P, bits.size(2), channels};
  AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "_unpack_restored", [&] {
    // the restoration's two values: its float sums in the statistics dtype, then rounded once to the out
    // dtype (as y.to(dtype) rounds them)
    using stat_t = scalar_t;
    const stat_t m = *mean.contiguous().const_data_ptr<stat_t>(), sg = *sigma.contiguous().const_data_ptr<stat_t>();
    const stat_t lo = m - sg, hi = sg + m;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, out_type, "_unpack_restored_out", [&] {
      unpack<scalar_t>(s, static_cast<scalar_t>(lo), static_cast<scalar_t>(hi), out.mutable_data_ptr<scalar_t>(),
                       channels_first);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(erbnn, CPU, m) { m.impl("_unpack_restored", &unpack_restored_cpu); }

}  // namespace erbnn
