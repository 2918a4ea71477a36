// Math of two_sided_quantile (method.md section 3) shared by the CPU and CUDA radix selects: the
// orderable magnitude key of each dtype, the radix digit schedule, numpy's linear-interpolation rank,
// and the interpolation itself (rounded exactly as the reference does it: in double, then to float32).
//
// The key of x is the bit pattern of |x| (the sign bit cleared): for IEEE floats it orders like |x|,
// so the quantile of the negative half |x[x <= 0]| and of the positive half x[x >= 0] both become a
// selection on unsigned integers. The kernels number a half by its sign bit: half 0 holds the x >= 0,
// half 1 the x <= 0; a zero (+0.0 or -0.0, key 0) belongs to both.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "macros.h"

namespace erbnn {

template <typename T>
struct QuantileKey;

// The bit pattern of an IEEE float as the unsigned integer Key of the same width, and back.
template <typename Key, typename T>
ERBNN_HD Key float_bits(T v) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == 4)
    return static_cast<Key>(__float_as_uint(v));
  else
    return static_cast<Key>(__double_as_longlong(v));
#else
  Key k;
  std::memcpy(&k, &v, sizeof k);
  return k;
#endif
}

template <typename T, typename Key>
ERBNN_HD T bits_float(Key k) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == 4)
    return __uint_as_float(static_cast<unsigned>(k));
  else
    return __longlong_as_double(static_cast<long long>(k));
#else
  T v;
  std::memcpy(&v, &k, sizeof v);
  return v;
#endif
}

// float32 and float64: the key is the whole bit pattern; kInf: keys >= this are Inf or NaN.
template <typename T, typename K, int Bits, K Inf>
struct IeeeQuantileKey {
  using Key = K;
  static constexpr int kBits = Bits;  // magnitude bits; the sign is bit kBits
  static constexpr Key kInf = Inf;
  ERBNN_HD static Key raw(T v) { return float_bits<Key>(v); }
  ERBNN_HD static double value(Key k) { return double(bits_float<T>(k)); }
};

template <>
struct QuantileKey<float> : IeeeQuantileKey<float, uint32_t, 31, 0x7f800000u> {};

template <>
struct QuantileKey<double> : IeeeQuantileKey<double, uint64_t, 63, 0x7ff0000000000000ull> {};

// 16-bit floats keep their own 15-bit magnitude: two radix passes instead of the three of float32.
template <>
struct QuantileKey<c10::Half> {
  using Key = uint32_t;
  static constexpr int kBits = 15;
  static constexpr Key kInf = 0x7c00u;
  ERBNN_HD static Key raw(c10::Half v) { return v.x; }
  ERBNN_HD static double value(Key k) {
    return double(static_cast<float>(c10::Half(static_cast<uint16_t>(k), c10::Half::from_bits())));
  }
};

template <>
struct QuantileKey<c10::BFloat16> {
  using Key = uint32_t;
  static constexpr int kBits = 15;
  static constexpr Key kInf = 0x7f80u;
  ERBNN_HD static Key raw(c10::BFloat16 v) { return v.x; }
  ERBNN_HD static double value(Key k) {
    return double(static_cast<float>(c10::BFloat16(static_cast<uint16_t>(k), c10::BFloat16::from_bits())));
  }
};

// Radix digits, most significant first: kRadixBits per pass (11: a 2 x 2048-bin histogram of 64-bit
// counts stays in L1 / shared memory), the last pass taking what is left.
constexpr int kRadixBits = 11;
constexpr int kRadixBins = 1 << kRadixBits;

ERBNN_HD constexpr int radix_passes(int key_bits) { return (key_bits + kRadixBits - 1) / kRadixBits; }
// Lowest bit of pass `pass`'s digit, and its width.
ERBNN_HD constexpr int radix_shift(int key_bits, int pass) {
  return key_bits - kRadixBits * (pass + 1) > 0 ? key_bits - kRadixBits * (pass + 1) : 0;
}
ERBNN_HD constexpr int radix_width(int key_bits, int pass) {
  return key_bits - kRadixBits * pass - radix_shift(key_bits, pass);
}

// numpy.quantile(method="linear") on n sorted values: h = (n - 1) p, lo = floor(h), hi = lo + 1 (both
// clamped to n - 1), result v[lo] + (h - lo) (v[hi] - v[lo]).
struct QuantileRank {
  int64_t lo, hi;
  double frac;
};

ERBNN_HD QuantileRank quantile_rank(int64_t n, double p) {
  const double h = double(n - 1) * p;
  int64_t lo = static_cast<int64_t>(floor(h));
  lo = lo < n - 1 ? lo : n - 1;
  const int64_t hi = lo + 1 < n - 1 ? lo + 1 : n - 1;
  return {lo, hi, h - double(lo)};
}

// v_lo + frac (v_hi - v_lo) in double, with no FMA contraction (nvcc fuses by default), so that every
// backend rounds the same double to float32 as the reference.
ERBNN_HD double quantile_lerp(double v_lo, double v_hi, double frac) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(v_lo, __dmul_rn(frac, __dsub_rn(v_hi, v_lo)));
#else
  return v_lo + frac * (v_hi - v_lo);
#endif
}

}  // namespace erbnn
