// BandSelect's AVX-512 scans (float32 keys), out of band_select.h's class body: the vector twins of its
// scalar loops (count, gather_band_scalar, count_band_scalar, filter_scalar), chosen at run time by the
// active CPU path. Included at the end of band_select.h only.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstring>

namespace erbnn {

template <typename scalar_t>
__attribute__((target("avx512f"))) uint32_t BandSelect<scalar_t>::max_magnitude_avx512(const float* v, int64_t m) {
  const __m512i mag = _mm512_set1_epi32(0x7fffffff);
  __m512i top = _mm512_setzero_si512();
  int64_t i = 0;
  for (; i + 16 <= m; i += 16) top = _mm512_max_epu32(top, _mm512_and_si512(_mm512_loadu_si512(v + i), mag));
  uint32_t t = _mm512_reduce_max_epu32(top);
  for (; i < m; ++i) t = std::max<uint32_t>(t, QK::raw(v[i]) & kMag);
  return t;
}

template <typename scalar_t>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq"))) int64_t BandSelect<scalar_t>::count_band_avx512(
    const uint32_t* keys, int64_t size, int h, uint32_t lo, uint32_t hi) {
  const __m512i mag = _mm512_set1_epi32(0x7fffffff), vlo = _mm512_set1_epi32(int(lo)),
                width = _mm512_set1_epi32(int(hi - lo)), sign = _mm512_set1_epi32(h > 0 ? -1 : 0);
  int64_t i = 0, c = 0;
  for (; i + 16 <= size; i += 16) {
    const __m512i r = _mm512_loadu_si512(keys + i), m = _mm512_and_si512(r, mag);
    const __mmask16 half = _mm512_cmpeq_epi32_mask(_mm512_srai_epi32(r, 31), sign) | _mm512_testn_epi32_mask(r, mag);
    c += __builtin_popcount(half & _mm512_cmple_epu32_mask(_mm512_sub_epi32(m, vlo), width));
  }
  return c + count_band_scalar(keys + i, size - i, h, lo, hi);
}

template <typename scalar_t>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq"))) int64_t BandSelect<scalar_t>::filter_avx512(
    const uint32_t* keys, int64_t size, int h, uint32_t lo, uint32_t hi, uint32_t* out) {
  const __m512i mag = _mm512_set1_epi32(0x7fffffff), vlo = _mm512_set1_epi32(int(lo)),
                width = _mm512_set1_epi32(int(hi - lo)), sign = _mm512_set1_epi32(h > 0 ? -1 : 0);
  const __mmask16 any = h < 0 ? 0xffff : 0;
  int64_t i = 0, k = 0;
  for (; i + 16 <= size; i += 16) {
    const __m512i r = _mm512_loadu_si512(keys + i), m = _mm512_and_si512(r, mag);
    const __mmask16 half = any | _mm512_cmpeq_epi32_mask(_mm512_srai_epi32(r, 31), sign) |
                           _mm512_testn_epi32_mask(r, mag);
    const __mmask16 take = half & _mm512_cmple_epu32_mask(_mm512_sub_epi32(m, vlo), width);
    _mm512_storeu_si512(out + k, _mm512_maskz_compress_epi32(take, m));
    k += __builtin_popcount(take);
  }
  return k + filter_scalar(keys + i, size - i, h, lo, hi, out + k);
}

