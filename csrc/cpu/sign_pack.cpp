// Sign-bit packing (pack_signs, unpack_signs and the packing pass of the binary convolutions), CPU.
// Packing is fused with the sign and the NaN check, and vectorised as compare-to-mask: AVX-512 compares
// 16 floats into a 16-bit mask that is already the packed bits (channels contiguous), or, for NCHW
// (pixels contiguous, channels strided), ORs channel c's bit into 16 pixel words under that mask.
#include "sign_pack.h"

#include <torch/library.h>

#include <immintrin.h>

#include <cstring>

#include "common/pack_shape.h"
#include "cpu_isa.h"
#include "cpu_utils.h"

#define ERBNN_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq")))
#define ERBNN_AVX2 __attribute__((target("avx2,popcnt")))

namespace erbnn {
namespace {

struct View4 {
  int64_t A, B, D, C;      // sizes; C is the packed axis
  int64_t sa, sb, sd, sc;  // strides in elements
  int64_t words;           // ceil(C / 64)
};

// Any dtype, any strides: one element at a time.
template <typename scalar_t, typename cmp_t>
bool pack_row_generic(const scalar_t* row, const View4& v, cmp_t shift, uint64_t* out) {
  bool nan = false;
  for (int64_t d = 0; d < v.D; ++d) {
    const scalar_t* px = row + d * v.sd;
    for (int64_t k = 0; k < v.words; ++k) {
      const int64_t c0 = k * 64, c1 = std::min<int64_t>(c0 + 64, v.C);
      uint64_t word = 0;
      for (int64_t c = c0; c < c1; ++c) {
        const cmp_t e = static_cast<cmp_t>(px[c * v.sc]);
        nan |= e != e;
        word |= uint64_t(e >= shift) << (c - c0);
      }
      out[d * v.words + k] = word;
    }
  }
  return nan;
}

// float32, channels contiguous (sc == 1): 16 channels per compare.
ERBNN_AVX512 bool pack_row_cl_avx512(const float* row, const View4& v, float shift, uint64_t* out) {
  const __m512 s = _mm512_set1_ps(shift);
  __mmask16 nan = 0;
  for (int64_t d = 0; d < v.D; ++d) {
    const float* px = row + d * v.sd;
    for (int64_t k = 0; k < v.words; ++k) {
      uint64_t word = 0;
      for (int q = 0; q < 4; ++q) {
        const int64_t c0 = k * 64 + q * 16;
        if (c0 >= v.C) break;
        const int64_t n = std::min<int64_t>(16, v.C - c0);
        const __mmask16 m = n == 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
        const __m512 e = _mm512_maskz_loadu_ps(m, px + c0);
        nan |= _mm512_mask_cmp_ps_mask(m, e, e, _CMP_UNORD_Q);
        word |= uint64_t(_mm512_mask_cmp_ps_mask(m, e, s, _CMP_GE_OQ)) << (q * 16);
      }
      out[d * v.words + k] = word;
    }
  }
  return nan != 0;
}

// float32, pixels contiguous (sd == 1, e.g. NCHW): 16 pixels per compare; channel c's bit is ORed
// into the 16 pixel words (two zmm of 8 x u64) under the compare mask.
ERBNN_AVX512 bool pack_row_px_avx512(const float* row, const View4& v, float shift, uint64_t* out) {
  const __m512 s = _mm512_set1_ps(shift);
  __mmask16 nan = 0;
  alignas(64) uint64_t tmp[16];
  for (int64_t d0 = 0; d0 < v.D; d0 += 16) {
    const int64_t nd = std::min<int64_t>(16, v.D - d0);
    const __mmask16 lanes = nd == 16 ? __mmask16(0xFFFF) : __mmask16((1u << nd) - 1);
    for (int64_t k = 0; k < v.words; ++k) {
      __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512();
      const int64_t c0 = k * 64, nc = std::min<int64_t>(64, v.C - c0);
      const float* src = row + c0 * v.sc + d0;
      for (int64_t c = 0; c < nc; ++c) {
        const __m512 e = _mm512_maskz_loadu_ps(lanes, src + c * v.sc);
        nan |= _mm512_mask_cmp_ps_mask(lanes, e, e, _CMP_UNORD_Q);
        const __mmask16 m = _mm512_mask_cmp_ps_mask(lanes, e, s, _CMP_GE_OQ);
        const __m512i bit = _mm512_set1_epi64(int64_t(uint64_t(1) << c));
        lo = _mm512_mask_or_epi64(lo, __mmask8(m), lo, bit);
        hi = _mm512_mask_or_epi64(hi, __mmask8(m >> 8), hi, bit);
      }
      _mm512_store_si512(tmp, lo);
      _mm512_store_si512(tmp + 8, hi);
      for (int64_t j = 0; j < nd; ++j) out[(d0 + j) * v.words + k] = tmp[j];
    }
  }
  return nan != 0;
}

// float32, channels contiguous, AVX2: 8 channels per compare (movemask).
ERBNN_AVX2 bool pack_row_cl_avx2(const float* row, const View4& v, float shift, uint64_t* out) {
  const __m256 s = _mm256_set1_ps(shift);
  int nan = 0;
  for (int64_t d = 0; d < v.D; ++d) {
    const float* px = row + d * v.sd;
    for (int64_t k = 0; k < v.words; ++k) {
      const int64_t c0 = k * 64, c1 = std::min<int64_t>(c0 + 64, v.C);
      uint64_t word = 0;
      int64_t c = c0;
      for (; c + 8 <= c1; c += 8) {
        const __m256 e = _mm256_loadu_ps(px + c);
        nan |= _mm256_movemask_ps(_mm256_cmp_ps(e, e, _CMP_UNORD_Q));
        word |= uint64_t(unsigned(_mm256_movemask_ps(_mm256_cmp_ps(e, s, _CMP_GE_OQ)))) << (c - c0);
      }
      for (; c < c1; ++c) {
        nan |= px[c] != px[c];
        word |= uint64_t(px[c] >= shift) << (c - c0);
      }
      out[d * v.words + k] = word;
    }
  }
  return nan != 0;
}

template <typename scalar_t>
void pack_rows(const at::Tensor& x, const View4& v, double shift, uint64_t* out, const char* name) {
  const scalar_t* base = x.const_data_ptr<scalar_t>();
  const CpuIsa isa = active_cpu_isa();
  const int64_t row_words = v.D * v.words;
  // Grain: about 32 Ki elements per task.
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(1, v.D * v.C));
  at::parallel_for(0, v.A * v.B, grain, [&](int64_t lo, int64_t hi) {
    bool nan = false;
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t a = r / v.B, b = r % v.B;
      const scalar_t* row = base + a * v.sa + b * v.sb;
      uint64_t* dst = out + r * row_words;
      if constexpr (std::is_same_v<scalar_t, float>) {
        const float s = static_cast<float>(shift);
        if (isa == CpuIsa::kAvx512 && v.sc == 1) {
          nan |= pack_row_cl_avx512(row, v, s, dst);
        } else if (isa == CpuIsa::kAvx512 && v.sd == 1 && v.D > 1) {
          nan |= pack_row_px_avx512(row, v, s, dst);
        } else if (isa == CpuIsa::kAvx2 && v.sc == 1) {
          nan |= pack_row_cl_avx2(row, v, s, dst);
        } else {
          nan |= pack_row_generic<float, float>(row, v, s, dst);
        }
      } else if constexpr (std::is_same_v<scalar_t, double>) {
        nan |= pack_row_generic<double, double>(row, v, shift, dst);
      } else {
        nan |= pack_row_generic<scalar_t, float>(row, v, static_cast<float>(shift), dst);
      }
    }
    TORCH_CHECK_VALUE(!nan, name, " contains NaN: its sign is undefined");
  });
}

}  // namespace

