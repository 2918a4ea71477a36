// The band select of two_sided_quantile (CPU, float32 / float64 values): one pass instead of the radix
// select's two, with the radix select (radix_select.h) as its exact fallback.
#pragma once

#include <ATen/ATen.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#include "common/quantile_math.h"
#include "cpu_isa.h"
#include "restore_blocks.h"
#include "simd.h"

namespace erbnn {

// ---- one pass around a sampled band (float32 / float64 values) ----
// A sample of the values brackets each half's wanted ranks with a band of keys [lo, hi]. One pass then
// counts, per half, the keys below the band, gathers those inside it (a few percent of the values) and
// tracks the smallest key above it: vector compares and a compress-store, no histogram. When the counts
// show that each band holds its ranks (almost always), the quantile is selected from the gathered keys;
// otherwise (an unlucky sample, or more candidates than the buffer takes) the caller falls back to the
// radix select. Both are exact, so the result is the same bits either way.
// Values from which the plain op's band select runs instead of the radix select (radix_select.h).
// Measured on the 2-core Zen 5 (2026-11-27 17:25 UTC, 1 thread, standard normal values, with the
// shared-band scan and the earlier branch-free nth_element finish, since replaced by the band-restricted
// radix select): band / radix 0.48 / 0.13 ms at 2^18, 2.17 / 1.94 ms at 2^22, 2.67 / 4.20 ms at 2^23,
// 4.56 / 8.40 ms at 2^24, 6.6 / 12.3 ms at 25e6; so 2^23 by default.
// This bound is the plain op's (its scan is a pass of its own); the training activation op, whose scan
// rides on its write pass, brackets from a sample of n / 32 from train_band_select_min() values on.
// ERBNN_BAND_SELECT_MIN overrides the bound (the tests run the band select on inputs of a few 2^18 values
// with it); it never goes below the 4 samples' worth the band select needs.
inline int64_t band_select_min() {
  const char* s = std::getenv("ERBNN_BAND_SELECT_MIN");
  return s != nullptr ? std::atoll(s) : int64_t(1) << 23;
}

// Values from which the training activation op (train_quantile, restore_cpu.h) brackets its band from a
// sample of about n / 32 values (BandSelect's histogram constructor) instead of building the radix
// select's histogram in its write pass: 2^16 by default (measured in docs/kernels.md), or
// ERBNN_TRAIN_BAND_SELECT_MIN when set (the tests force it on small inputs, benchmarks.band_hits off with
// a large value). A variable of its own: tuning the plain op's bound must not move this one.
inline int64_t train_band_select_min() {
  const char* s = std::getenv("ERBNN_TRAIN_BAND_SELECT_MIN");
  return s != nullptr ? std::atoll(s) : int64_t(1) << 16;
}

template <typename scalar_t>
class BandSelect {
 public:
  using QK = QuantileKey<scalar_t>;
  using Key = typename QK::Key;
  static constexpr int kBits = QK::kBits;
  static constexpr Key kMag = (Key(1) << kBits) - 1, kNone = std::numeric_limits<Key>::max();
  using SignedKey = std::make_signed_t<Key>;
  // Sample: kSample values in runs of kRun neighbours (few cache misses; a larger sample narrows the
  // bands and so the gathered set). Inputs under max(band_select_min(), 4 kSample) go to the radix select.
  static constexpr int64_t kSample = 65536, kRun = 8;
  // The histogram-bracketed band's buckets: mantissa bits per exponent, and buckets per half.
  static constexpr int kSubBits = 6;
  static constexpr int64_t kHistBins = 1024;
  // Flat index of the i-th sample value among n values.
  static int64_t sample_index(int64_t i, int64_t n) { return run_start(i / kRun, n, kSample) + i % kRun; }

  // Per-task counts (merged with merge()).
  struct Counts {
    int64_t below[2] = {0, 0}, total[2] = {0, 0};
    Key above[2] = {kNone, kNone};  // smallest key of the half above its band
    bool nonfinite = false;
  };