template <typename scalar_t>
template <bool kWrite>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq"))) int64_t BandSelect<scalar_t>::lean_scan_avx512(
    const float* x, float* y, int64_t len, float mu, float sc, float y_pos, float y_neg, uint32_t* out,
    Counts& c) const {
  const __m512 vmu = _mm512_set1_ps(mu), vsc = _mm512_set1_ps(sc), ypos = _mm512_set1_ps(y_pos),
               yneg = _mm512_set1_ps(y_neg);
  const __m512i mag = _mm512_set1_epi32(0x7fffffff), lo = _mm512_set1_epi32(int(lo_[0])),
                width = _mm512_set1_epi32(int(hi_[0] - lo_[0])), zero = _mm512_setzero_si512();
  __m512i n_s = zero, n_below = zero, n_below_s = zero, m_max = zero, m_min = _mm512_set1_epi32(-1);
  int64_t i = 0, k = 0;
  for (; i + 16 <= len; i += 16) {
    const __m512 v = scan_values<kWrite>(x, y, i, vmu, vsc, ypos, yneg);
    const __m512i r = _mm512_castps_si512(v), m = _mm512_and_si512(r, mag), s = _mm512_srli_epi32(r, 31);
    const __m512i d = _mm512_sub_epi32(m, lo), below = _mm512_srli_epi32(d, 31);  // m < lo (both < 2^31)
    n_s = _mm512_add_epi32(n_s, s);
    n_below = _mm512_add_epi32(n_below, below);
    n_below_s = _mm512_add_epi32(n_below_s, _mm512_and_si512(below, s));
    m_min = _mm512_min_epu32(m_min, m);
    m_max = _mm512_max_epu32(m_max, m);
    const __mmask16 take = _mm512_cmple_epu32_mask(d, width);  // lo <= m <= hi
    _mm512_storeu_si512(out + k, _mm512_maskz_compress_epi32(take, r));
    k += __builtin_popcount(take);
  }
  int64_t nz = 0, nzs = 0;  // zeros and negative zeros (both halves'), from the values again
  if (i > 0 && _mm512_reduce_min_epu32(m_min) == 0) {
    for (int64_t j = 0; j < i; ++j) {
      const float v = kWrite ? (x[j] - mu) / sc : x[j];
      uint32_t r;
      std::memcpy(&r, &v, 4);
      nz += (r & 0x7fffffffu) == 0;
      nzs += r == 0x80000000u;
    }
  }
  const int64_t ns = _mm512_reduce_add_epi32(n_s), nb = _mm512_reduce_add_epi32(n_below),
                nbs = _mm512_reduce_add_epi32(n_below_s);
  add_lane_counts(c, i, ns, nb, nbs, nz, nzs, m_max);
  // the tail, by the plain loops (their smallest key above is ignored: lean_)
  return k + scan_tail<kWrite>(x, y, i, len, mu, sc, y_pos, y_neg, out + k, c);
}

template <typename scalar_t>
__attribute__((target("avx512f,avx512bw,avx512vl"))) int64_t BandSelect<scalar_t>::gather_band_avx512(const float* v, int64_t len,
                                                                               uint32_t* out) const {
  const __m512i mag = _mm512_set1_epi32(0x7fffffff), lo0 = _mm512_set1_epi32(int(lo_[0])),
                hi0 = _mm512_set1_epi32(int(hi_[0])), lo1 = _mm512_set1_epi32(int(lo_[1])),
                hi1 = _mm512_set1_epi32(int(hi_[1]));
  int64_t i = 0, k = 0;
  for (; i + 16 <= len; i += 16) {
    const __m512i r = _mm512_loadu_si512(v + i), m = _mm512_and_si512(r, mag);
    const __mmask16 zero = _mm512_testn_epi32_mask(r, mag), neg = _mm512_cmplt_epi32_mask(r, _mm512_setzero_si512());
    const __mmask16 band0 = _mm512_cmpge_epu32_mask(m, lo0) & _mm512_cmple_epu32_mask(m, hi0);
    const __mmask16 band1 = _mm512_cmpge_epu32_mask(m, lo1) & _mm512_cmple_epu32_mask(m, hi1);
    const __mmask16 take = (band0 & __mmask16(~neg | zero)) | (band1 & __mmask16(neg | zero));
    _mm512_mask_compressstoreu_epi32(out + k, take, r);
    k += __builtin_popcount(take);
  }
  for (; i < len; ++i) {
    uint32_t r;
    std::memcpy(&r, v + i, 4);
    const uint32_t m = r & 0x7fffffffu;
    const bool zero = m == 0, neg = (r >> 31) != 0;
    out[k] = r;
    k += ((!neg || zero) && m >= lo_[0] && m <= hi_[0]) || ((neg || zero) && m >= lo_[1] && m <= hi_[1]);
  }
  return k;
}

