// The CPU radix select of two_sided_quantile (common/quantile_math.h), split into phases so that the
// values can come from anywhere: the plain op feeds x itself, the training ops feed the standardised
// values block by block as their restoration passes compute them (restore_train.cpp), so that these
// are never materialised.
//   1. top digit: each task fills a TopHistogram from its blocks of values and merges it;
//   2. plan(): the bucket of each half's rank; then each task gathers the raw keys of those two
//      buckets from its blocks (gather_block) and appends them (append);
//   3. finish(): the remaining digits on the gathered keys; the (lo+1)-th key when it lies beyond the
//      lo-th's top bucket takes one more pass over the values (a callback), rarely.
// The result depends only on the multiset of values, so any split into blocks and tasks gives the
// same bits.
#pragma once

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <numeric>
#include <type_traits>
#include <vector>

#include "common/quantile_math.h"
#include "cpu_isa.h"
#include "cpu_utils.h"

namespace erbnn {

// Half h holds the keys whose sign bit is h: half 0 is x >= 0, half 1 is |x| for x <= 0. A zero is in
// both. A half's selection: `prefix` holds the digits chosen so far, `rank` the wanted rank among the
// keys of the half that share the prefix.
struct HalfSelect {
  int64_t n = 0;
  QuantileRank q{};
  uint64_t prefix = 0, key_lo = 0, key_hi = 0;
  int64_t rank = 0;
  bool need_min = false;  // key_hi is the smallest key above key_lo, not yet found
  bool active() const { return n > 0; }
};

// What a key must look like to stay in the selection: (raw & mask) == want[sign], where mask covers
// the digits chosen so far plus the sign bit; an empty half wants a value no key has (all ones:
// the magnitude bits under the mask cannot all be set since those of Inf/NaN were refused).
template <typename scalar_t>
struct Filter {
  using Key = typename QuantileKey<scalar_t>::Key;
  Key mask = 0, want[2] = {0, 0};
  bool zero_in[2] = {false, false};  // a zero (key 0) shares half h's prefix
  Filter() = default;
  Filter(const HalfSelect hs[2], uint64_t digit_mask) {
    constexpr Key sign = Key(1) << QuantileKey<scalar_t>::kBits;
    mask = Key(digit_mask) | sign;
    for (int h = 0; h < 2; ++h) {
      want[h] = hs[h].active() ? Key(hs[h].prefix) | (h ? sign : 0) : std::numeric_limits<Key>::max();
      zero_in[h] = hs[h].active() && hs[h].prefix == 0;
    }
  }
};

namespace radix_detail {

// raw >> shift = sign * kRadixBins + top digit; 64-bit flush period of the 32-bit task counters.
constexpr int64_t kFlushEvery = int64_t(1) << 30;

// Bins of 16 float32 keys at a time; the counts go through memory one by one (no vector scatter-add),
// but the zero / non-finite bookkeeping stays in vectors.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq"))) inline void top_add_avx512(
    const float* x, int64_t len, uint32_t* h0, uint32_t* h1, uint32_t& zeros, uint32_t& neg_zeros,
    bool& nonfinite) {
  constexpr int shift = 31 - kRadixBits;
  const __m512i mag = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000),
                negz = _mm512_set1_epi32(int(0x80000000u));
  __mmask16 bad = 0;
  alignas(64) uint32_t idx[16];
  int64_t i = 0;
  for (; i + 16 <= len; i += 16) {
    const __m512i r = _mm512_loadu_si512(x + i);
    _mm512_store_si512(idx, _mm512_srli_epi32(r, shift));
    bad |= _mm512_cmpge_epu32_mask(_mm512_and_si512(r, mag), inf);
    zeros += __builtin_popcount(_mm512_testn_epi32_mask(r, mag));
    neg_zeros += __builtin_popcount(_mm512_cmpeq_epi32_mask(r, negz));
#pragma GCC unroll 8
    for (int j = 0; j < 16; j += 2) {
      ++h0[idx[j]];
      ++h1[idx[j + 1]];
    }
  }
  for (; i < len; ++i) {
    uint32_t r;
    std::memcpy(&r, x + i, 4);
    ++h0[r >> shift];
    const uint32_t m = r & 0x7fffffffu;
    bad |= m >= 0x7f800000u;
    zeros += m == 0;
    neg_zeros += r == 0x80000000u;
  }
  nonfinite |= bad != 0;
}

}  // namespace radix_detail