  // sample: m values drawn from the n.
  BandSelect(double p, int64_t n, const scalar_t* sample, int64_t m) : p_(p) {
    std::vector<Key> half[2];
    for (int64_t i = 0; i < m; ++i) {
      const Key r = QK::raw(sample[i]), mag = r & kMag;
      half[r >> kBits].push_back(mag);
      if (mag == 0) half[1 - (r >> kBits)].push_back(mag);  // a zero is in both halves
    }
    for (int h = 0; h < 2; ++h) {
      auto& s = half[h];
      lo_[h] = 0, hi_[h] = kMag;  // no sample of the half: take all of it
      if (s.empty()) continue;
      const int64_t ms = int64_t(s.size());
      const double j = p * double(ms - 1);
      // about 5 sigma of the rank's binomial spread (more than 4 for the runs' correlation)
      const int64_t d = int64_t(5.0 * std::sqrt(double(ms) * p * (1.0 - p))) + 16;
      const int64_t a = int64_t(std::floor(j)) - d, b = int64_t(std::ceil(j)) + 1 + d;
      if (a >= 0) {
        std::nth_element(s.begin(), s.begin() + a, s.end());
        lo_[h] = s[a];
      }
      if (b < ms) {
        std::nth_element(s.begin() + std::max<int64_t>(a + 1, 0), s.begin() + b, s.end());
        hi_[h] = s[b];
      }
    }
    alloc(n);
  }

  // The sample size of the histogram-bracketed band (the training activation op): about n / 32 values,
  // within [kMinSample, kSample], whole runs of kRun neighbours; n >= 4 kMinSample.
  static constexpr int64_t kMinSample = 2048;
  static int64_t sample_size(int64_t n) {
    return std::clamp<int64_t>(n / 32, kMinSample, kSample) / kRun * kRun;
  }
  // Flat index of the first value of the r-th run of a sample of m values among n: run r lies in the
  // r-th of m / kRun equal strides, at an offset from a multiplicative hash of r. Runs at the same offset
  // of every stride would follow the data's layout: with n = 2^18 and 1024 runs, every run was the first
  // 8 pixels of every 8th row of 32x32 feature maps, the background of an image set's borders, and the
  // band missed on almost every real activation.
  static int64_t run_start(int64_t r, int64_t n, int64_t m) {
    const int64_t stride = n / (m / kRun), room = stride - kRun + 1;  // room >= 1: n >= m
    const uint64_t h = (uint64_t(r) * 0x9E3779B97F4A7C15ull) >> 32;    // 32 well-mixed bits
    // h / 2^32 * room in [0, room): a 128-bit product, exact for any room
    return r * stride + int64_t((static_cast<unsigned __int128>(h) * uint64_t(room)) >> 32);
  }