template <typename scalar_t>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq"))) int64_t BandSelect<scalar_t>::scan_avx512(
    const float* v, int64_t len, uint32_t* out, Counts& c) const {
  const __m512i mag = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000),
                lo0 = _mm512_set1_epi32(int(lo_[0])), hi0 = _mm512_set1_epi32(int(hi_[0])),
                lo1 = _mm512_set1_epi32(int(lo_[1])), hi1 = _mm512_set1_epi32(int(hi_[1])),
                zero_v = _mm512_setzero_si512(), one = _mm512_set1_epi32(1);
  __m512i amin0 = _mm512_set1_epi32(-1), amin1 = _mm512_set1_epi32(-1);
  __m512i t0 = zero_v, t1 = zero_v, b0 = zero_v, b1 = zero_v;  // per-lane counts (len < 2^32)
  int64_t i = 0, k = 0;
  __mmask16 bad = 0;
  for (; i + 16 <= len; i += 16) {
    const __m512i r = _mm512_loadu_si512(v + i), m = _mm512_and_si512(r, mag);
    const __mmask16 zero = _mm512_testn_epi32_mask(r, mag), neg = _mm512_cmplt_epi32_mask(r, zero_v);
    const __mmask16 in0 = __mmask16(~neg | zero), in1 = __mmask16(neg | zero);
    bad |= _mm512_cmpge_epu32_mask(m, inf);
    t0 = _mm512_mask_add_epi32(t0, in0, t0, one);
    t1 = _mm512_mask_add_epi32(t1, in1, t1, one);
    const __mmask16 below0 = _mm512_cmplt_epu32_mask(m, lo0), below1 = _mm512_cmplt_epu32_mask(m, lo1);
    const __mmask16 above0 = _mm512_cmpgt_epu32_mask(m, hi0), above1 = _mm512_cmpgt_epu32_mask(m, hi1);
    b0 = _mm512_mask_add_epi32(b0, in0 & below0, b0, one);
    b1 = _mm512_mask_add_epi32(b1, in1 & below1, b1, one);
    amin0 = _mm512_mask_min_epu32(amin0, in0 & above0, amin0, m);
    amin1 = _mm512_mask_min_epu32(amin1, in1 & above1, amin1, m);
    const __mmask16 take = (in0 & __mmask16(~(below0 | above0))) | (in1 & __mmask16(~(below1 | above1)));
    if (take) {
      _mm512_storeu_si512(out + k, _mm512_maskz_compress_epi32(take, r));
      k += __builtin_popcount(take);
    }
  }
  c.total[0] += _mm512_reduce_add_epi32(t0), c.total[1] += _mm512_reduce_add_epi32(t1);
  c.below[0] += _mm512_reduce_add_epi32(b0), c.below[1] += _mm512_reduce_add_epi32(b1);
  c.above[0] = std::min<Key>(c.above[0], _mm512_reduce_min_epu32(amin0));
  c.above[1] = std::min<Key>(c.above[1], _mm512_reduce_min_epu32(amin1));
  c.nonfinite |= bad != 0;
  if (i < len) {  // the tail, by the plain loops
    count(v + i, len - i, c);
    k += gather_band_scalar(v + i, len - i, out + k);
  }
  return k;
}