// One task's histogram of the top digit of both halves (two interleaved copies: back-to-back
// increments of one bin do not wait on each other), with its zero counts and NaN/Inf flag.
template <typename scalar_t>
class TopHistogram {
 public:
  using QK = QuantileKey<scalar_t>;
  using Key = typename QK::Key;
  TopHistogram() : sub_(4 * kRadixBins, 0u), counts_(2 * kRadixBins, 0) {}

  void add(const scalar_t* x, int64_t len) {
    while (len > 0) {
      const int64_t m = std::min(len, radix_detail::kFlushEvery - pending_);
      add_some(x, m);
      x += m, len -= m, pending_ += m;
      if (pending_ == radix_detail::kFlushEvery) flush();
    }
  }
  // Counts into hist[2 * kRadixBins] (int64); each zero also counts in the other half's bucket 0.
  void flush() {
    for (int j = 0; j < 2 * kRadixBins; ++j) {
      counts_[j] += int64_t(sub_[j]) + sub_[2 * kRadixBins + j];
      sub_[j] = sub_[2 * kRadixBins + j] = 0;
    }
    counts_[0] += neg_zeros_;               // -0.0 is also in half 0
    counts_[kRadixBins] += zeros_ - neg_zeros_;  // +0.0 is also in half 1
    zeros_ = neg_zeros_ = 0;
    pending_ = 0;
  }
  const std::vector<int64_t>& counts() const { return counts_; }
  bool nonfinite() const { return nonfinite_; }

 private:
  void add_some(const scalar_t* x, int64_t len) {
    uint32_t* h0 = sub_.data();
    uint32_t* h1 = sub_.data() + 2 * kRadixBins;
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (active_cpu_isa() == CpuIsa::kAvx512) {
        radix_detail::top_add_avx512(x, len, h0, h1, zeros_, neg_zeros_, nonfinite_);
        return;
      }
    }
    constexpr int shift = QK::kBits - kRadixBits;
    constexpr Key mag_mask = (Key(1) << QK::kBits) - 1;
    uint32_t zeros = 0, neg_zeros = 0;  // in registers: counting them in memory would chain stores
    bool nonfinite = false;
    int64_t i = 0;
    for (; i + 1 < len; i += 2) {
      const Key r0 = QK::raw(x[i]), r1 = QK::raw(x[i + 1]);
      ++h0[r0 >> shift];
      ++h1[r1 >> shift];
      const Key m0 = r0 & mag_mask, m1 = r1 & mag_mask;
      nonfinite |= (m0 >= QK::kInf) | (m1 >= QK::kInf);
      zeros += uint32_t(m0 == 0) + uint32_t(m1 == 0);
      neg_zeros += uint32_t(m0 == 0 && (r0 >> QK::kBits)) + uint32_t(m1 == 0 && (r1 >> QK::kBits));
    }
    if (i < len) {
      const Key r = QK::raw(x[i]), m = r & mag_mask;
      ++h0[r >> shift];
      nonfinite |= m >= QK::kInf;
      zeros += m == 0;
      neg_zeros += m == 0 && (r >> QK::kBits);
    }
    zeros_ += zeros, neg_zeros_ += neg_zeros;
    nonfinite_ |= nonfinite;
  }

  std::vector<uint32_t> sub_;
  std::vector<int64_t> counts_;
  uint32_t zeros_ = 0, neg_zeros_ = 0;
  int64_t pending_ = 0;
  bool nonfinite_ = false;
};

// ---- gather: append the raw keys of x[begin, end) that pass the filter to out; return how many.
template <typename scalar_t>
int64_t gather_scalar(const scalar_t* x, int64_t begin, int64_t end, const Filter<scalar_t>& f,
                      typename QuantileKey<scalar_t>::Key* out) {
  using Key = typename QuantileKey<scalar_t>::Key;
  constexpr Key mag_mask = (Key(1) << QuantileKey<scalar_t>::kBits) - 1;
  const bool zero_any = f.zero_in[0] || f.zero_in[1];
  int64_t k = 0;
  for (int64_t i = begin; i < end; ++i) {
    const Key r = QuantileKey<scalar_t>::raw(x[i]), m = r & f.mask;
    out[k] = r;  // branch-free: the slot is overwritten unless the key passes (out has one spare)
    k += (m == f.want[0]) | (m == f.want[1]) | (zero_any & ((r & mag_mask) == 0));
  }
  return k;
}