  struct FromHistogram {};
  // The band from a sample of m values through a histogram of its keys (no nth_element, whose cost at
  // thousands of keys would outweigh the pass on inputs of 2^16 .. 2^22 values): buckets of an exponent
  // and kSubBits mantissa bits (1.6% apart in value), kHistBins of them below the sample's largest key
  // (smaller keys share the first bucket). Each half's band runs from the floor of the bucket holding
  // the sample's rank a to the ceiling of the one holding rank b (ranks as in the constructor above); a
  // band starting at 0 starts at key 1 instead (the zeros below it, so that the band can be shared).
  // Then the shared band (share_band) and a buffer sized for the sample's share of gathered keys.
  BandSelect(double p, int64_t n, const scalar_t* sample, int64_t m, FromHistogram) : p_(p) {
    constexpr int kShift = std::numeric_limits<scalar_t>::digits - 1 - kSubBits;
    const Key top = max_magnitude(sample, m);
    const Key base = std::max<Key>(top >> kShift, kHistBins - 1) - (kHistBins - 1);
    std::vector<uint32_t> hist(2 * kHistBins, 0);
    int64_t zeros[2] = {0, 0}, neg = 0;  // zeros per sign, negatives
    for (int64_t i = 0; i < m; ++i) {
      const Key r = QK::raw(sample[i]), mag = r & kMag, b = mag >> kShift;
      const int h = int(r >> kBits);
      ++hist[h * kHistBins + (b > base ? size_t(b - base) : 0)];
      zeros[h] += mag == 0;
      neg += h;
    }
    hist[0] += uint32_t(zeros[1]), hist[kHistBins] += uint32_t(zeros[0]);  // a zero is in both halves
    const int64_t ms_half[2] = {m - neg + zeros[1], neg + zeros[0]};
    const auto floor_of = [&](int64_t bin) { return bin == 0 ? Key(0) : Key((base + Key(bin)) << kShift); };
    const auto ceil_of = [&](int64_t bin) { return Key(((base + Key(bin) + 1) << kShift) - 1); };
    for (int h = 0; h < 2; ++h) {
      const uint32_t* hh = hist.data() + h * kHistBins;
      const int64_t ms = ms_half[h];
      lo_[h] = 0, hi_[h] = kMag;  // no sample of the half: take all of it
      if (ms == 0) continue;
      const double j = p * double(ms - 1);
      const int64_t d = int64_t(5.0 * std::sqrt(double(ms) * p * (1.0 - p))) + 16;
      const int64_t a = int64_t(std::floor(j)) - d, b = int64_t(std::ceil(j)) + 1 + d;
      lo_[h] = 1;
      int64_t cum = 0, bin = 0;
      if (a >= 0) {
        while (cum + hh[bin] <= a) cum += hh[bin++];
        lo_[h] = std::max<Key>(floor_of(bin), 1);
      }
      for (int64_t c = cum, i = bin; i < kHistBins; c += hh[i++])  // the bucket of rank j: the estimate
        if (c + hh[i] > int64_t(j)) {
          est_[h] = floor_of(i);
          break;
        }
      if (b < ms) {
        while (cum + hh[bin] <= b) cum += hh[bin++];
        hi_[h] = std::min(ceil_of(bin), kMag);
      }
    }
    share_band();
    lean_ = true;
    // The buffer: the sample's share in the bands' buckets (a zero counted twice), with 6 sigma and some
    // slack (an overflow falls back).
    const auto bin_of = [&](Key k) { return std::min<int64_t>(k >> kShift > base ? int64_t((k >> kShift) - base) : 0, kHistBins - 1); };
    int64_t in = 0;
    for (int h = 0; h < 2; ++h)
      for (int64_t i = bin_of(lo_[h]); i <= bin_of(hi_[h]); ++i) in += hist[h * kHistBins + i];
    const double frac = (double(in) + 6.0 * std::sqrt(double(in)) + 16.0) / double(m);
    alloc_keys(std::min<int64_t>(n, int64_t(frac * double(n)) + 1024));
  }

