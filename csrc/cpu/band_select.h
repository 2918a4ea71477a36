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
#include "tuning.h"

namespace erbnn {

// ---- one pass around a sampled band (float32 / float64 values) ----
// A sample of the values brackets each half's wanted ranks with a band of keys [lo, hi]. One pass then
// counts, per half, the keys below the band, gathers those inside it (a few percent of the values) and
// tracks the smallest key above it: vector compares and a compress-store, no histogram. When the counts
// show that each band holds its ranks (almost always), the quantile is selected from the gathered keys;
// otherwise (an unlucky sample, or more candidates than the buffer takes) the caller falls back to the
// radix select. Both are exact, so the result is the same bits either way. The thresholds between the two
// are in tuning.h; the bands' bracketing from a sample is defined in band_select_sample.h and the AVX-512
// scans in band_select_avx512.h (their scalar twins stay here).
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
  BandSelect(double p, int64_t n, const scalar_t* sample, int64_t m);

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
  BandSelect(double p, int64_t n, const scalar_t* sample, int64_t m, FromHistogram);

  // The largest magnitude key of v[0, m).
  static Key max_magnitude(const scalar_t* v, int64_t m) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (active_cpu_isa() == CpuIsa::kAvx512) return max_magnitude_avx512(v, m);
    }
    Key top = 0;
    for (int64_t i = 0; i < m; ++i) top = std::max<Key>(top, QK::raw(v[i]) & kMag);
    return top;
  }
  __attribute__((target("avx512f"))) static uint32_t max_magnitude_avx512(const float* v, int64_t m);

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
      const uint32_t* keys, int64_t size, int h, uint32_t lo, uint32_t hi);

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
      const uint32_t* keys, int64_t size, int h, uint32_t lo, uint32_t hi, uint32_t* out);

  // The histogram band's scan (lean_): shared_scan_avx512 without the smallest key above the band (only
  // needed when a rank is the band's last key: finish() then falls back) and with the zeros counted
  // only in the blocks that have one; about half the integer work per vector.
  template <bool kWrite>
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq"))) int64_t lean_scan_avx512(
      const float* x, float* y, int64_t len, float mu, float sc, float y_pos, float y_neg, uint32_t* out,
      Counts& c) const;

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
                                                                                 uint32_t* out) const;

  // count() and gather_band() in one loop. The counts go into vector lanes (a masked add per count, no
  // mask-to-scalar popcount each step), and the taken keys are compressed in a register and stored as a
  // whole vector (a compress store to memory is microcoded and slow on AMD Zen 4/5); out needs 16 slots
  // of slack.
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq"))) int64_t scan_avx512(
      const float* v, int64_t len, uint32_t* out, Counts& c) const;

  // scan (kWrite false: v = x) or write_and_scan (kWrite: v = (x - mu) / sc in registers, the division
  // kept for the reference's bits, and y from v >= 0) on AVX-512 for one band [lo, hi] (lo > 0) shared by
  // both halves. The counts come from v's bits by integer lane arithmetic (bit 31 of m - lo is m < lo, and so on) instead of mask registers, whose few
  // ports bound the generic scan. Per lane it counts signs s, below-band, below-band negatives, zeros and
  // negative zeros; the halves' counts follow (a zero is in both halves and below the band). out needs 16
  // slots of slack.
  template <bool kWrite>
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq"))) int64_t shared_scan_avx512(
      const float* x, float* y, int64_t len, float mu, float sc, float y_pos, float y_neg, uint32_t* out,
      Counts& c) const;

  // The two shared-band scans' common pieces. The values of a vector: x itself (scan), or (kWrite)
  // (x - mu) / sc with the division kept for the reference's bits, writing y from v >= 0.
  template <bool kWrite>
  __attribute__((target("avx512f,avx512bw,avx512vl"))) static __m512 scan_values(
      const float* x, float* y, int64_t i, __m512 vmu, __m512 vsc, __m512 ypos, __m512 yneg);

  // The halves' counts from the first i values' lane totals: signs ns, below the band nb (of which
  // negative nbs), zeros nz (of which -0.0 nzs; a zero is in both halves and below the band).
  __attribute__((target("avx512f"))) static void add_lane_counts(Counts& c, int64_t i, int64_t ns, int64_t nb,
                                                                 int64_t nbs, int64_t nz, int64_t nzs, __m512i m_max);

  // The values [i, len) after the vector loop, by the plain loops (y written for kWrite); returns how many
  // keys went to out.
  template <bool kWrite>
  int64_t scan_tail(const float* x, float* y, int64_t i, int64_t len, float mu, float sc, float y_pos, float y_neg,
                    uint32_t* out, Counts& c) const {
    if (i >= len) return 0;
    const float* v = x + i;
    float tail[16] = {};  // zeroed: the compiler cannot see two_values_block fill it
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

#include "band_select_sample.h"
#include "band_select_avx512.h"