template <typename scalar_t>
template <bool kWrite>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq"))) int64_t BandSelect<scalar_t>::shared_scan_avx512(
    const float* x, float* y, int64_t len, float mu, float sc, float y_pos, float y_neg, uint32_t* out,
    Counts& c) const {
  const __m512 vmu = _mm512_set1_ps(mu), vsc = _mm512_set1_ps(sc), ypos = _mm512_set1_ps(y_pos),
               yneg = _mm512_set1_ps(y_neg);
  const __m512i mag = _mm512_set1_epi32(0x7fffffff), lo = _mm512_set1_epi32(int(lo_[0])),
                hi = _mm512_set1_epi32(int(hi_[0])), one = _mm512_set1_epi32(1), zero = _mm512_setzero_si512();
  __m512i n_s = zero, n_below = zero, n_below_s = zero, n_z = zero, n_z_s = zero, m_max = zero;
  __m512i amin0 = _mm512_set1_epi32(-1), amin1 = _mm512_set1_epi32(-1);
  int64_t i = 0, k = 0;
  for (; i + 16 <= len; i += 16) {
    const __m512 v = scan_values<kWrite>(x, y, i, vmu, vsc, ypos, yneg);
    const __m512i r = _mm512_castps_si512(v), m = _mm512_and_si512(r, mag), s = _mm512_srli_epi32(r, 31);
    const __m512i below = _mm512_srli_epi32(_mm512_sub_epi32(m, lo), 31);
    const __m512i above = _mm512_srli_epi32(_mm512_sub_epi32(hi, m), 31);
    const __m512i z = _mm512_srli_epi32(_mm512_sub_epi32(m, one), 31);
    n_s = _mm512_add_epi32(n_s, s);
    n_below = _mm512_add_epi32(n_below, below);
    n_below_s = _mm512_add_epi32(n_below_s, _mm512_and_si512(below, s));
    n_z = _mm512_add_epi32(n_z, z);
    n_z_s = _mm512_add_epi32(n_z_s, _mm512_and_si512(z, s));
    m_max = _mm512_max_epu32(m_max, m);
    const __m512i cand = _mm512_or_si512(m, _mm512_sub_epi32(above, one));  // m above the band, else ~0
    amin0 = _mm512_min_epu32(amin0, _mm512_or_si512(cand, _mm512_sub_epi32(zero, s)));
    amin1 = _mm512_min_epu32(amin1, _mm512_or_si512(cand, _mm512_sub_epi32(s, one)));
    const __mmask16 take = _mm512_testn_epi32_mask(_mm512_or_si512(below, above), one);
    _mm512_storeu_si512(out + k, _mm512_maskz_compress_epi32(take, r));
    k += __builtin_popcount(take);
  }
  const int64_t ns = _mm512_reduce_add_epi32(n_s), nb = _mm512_reduce_add_epi32(n_below),
                nbs = _mm512_reduce_add_epi32(n_below_s), nz = _mm512_reduce_add_epi32(n_z),
                nzs = _mm512_reduce_add_epi32(n_z_s);
  add_lane_counts(c, i, ns, nb, nbs, nz, nzs, m_max);
  c.above[0] = std::min<Key>(c.above[0], _mm512_reduce_min_epu32(amin0));
  c.above[1] = std::min<Key>(c.above[1], _mm512_reduce_min_epu32(amin1));
  return k + scan_tail<kWrite>(x, y, i, len, mu, sc, y_pos, y_neg, out + k, c);
}

template <typename scalar_t>
template <bool kWrite>
__attribute__((target("avx512f,avx512bw,avx512vl"))) __m512 BandSelect<scalar_t>::scan_values(
    const float* x, float* y, int64_t i, __m512 vmu, __m512 vsc, __m512 ypos, __m512 yneg) {
  if constexpr (!kWrite) return _mm512_loadu_ps(x + i);
  const __m512 v = _mm512_div_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), vmu), vsc);
  _mm512_storeu_ps(y + i, _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GE_OQ), yneg, ypos));
  return v;
}

template <typename scalar_t>
__attribute__((target("avx512f"))) void BandSelect<scalar_t>::add_lane_counts(Counts& c, int64_t i, int64_t ns, int64_t nb,
                                                               int64_t nbs, int64_t nz, int64_t nzs, __m512i m_max) {
  c.total[0] += i - ns + nzs, c.total[1] += ns + nz - nzs;
  c.below[0] += nb - nbs + nzs, c.below[1] += nbs + nz - nzs;
  c.nonfinite |= uint32_t(_mm512_reduce_max_epu32(m_max)) >= 0x7f800000u;
}

}  // namespace erbnn