namespace radix_detail {

__attribute__((target("avx512f,avx512bw,avx512vl"))) inline int64_t gather_avx512(
    const float* x, int64_t begin, int64_t end, const Filter<float>& f, uint32_t* out) {
  const __m512i mask = _mm512_set1_epi32(int(f.mask)), w0 = _mm512_set1_epi32(int(f.want[0])),
                w1 = _mm512_set1_epi32(int(f.want[1])), mag = _mm512_set1_epi32(0x7fffffff);
  const bool zero_any = f.zero_in[0] || f.zero_in[1];
  int64_t i = begin, k = 0;
  for (; i + 16 <= end; i += 16) {
    const __m512i r = _mm512_loadu_si512(x + i), m = _mm512_and_si512(r, mask);
    __mmask16 take = _mm512_cmpeq_epi32_mask(m, w0) | _mm512_cmpeq_epi32_mask(m, w1);
    if (zero_any) take |= _mm512_testn_epi32_mask(r, mag);
    // compressed in a register and stored whole (out has 16 slots of slack): a compress store to
    // memory is microcoded on AMD Zen 4/5
    _mm512_storeu_si512(out + k, _mm512_maskz_compress_epi32(take, r));
    k += __builtin_popcount(take);
  }
  return k + gather_scalar(x, i, end, f, out + k);
}

__attribute__((target("avx2"))) inline int64_t gather_avx2(const float* x, int64_t begin, int64_t end,
                                                           const Filter<float>& f, uint32_t* out) {
  const __m256i mask = _mm256_set1_epi32(int(f.mask)), w0 = _mm256_set1_epi32(int(f.want[0])),
                w1 = _mm256_set1_epi32(int(f.want[1])), mag = _mm256_set1_epi32(0x7fffffff),
                zero = _mm256_setzero_si256();
  const bool zero_any = f.zero_in[0] || f.zero_in[1];
  int64_t i = begin, k = 0;
  for (; i + 8 <= end; i += 8) {
    const __m256i r = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i));
    const __m256i m = _mm256_and_si256(r, mask);
    __m256i take = _mm256_or_si256(_mm256_cmpeq_epi32(m, w0), _mm256_cmpeq_epi32(m, w1));
    if (zero_any) take = _mm256_or_si256(take, _mm256_cmpeq_epi32(_mm256_and_si256(r, mag), zero));
    // Most groups of 8 hold no candidate: skip them with one test.
    if (!_mm256_testz_si256(take, take)) k += gather_scalar(x, i, i + 8, f, out + k);
  }
  return k + gather_scalar(x, i, end, f, out + k);
}

}  // namespace radix_detail

// Keys of x[0, len) that pass f, written to out (room for len + 16); returns how many.
template <typename scalar_t>
int64_t gather_block(const scalar_t* x, int64_t len, const Filter<scalar_t>& f,
                     typename QuantileKey<scalar_t>::Key* out) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    const CpuIsa isa = active_cpu_isa();
    if (isa == CpuIsa::kAvx512) return radix_detail::gather_avx512(x, 0, len, f, out);
    if (isa == CpuIsa::kAvx2) return radix_detail::gather_avx2(x, 0, len, f, out);
  }
  return gather_scalar(x, 0, len, f, out);
}

// The selection of both halves over phases 1-3 (see the top of this file).
template <typename scalar_t>
class RadixSelect {
 public:
  using QK = QuantileKey<scalar_t>;
  using Key = typename QK::Key;
  static constexpr int kPasses = radix_passes(QK::kBits);

  explicit RadixSelect(double p) : p_(p), hist_(2 * kRadixBins, 0) {}

  // Phase 1: a task's histogram (thread-safe).
  void merge(TopHistogram<scalar_t>& top) {
    top.flush();
    std::lock_guard<std::mutex> lock(mutex_);
    const auto& c = top.counts();
    for (int j = 0; j < 2 * kRadixBins; ++j) hist_[j] += c[j];
    nonfinite_ |= top.nonfinite();
  }
  bool nonfinite() const { return nonfinite_; }