at::Tensor pack_signs_4d_cpu(const at::Tensor& x, double shift, const char* name) {
  TORCH_CHECK(x.dim() == 4, "pack_signs_4d_cpu: expected a 4-D view");
  check_float_input(x, name);
  TORCH_CHECK(x.device().is_cpu(), name, " must be a CPU tensor, got one on ", x.device());
  View4 v{x.size(0), x.size(1), x.size(2), x.size(3), x.stride(0), x.stride(1), x.stride(2), x.stride(3),
          cpu_words(x.size(3))};
  at::Tensor out = at::empty({v.A, v.B, v.D, v.words}, x.options().dtype(at::kLong));
  if (out.numel() == 0) {
    return out;
  }
  if (v.C == 0) {
    out.zero_();
    return out;
  }
  auto* dst = reinterpret_cast<uint64_t*>(out.mutable_data_ptr<int64_t>());
  ERBNN_DISPATCH_FLOATS(x.scalar_type(), "pack_signs_cpu", [&] { pack_rows<scalar_t>(x, v, shift, dst, name); });
  return out;
}

namespace {

at::Tensor pack_signs_cpu(const at::Tensor& x, int64_t dim) {
  check_float_input(x, "x");
  const PackPlan p = plan_pack(x, dim, kCpuWordBits);
  return pack_signs_4d_cpu(as_4d(p.xm), 0.0, "x").view(p.shape);
}

at::Tensor unpack_signs_cpu(const at::Tensor& packed_in, int64_t n, int64_t dim) {
  const std::vector<int64_t> shape = plan_unpack(packed_in, n, at::kLong, kCpuWordBits, "CPU");
  const at::Tensor packed = packed_in.contiguous();
  at::Tensor out = at::empty(shape, packed.options().dtype(at::kFloat));
  const int64_t rows = n == 0 ? 0 : out.numel() / n, words = packed.size(-1);
  const auto* src = reinterpret_cast<const uint64_t*>(packed.const_data_ptr<int64_t>());
  float* dst = out.mutable_data_ptr<float>();
  at::parallel_for(0, rows, std::max<int64_t>(1, kElemGrain / std::max<int64_t>(n, 1)), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r)
      for (int64_t i = 0; i < n; ++i)
        dst[r * n + i] = ((src[r * words + (i >> 6)] >> (i & 63)) & 1) ? 1.0f : -1.0f;
  });
  dim = c10::maybe_wrap_dim(dim, out.dim());
  return out.movedim(-1, dim).contiguous();
}

}  // namespace

TORCH_LIBRARY_IMPL(erbnn, CPU, m) {
  m.impl("pack_signs", &pack_signs_cpu);
  m.impl("unpack_signs", &unpack_signs_cpu);
}

}  // namespace erbnn