  // The largest magnitude key of v[0, m).
  static Key max_magnitude(const scalar_t* v, int64_t m) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (active_cpu_isa() == CpuIsa::kAvx512) return max_magnitude_avx512(v, m);
    }
    Key top = 0;
    for (int64_t i = 0; i < m; ++i) top = std::max<Key>(top, QK::raw(v[i]) & kMag);
    return top;
  }
  __attribute__((target("avx512f"))) static uint32_t max_magnitude_avx512(const float* v, int64_t m) {
    const __m512i mag = _mm512_set1_epi32(0x7fffffff);
    __m512i top = _mm512_setzero_si512();
    int64_t i = 0;
    for (; i + 16 <= m; i += 16) top = _mm512_max_epu32(top, _mm512_and_si512(_mm512_loadu_si512(v + i), mag));
    uint32_t t = _mm512_reduce_max_epu32(top);
    for (; i < m; ++i) t = std::max<uint32_t>(t, QK::raw(v[i]) & kMag);
    return t;
  }

  // The band [lo, hi] (magnitude keys) for both halves, e.g. around a previous step's quantile.
  BandSelect(double p, int64_t n, Key lo, Key hi) : p_(p) {
    lo_[0] = lo_[1] = lo;
    hi_[0] = hi_[1] = hi;
    alloc(n);
  }

  // Counts of the block v[0, len) (len < 2^32) into c. Plain loops: call it inside isa_call.
  void count(const scalar_t* v, int64_t len, Counts& c) const {
    const Key lo0 = lo_[0], lo1 = lo_[1], hi0 = hi_[0], hi1 = hi_[1];
    uint32_t t0 = 0, t1 = 0, b0 = 0, b1 = 0;
    Key a0 = kNone, a1 = kNone;
    int bad = 0;
#pragma omp simd reduction(+ : t0, t1, b0, b1) reduction(min : a0, a1) reduction(| : bad)
    for (int64_t i = 0; i < len; ++i) {
      Key r;
      std::memcpy(&r, v + i, sizeof r);
      const Key mag = r & kMag;
      const bool zero = mag == 0, neg = (r >> kBits) != 0;
      const bool in0 = !neg || zero, in1 = neg || zero;
      bad |= mag >= QK::kInf;
      t0 += in0;
      t1 += in1;
      b0 += in0 && mag < lo0;
      b1 += in1 && mag < lo1;
      a0 = std::min(a0, in0 && mag > hi0 ? mag : kNone);
      a1 = std::min(a1, in1 && mag > hi1 ? mag : kNone);
    }
    c.total[0] += t0, c.total[1] += t1, c.below[0] += b0, c.below[1] += b1;
    c.above[0] = std::min(c.above[0], a0), c.above[1] = std::min(c.above[1], a1);
    c.nonfinite |= bad != 0;
  }

  // Appends the raw keys of v[0, len) inside a band (len <= kBlock, thread-safe).
  template <int64_t kBlock>
  void gather(const scalar_t* v, int64_t len) {
    Key keys[kBlock + 1];
    append(keys, gather_band(v, len, keys));
  }

  // count() and gather() of one block (len <= kBlock) in one go: one loop on AVX-512 for float32.
  template <int64_t kBlock>
  void scan(const scalar_t* v, int64_t len, Counts& c) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (shared_band() && active_cpu_isa() == CpuIsa::kAvx512) {
        Key keys[kBlock + 16];
        append(keys, lean_ ? lean_scan_avx512<false>(v, nullptr, len, 0.f, 1.f, 0.f, 0.f, keys, c)
                           : shared_scan_avx512<false>(v, nullptr, len, 0.f, 1.f, 0.f, 0.f, keys, c));
        return;
      }
      if (active_cpu_isa() == CpuIsa::kAvx512) {
        Key keys[kBlock + 16];  // scan_avx512 stores whole vectors: 16 slots of slack
        append(keys, scan_avx512(v, len, keys, c));
        return;
      }
    }
    isa_call([&] { count(v, len, c); });
    gather<kBlock>(v, len);
  }

  // One band for both halves: the band of the half whose sampled quantile is larger (only the larger of
  // the two halves' quantiles is the result; finish() resolves a half whose quantile falls below the
  // band, and a miss falls back as any other). Lets scan() take the shared-band loop. False (bands kept)
  // when a half had no sample.
  bool share_band() {
    for (int h = 0; h < 2; ++h)
      if (lo_[h] == 0 && hi_[h] == kMag) return false;
    // by the sampled quantiles' buckets where known (a band's low end can mislead: a half whose ranks
    // fall on one heavily tied value has a narrow band above the other half's low end); there, the band
    // also reaches the other half's high end, in case the sample misjudged which quantile is larger
    const Key* by = est_[0] != kNone ? est_ : lo_;
    const int h = by[0] >= by[1] ? 0 : 1;
    if (est_[0] != kNone) hi_[h] = std::max(hi_[h], hi_[1 - h]);
    lo_[1 - h] = lo_[h], hi_[1 - h] = hi_[h];
    first_ = h;
    return lo_[h] > 0;
  }

  // The restorations' output block y = (x - mu) / sc >= 0 ? y_pos : y_neg (len <= kBlock) and scan() of
  // its standardised values. float32 on AVX-512 with one band for both halves (the training ops' hint)
  // runs both in one loop without scratch (shared_scan_avx512); otherwise through buf.
  template <int64_t kBlock, typename X>
  void write_and_scan(const X* x, X* y, int64_t len, scalar_t mu, scalar_t sc, X y_pos, X y_neg, scalar_t* buf,
                      Counts& c) {
    if constexpr (std::is_same_v<X, float> && std::is_same_v<scalar_t, float>) {
      if (shared_band() && active_cpu_isa() == CpuIsa::kAvx512) {
        Key keys[kBlock + 16];
        append(keys, lean_ ? lean_scan_avx512<true>(x, y, len, mu, sc, y_pos, y_neg, keys, c)
                           : shared_scan_avx512<true>(x, y, len, mu, sc, y_pos, y_neg, keys, c));
        return;
      }
    }
    isa_call([&] { two_values_block<X, scalar_t>(x, y, buf, len, mu, sc, y_pos, y_neg); });
    scan<kBlock>(buf, len, c);
  }

  void merge(const Counts& c) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (int h = 0; h < 2; ++h) {
      counts_.below[h] += c.below[h], counts_.total[h] += c.total[h];
      counts_.above[h] = std::min(counts_.above[h], c.above[h]);
    }
    counts_.nonfinite |= c.nonfinite;
  }
  bool nonfinite() const { return counts_.nonfinite; }

  // After the pass: the quantile into *q, or false when a band missed its ranks (fall back). A half whose
  // two interpolation ranks both lie below its band has a quantile below the band's low end: it cannot be
  // the maximum when another half's quantile reaches that low end, so it is resolved without its value.
  bool finish(float* q) {
    if (overflow_) return false;
    if (lean_) counts_.above[0] = counts_.above[1] = kNone;  // not tracked by every block's scan
    const at::Tensor scratch_t = at::empty({cap_ + 16}, keys_.options());  // the filters' slack
    Key* scratch = reinterpret_cast<Key*>(scratch_t.template mutable_data_ptr<SignedKey>());
    double result = 0.0;
    bool any = false;
    double below_bound = -1.0;  // the largest low end of a band that a half's quantile lies under
    for (int t = 0; t < 2; ++t) {
      const int h = t == 0 ? first_ : 1 - first_;  // first the half whose sampled quantile is larger
      const int64_t n = counts_.total[h];
      if (n == 0) continue;
      const QuantileRank qr = quantile_rank(n, p_);
      if (qr.hi < counts_.below[h]) {
        below_bound = std::max(below_bound, QK::value(lo_[h]));
        continue;
      }
      if (any && at_most(h, qr.hi, result)) continue;  // cannot raise the maximum: no selection
      Key key_lo, next;
      if (!select_in_band(h, qr.lo - counts_.below[h], scratch, key_lo, next)) return false;
      Key key_hi = key_lo;
      if (qr.hi != qr.lo) {
        key_hi = next;
        if (key_hi == kNone) return false;
      }
      result = std::max(result, quantile_lerp(QK::value(key_lo), QK::value(key_hi), qr.frac));
      any = true;
    }
    if (below_bound >= 0.0 && !(any && result >= below_bound)) return false;
    *q = static_cast<float>(result);
    return true;
  }

 private:
  void append(const Key* keys, int64_t k) {
    if (k == 0) return;
    const int64_t at = size_.fetch_add(k);
    if (at + k > cap_) {
      overflow_ = true;
      return;
    }
    std::memcpy(keys_ptr_ + at, keys, k * sizeof(Key));
  }

  // The gathered keys' buffer, from PyTorch's allocator (as a signed integer tensor of the key's width).
  void alloc(int64_t n) { alloc_keys(std::max<int64_t>(int64_t(1) << 14, n / 8)); }
  void alloc_keys(int64_t cap) {
    cap_ = cap;
    keys_ = at::empty({cap_}, at::TensorOptions().dtype(sizeof(Key) == 4 ? at::kInt : at::kLong));
    keys_ptr_ = reinterpret_cast<Key*>(keys_.template mutable_data_ptr<SignedKey>());
  }

  // The k-th smallest magnitude of half h's gathered keys (those inside its band) and the (k+1)-th (the
  // half's smallest key above the band when the band has no more; kNone when the half has none), or
  // false when the band holds fewer than k + 1 keys (scratch: size_ + 16 keys, the compress filters
  // store whole vectors). A radix select restricted to the band: a histogram of kSelectBins buckets over
  // the key range left, then only the bucket holding rank k again, until it is one key or few enough for
  // nth_element (no sort of the whole gathered set).
  bool select_in_band(int h, int64_t k, Key* scratch, Key& kth, Key& next) const {
    constexpr int64_t kSelectBins = 2048, kSmall = 64;
    if (k < 0) return false;
    Key rlo = lo_[h], rhi = hi_[h];
    next = counts_.above[h];
    std::vector<uint32_t> hist(kSelectBins);
    // the half's keys inside its band (branch-free: one spare slot; the halves' keys alternate at random)
    Key* cur = scratch;
    int64_t n_cur = filter(keys_ptr_, size_.load(), h, rlo, rhi, cur);
    for (;;) {
      if (k >= n_cur) return false;
      // about 8 keys a bucket (fewer buckets to clear and walk for few keys)
      int64_t bins = 16;
      while (bins < kSelectBins && bins * 8 < n_cur) bins *= 2;
      int shift = 0;
      while (((rhi - rlo) >> shift) >= Key(bins)) ++shift;
      std::fill(hist.begin(), hist.begin() + bins, 0u);
      for (int64_t i = 0; i < n_cur; ++i) ++hist[(cur[i] - rlo) >> shift];
      int64_t bin = 0, cum = 0;
      while (cum + hist[bin] <= k) cum += hist[bin++];
      const int64_t cnt = hist[bin];
      k -= cum;
      const Key blo = rlo + (Key(bin) << shift), bhi = std::min<Key>(rhi, blo + ((Key(1) << shift) - 1));
      // the smallest key above the bucket, if rank k + 1 lies beyond it (else it is in the bucket)
      if (k + 1 == cnt && bhi < rhi) {
        Key mn = kNone;
        for (int64_t i = 0; i < n_cur; ++i) mn = cur[i] > bhi && cur[i] < mn ? cur[i] : mn;
        if (mn != kNone) next = mn;
      }
      if (blo == bhi) {
        kth = blo;
        if (k + 1 < cnt) next = blo;
        return true;
      }
      // the bucket's keys, in place (branch-free)
      filter(cur, n_cur, -1, blo, bhi, cur);
      n_cur = cnt;
      rlo = blo, rhi = bhi;
      if (cnt <= kSmall) {
        std::nth_element(cur, cur + k, cur + cnt);
        kth = cur[k];
        if (k + 1 < cnt) next = *std::min_element(cur + k + 1, cur + cnt);
        return true;
      }
    }
  }

  // Whether half h's quantile is at most r: its rank-hi value is (the interpolation lies between the
  // values at ranks lo <= hi), i.e. at least hi + 1 of its keys are <= the largest key of value <= r.
  bool at_most(int h, int64_t hi, double r) const {
    Key k = QK::raw(static_cast<scalar_t>(r)) & kMag;
    if (QK::value(k) > r) {
      if (k == 0) return false;
      --k;
    }
    if (k < lo_[h]) return false;  // the keys below the band are not told apart
    return counts_.below[h] + count_band(keys_ptr_, size_.load(), h, lo_[h], std::min(k, hi_[h])) >= hi + 1;
  }

  // The number of keys of half h with a magnitude in [lo, hi].
  static int64_t count_band(const Key* keys, int64_t size, int h, Key lo, Key hi) {
    if constexpr (std::is_same_v<Key, uint32_t>) {
      if (active_cpu_isa() == CpuIsa::kAvx512) return count_band_avx512(keys, size, h, lo, hi);
    }
    return count_band_scalar(keys, size, h, lo, hi);
  }
  static int64_t count_band_scalar(const Key* keys, int64_t size, int h, Key lo, Key hi) {
    int64_t c = 0;
    for (int64_t i = 0; i < size; ++i) {
      const Key r = keys[i], mag = r & kMag;
      c += ((Key(h) == (r >> kBits)) | (mag == 0)) & (mag >= lo) & (mag <= hi);
    }
    return c;
  }
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq"))) static int64_t count_band_avx512(
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

  // The magnitudes in [lo, hi] of the keys of half h (any half: h < 0) into out (out may be keys; 16
  // slots of slack).
  static int64_t filter(const Key* keys, int64_t size, int h, Key lo, Key hi, Key* out) {
    if constexpr (std::is_same_v<Key, uint32_t>) {
      if (active_cpu_isa() == CpuIsa::kAvx512) return filter_avx512(keys, size, h, lo, hi, out);
    }
    return filter_scalar(keys, size, h, lo, hi, out);
  }
  static int64_t filter_scalar(const Key* keys, int64_t size, int h, Key lo, Key hi, Key* out) {
    int64_t k = 0;
    for (int64_t i = 0; i < size; ++i) {
      const Key r = keys[i], mag = r & kMag;
      out[k] = mag;  // branch-free (the halves' keys alternate at random): overwritten unless taken
      k += ((h < 0) | (Key(h) == (r >> kBits)) | (mag == 0)) & (mag >= lo) & (mag <= hi);
    }
    return k;
  }
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq"))) static int64_t filter_avx512(
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

  // The histogram band's scan (lean_): shared_scan_avx512 without the smallest key above the band (only
  // needed when a rank is the band's last key: finish() then falls back) and with the zeros counted
  // only in the blocks that have one; about half the integer work per vector.
  template <bool kWrite>
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq"))) int64_t lean_scan_avx512(
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

  int64_t gather_band(const scalar_t* v, int64_t len, Key* out) const {
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (active_cpu_isa() == CpuIsa::kAvx512) return gather_band_avx512(v, len, out);
    }
    return gather_band_scalar(v, len, out);
  }

  // Whether the raw key r is gathered: inside the band of a half it belongs to.
  bool in_band(Key r) const {
    const Key mag = r & kMag;
    const bool zero = mag == 0, neg = (r >> kBits) != 0;
    // bitwise, not short-circuit: the signs alternate at random
    return ((!neg | zero) & (mag >= lo_[0]) & (mag <= hi_[0])) | ((neg | zero) & (mag >= lo_[1]) & (mag <= hi_[1]));
  }

  int64_t gather_band_scalar(const scalar_t* v, int64_t len, Key* out) const {
    int64_t k = 0;
    for (int64_t i = 0; i < len; ++i) {
      const Key r = QK::raw(v[i]);
      out[k] = r;  // branch-free: the slot is overwritten unless the key is taken (out has one spare)
      k += in_band(r);
    }
    return k;
  }

  __attribute__((target("avx512f,avx512bw,avx512vl"))) int64_t gather_band_avx512(const float* v, int64_t len,
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

  // count() and gather_band() in one loop. The counts go into vector lanes (a masked add per count, no
  // mask-to-scalar popcount each step), and the taken keys are compressed in a register and stored as a
  // whole vector (a compress store to memory is microcoded and slow on AMD Zen 4/5); out needs 16 slots
  // of slack.
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq"))) int64_t scan_avx512(
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

  // scan (kWrite false: v = x) or write_and_scan (kWrite: v = (x - mu) / sc in registers, the division
  // kept for the reference's bits, and y from v >= 0) on AVX-512 for one band [lo, hi] (lo > 0) shared by
  // both halves. The counts come from v's bits by integer lane arithmetic (bit 31 of m - lo is m < lo, and so on) instead of mask registers, whose few
  // ports bound the generic scan. Per lane it counts signs s, below-band, below-band negatives, zeros and
  // negative zeros; the halves' counts follow (a zero is in both halves and below the band). out needs 16
  // slots of slack.
  template <bool kWrite>
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq"))) int64_t shared_scan_avx512(
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

  // The two shared-band scans' common pieces. The values of a vector: x itself (scan), or (kWrite)
  // (x - mu) / sc with the division kept for the reference's bits, writing y from v >= 0.
  template <bool kWrite>
  __attribute__((target("avx512f,avx512bw,avx512vl"))) static __m512 scan_values(
      const float* x, float* y, int64_t i, __m512 vmu, __m512 vsc, __m512 ypos, __m512 yneg) {
    if constexpr (!kWrite) return _mm512_loadu_ps(x + i);
    const __m512 v = _mm512_div_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), vmu), vsc);
    _mm512_storeu_ps(y + i, _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GE_OQ), yneg, ypos));
    return v;
  }

  // The halves' counts from the first i values' lane totals: signs ns, below the band nb (of which
  // negative nbs), zeros nz (of which -0.0 nzs; a zero is in both halves and below the band).
  __attribute__((target("avx512f"))) static void add_lane_counts(Counts& c, int64_t i, int64_t ns, int64_t nb,
                                                                 int64_t nbs, int64_t nz, int64_t nzs, __m512i m_max) {
    c.total[0] += i - ns + nzs, c.total[1] += ns + nz - nzs;
    c.below[0] += nb - nbs + nzs, c.below[1] += nbs + nz - nzs;
    c.nonfinite |= uint32_t(_mm512_reduce_max_epu32(m_max)) >= 0x7f800000u;
  }

  // The values [i, len) after the vector loop, by the plain loops (y written for kWrite); returns how many
  // keys went to out.
  template <bool kWrite>
  int64_t scan_tail(const float* x, float* y, int64_t i, int64_t len, float mu, float sc, float y_pos, float y_neg,
                    uint32_t* out, Counts& c) const {
    if (i >= len) return 0;
    const float* v = x + i;
    float tail[16];
    if constexpr (kWrite) {
      two_values_block<float, float>(x + i, y + i, tail, len - i, mu, sc, y_pos, y_neg);
      v = tail;
    }
    count(v, len - i, c);
    return gather_band_scalar(v, len - i, out);
  }

  bool shared_band() const { return lo_[0] == lo_[1] && hi_[0] == hi_[1] && lo_[0] > 0; }

  double p_;
  Key est_[2] = {kNone, kNone};  // the histogram constructor's sampled quantiles (bucket floors)
  int first_ = 0;      // the half whose band is shared (its sampled quantile the larger)
  bool lean_ = false;  // built from a histogram: lean_scan_avx512, no smallest key above the band
  Key lo_[2], hi_[2];
  int64_t cap_;
  at::Tensor keys_;
  Key* keys_ptr_ = nullptr;
  std::atomic<int64_t> size_{0};
  std::atomic<bool> overflow_{false};
  Counts counts_;
  std::mutex mutex_;
};

}  // namespace erbnn