  // After phase 1 (no NaN/Inf seen, at least one value): the top bucket of each half.
  void plan() {
    const int shift0 = radix_shift(QK::kBits, 0);
    bound_ = 0;
    for (int h = 0; h < 2; ++h) {
      const int64_t* hh = hist_.data() + h * kRadixBins;
      hs_[h].n = std::accumulate(hh, hh + kRadixBins, int64_t(0));
      if (!hs_[h].active()) continue;
      hs_[h].q = quantile_rank(hs_[h].n, p_);
      hs_[h].rank = hs_[h].q.lo;
      choose_bucket(hs_[h], hh, shift0, kRadixBits, kPasses == 1);
      bound_ += hh[hs_[h].prefix >> shift0];  // zeros may count twice: a bound
    }
    digit_mask_ = uint64_t(kRadixBins - 1) << shift0;
    filter_ = Filter<scalar_t>(hs_, digit_mask_);
    keys_.reset(new Key[bound_ + 1]);
    size_ = 0;
  }
  const Filter<scalar_t>& filter() const { return filter_; }

  // Phase 2: keys gathered by a task (thread-safe; the order of the keys does not matter).
  void append(const Key* keys, int64_t k) {
    if (k == 0) return;
    const int64_t at = size_.fetch_add(k);
    std::memcpy(keys_.get() + at, keys, k * sizeof(Key));
  }

  // Phases 2 and 3 over values that come in blocks of at most kBlock (on the stack) from
  // for_each_block(fn), which calls fn(const scalar_t* values, int64_t len) over all the values, from
  // any thread, in any order (the training ops recompute the standardised values block by block).
  template <int64_t kBlock, typename ForEachBlock>
  float gather_and_finish(ForEachBlock&& for_each_block) {
    plan();
    const Filter<scalar_t> f = filter_;
    for_each_block([&](const scalar_t* v, int64_t len) {
      Key keys[kBlock + 16];
      append(keys, gather_block(v, len, f, keys));
    });
    return finish(for_each_block);
  }

  // Phase 3. for_each_block as above; it runs only when a rank's neighbour lies in another top bucket.
  template <typename ForEachBlock>
  float finish(ForEachBlock&& for_each_block) {
    const int64_t size = size_.load();
    for (int pass = 1; pass < kPasses; ++pass) {
      const int shift = radix_shift(QK::kBits, pass), width = radix_width(QK::kBits, pass);
      digit_histogram(size, Filter<scalar_t>(hs_, digit_mask_), shift, width);
      for (int h = 0; h < 2; ++h)
        if (hs_[h].active()) choose_bucket(hs_[h], hist_.data() + h * kRadixBins, shift, width, pass == kPasses - 1);
      digit_mask_ |= uint64_t((1 << width) - 1) << shift;
    }
    // key_hi beyond the last bucket: first among the gathered keys (they hold the whole top bucket),
    // else in the next top buckets, over all the values.
    if (need_min()) min_above_keys(size);
    if (need_min()) {
      const Key above[2] = {bound_above(0), bound_above(1)};
      std::mutex merge;
      Key best[2] = {kNone, kNone};
      for_each_block([&](const scalar_t* v, int64_t len) {
        Key m[2] = {kNone, kNone};
        min_above_range(v, len, above, m);
        std::lock_guard<std::mutex> lock(merge);
        best[0] = std::min(best[0], m[0]);
        best[1] = std::min(best[1], m[1]);
      });
      settle_min(best);
    }
    double result = 0.0;  // at least one half is active
    for (const HalfSelect& h : hs_)
      if (h.active())
        result = std::max(result, quantile_lerp(QK::value(Key(h.key_lo)), QK::value(Key(h.key_hi)), h.q.frac));
    return static_cast<float>(result);
  }

 private:
  static constexpr Key kNone = std::numeric_limits<Key>::max();
  static constexpr int kBits = QK::kBits;
  static constexpr Key kMagMask = (Key(1) << kBits) - 1;

  bool need_min() const { return hs_[0].need_min || hs_[1].need_min; }
  Key bound_above(int h) const { return hs_[h].need_min ? Key(hs_[h].key_lo) : kNone; }

  template <typename Src>
  static void min_above_range(const Src* src, int64_t n, const Key above[2], Key m[2]) {
    for (int64_t i = 0; i < n; ++i) {
      Key r;
      if constexpr (std::is_same_v<Src, Key>)
        r = src[i];
      else
        r = QK::raw(src[i]);
      const Key s = r >> kBits, mag = r & kMagMask;
      if (mag > above[s] && mag < m[s]) m[s] = mag;  // a zero is never above anything
    }
  }

  void settle_min(const Key best[2]) {
    for (int h = 0; h < 2; ++h)
      if (hs_[h].need_min && best[h] != kNone) {
        hs_[h].key_hi = best[h];
        hs_[h].need_min = false;
      }
  }

  void min_above_keys(int64_t size) {
    const Key above[2] = {bound_above(0), bound_above(1)};
    std::mutex merge;
    Key best[2] = {kNone, kNone};
    at::parallel_for(0, size, kElemGrain, [&](int64_t begin, int64_t end) {
      Key m[2] = {kNone, kNone};
      min_above_range(keys_.get() + begin, end - begin, above, m);
      std::lock_guard<std::mutex> lock(merge);
      best[0] = std::min(best[0], m[0]);
      best[1] = std::min(best[1], m[1]);
    });
    settle_min(best);
  }

  // Histogram of one digit of the gathered keys that pass f: hist_[sign * kRadixBins + digit].
  void digit_histogram(int64_t size, const Filter<scalar_t>& f, int shift, int width) {
    std::fill(hist_.begin(), hist_.end(), 0);
    std::mutex merge;
    at::parallel_for(0, size, kElemGrain, [&](int64_t begin, int64_t end) {
      std::vector<int64_t> local(2 * kRadixBins, 0);
      for (int64_t i = begin; i < end; ++i) {
        const Key r = keys_[i], s = r >> kBits;
        if ((r & f.mask) == f.want[s]) ++local[s * kRadixBins + ((r >> shift) & ((Key(1) << width) - 1))];
        if ((r & kMagMask) == 0 && f.zero_in[1 - s]) ++local[(1 - s) * kRadixBins];  // zero: both halves
      }
      std::lock_guard<std::mutex> lock(merge);
      for (int j = 0; j < 2 * kRadixBins; ++j) hist_[j] += local[j];
    });
  }

  // Picks the bucket of hs.rank in this digit's histogram of the half; on the last digit also settles
  // key_hi when this histogram can tell it.
  static void choose_bucket(HalfSelect& hs, const int64_t* hist, int shift, int width, bool last) {
    const int bins = 1 << width;
    int b = 0;
    int64_t before = 0;
    while (before + hist[b] <= hs.rank) before += hist[b++];  // rank < the half's total: b < bins
    hs.rank -= before;
    hs.prefix |= uint64_t(b) << shift;
    if (!last) return;
    hs.key_lo = hs.prefix;
    if (hs.q.hi == hs.q.lo || hs.rank + 1 < hist[b]) {
      hs.key_hi = hs.key_lo;  // the next rank holds the same key
      return;
    }
    int next = b + 1;
    while (next < bins && hist[next] == 0) ++next;
    if (next < bins)
      hs.key_hi = (hs.prefix & ~(uint64_t(bins - 1) << shift)) | (uint64_t(next) << shift);
    else
      hs.need_min = true;
  }

  double p_;
  std::vector<int64_t> hist_;
  HalfSelect hs_[2];
  uint64_t digit_mask_ = 0;
  Filter<scalar_t> filter_;
  int64_t bound_ = 0;
  std::unique_ptr<Key[]> keys_;
  std::atomic<int64_t> size_{0};
  std::mutex mutex_;
  bool nonfinite_ = false;
};

}  // namespace erbnn

namespace erbnn {

// q of values that come in blocks of at most kBlock from for_each_block(fn) (fn(values, len) over all
// the values, from any thread): the radix select, one task histogram per thread.
template <typename scalar_t, int64_t kBlock, typename ForEachBlock>
float radix_select_blocks(double p, ForEachBlock&& for_each_block, const char* nonfinite_message) {
  RadixSelect<scalar_t> rs(p);
  std::vector<TopHistogram<scalar_t>> tops(at::get_num_threads());
  for_each_block([&](const scalar_t* v, int64_t len) { tops[at::get_thread_num()].add(v, len); });
  for (auto& t : tops) rs.merge(t);
  TORCH_CHECK_VALUE(!rs.nonfinite(), nonfinite_message);
  return rs.template gather_and_finish<kBlock>(for_each_block);
}

}  // namespace erbnn
