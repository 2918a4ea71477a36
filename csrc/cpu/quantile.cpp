// two_sided_quantile, CPU: an O(n) radix select on the magnitude key (common/quantile_math.h), both
// halves at once, never a sort.
//   1. One pass over x: per-chunk histograms of the top 11-bit digit of each half's keys, the zero
//      counts and the NaN/Inf check. The bucket holding rank lo of each half is then known.
//   2. One pass over x gathers the raw keys of those two buckets (AVX-512 compress-store for float32;
//      a vector skip test on AVX2): usually a few percent of x.
//   3. The remaining digits are selected on the gathered keys.
// The (lo+1)-th value is the lo-th's key again, the next non-empty bucket of the last histogram, or
// the smallest key above it (in the gathered keys, or, rarely, one more pass over x).
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <atomic>
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
namespace {

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

// Raw bits (sign included) of an element of x, or of an already gathered key.
template <typename scalar_t, typename Src>
inline typename QuantileKey<scalar_t>::Key load_raw(Src v) {
  if constexpr (std::is_same_v<Src, typename QuantileKey<scalar_t>::Key>)
    return v;
  else
    return QuantileKey<scalar_t>::raw(v);
}

// What a key must look like to stay in the selection: (raw & mask) == want[sign], where mask covers
// the digits chosen so far plus the sign bit; an empty half wants a value no key has (all ones:
// the magnitude bits under the mask cannot all be set since those of Inf/NaN were refused).
template <typename scalar_t>
struct Filter {
  using Key = typename QuantileKey<scalar_t>::Key;
  Key mask, want[2];
  bool zero_in[2];  // a zero (key 0) shares half h's prefix
  Filter(const HalfSelect hs[2], uint64_t digit_mask) {
    constexpr Key sign = Key(1) << QuantileKey<scalar_t>::kBits;
    mask = Key(digit_mask) | sign;
    for (int h = 0; h < 2; ++h) {
      want[h] = hs[h].active() ? Key(hs[h].prefix) | (h ? sign : 0) : std::numeric_limits<Key>::max();
      zero_in[h] = hs[h].active() && hs[h].prefix == 0;
    }
  }
};

// Fixed chunks of x (the gather pass reuses pass 1's per-chunk counts to place its output), each
// worth far more than a parallel region's start (a pass costs about 1 ns per element).
constexpr int64_t kMinChunk = int64_t(1) << 18;

struct Chunks {
  int64_t n, len, count;
  explicit Chunks(int64_t n_) : n(n_) {
    const int64_t threads = at::get_num_threads();
    len = std::max<int64_t>(kMinChunk, (n + 4 * threads - 1) / (4 * threads));
    len = std::min<int64_t>(len, int64_t(1) << 28);  // per-chunk counts fit uint32
    count = (n + len - 1) / len;
  }
  int64_t begin(int64_t c) const { return c * len; }
  int64_t end(int64_t c) const { return std::min(n, (c + 1) * len); }
};

// Pass 1: hist[c][sign * kRadixBins + top digit] per chunk c, each zero also counted in the other
// half's bucket 0. Returns whether x holds NaN or Inf.
template <typename scalar_t>
bool top_histograms(const scalar_t* x, const Chunks& ch, int64_t* hist) {
  using QK = QuantileKey<scalar_t>;
  using Key = typename QK::Key;
  constexpr int shift = QK::kBits - kRadixBits;  // raw >> shift = sign * kRadixBins + digit
  constexpr Key mag_mask = (Key(1) << QK::kBits) - 1;
  std::atomic<bool> bad{false};
  at::parallel_for(0, ch.count, 1, [&](int64_t c0, int64_t c1) {
    // Two interleaved copies: back-to-back increments of one bin do not wait on each other.
    std::vector<uint32_t> sub(4 * kRadixBins);
    for (int64_t c = c0; c < c1; ++c) {
      std::fill(sub.begin(), sub.end(), 0u);
      uint32_t* h0 = sub.data();
      uint32_t* h1 = sub.data() + 2 * kRadixBins;
      uint32_t zeros = 0, neg_zeros = 0;  // in registers: counting them in memory would chain stores
      bool nonfinite = false;
      const int64_t e = ch.end(c);
      int64_t i = ch.begin(c);
      for (; i + 1 < e; i += 2) {
        const Key r0 = QK::raw(x[i]), r1 = QK::raw(x[i + 1]);
        ++h0[r0 >> shift];
        ++h1[r1 >> shift];
        const Key m0 = r0 & mag_mask, m1 = r1 & mag_mask;
        nonfinite |= (m0 >= QK::kInf) | (m1 >= QK::kInf);
        zeros += uint32_t(m0 == 0) + uint32_t(m1 == 0);
        neg_zeros += uint32_t(m0 == 0 && (r0 >> QK::kBits)) + uint32_t(m1 == 0 && (r1 >> QK::kBits));
      }
      if (i < e) {
        const Key r = QK::raw(x[i]), m = r & mag_mask;
        ++h0[r >> shift];
        nonfinite |= m >= QK::kInf;
        zeros += m == 0;
        neg_zeros += m == 0 && (r >> QK::kBits);
      }
      int64_t* out = hist + c * 2 * kRadixBins;
      for (int j = 0; j < 2 * kRadixBins; ++j) out[j] = int64_t(h0[j]) + h1[j];
      out[0] += neg_zeros;               // -0.0 is also in half 0
      out[kRadixBins] += zeros - neg_zeros;  // +0.0 is also in half 1
      if (nonfinite) bad = true;
    }
  });
  return bad;
}

// Pass 2 kernels: append the raw keys of x[begin, end) that pass the filter to out; return how many.
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

__attribute__((target("avx512f,avx512bw,avx512vl"))) int64_t gather_avx512(
    const float* x, int64_t begin, int64_t end, const Filter<float>& f, uint32_t* out) {
  const __m512i mask = _mm512_set1_epi32(int(f.mask)), w0 = _mm512_set1_epi32(int(f.want[0])),
                w1 = _mm512_set1_epi32(int(f.want[1])), mag = _mm512_set1_epi32(0x7fffffff);
  const bool zero_any = f.zero_in[0] || f.zero_in[1];
  int64_t i = begin, k = 0;
  for (; i + 16 <= end; i += 16) {
    const __m512i r = _mm512_loadu_si512(x + i), m = _mm512_and_si512(r, mask);
    __mmask16 take = _mm512_cmpeq_epi32_mask(m, w0) | _mm512_cmpeq_epi32_mask(m, w1);
    if (zero_any) take |= _mm512_testn_epi32_mask(r, mag);
    _mm512_mask_compressstoreu_epi32(out + k, take, r);
    k += __builtin_popcount(take);
  }
  return k + gather_scalar(x, i, end, f, out + k);
}

__attribute__((target("avx2"))) int64_t gather_avx2(const float* x, int64_t begin, int64_t end,
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

template <typename scalar_t>
int64_t gather_chunk(const scalar_t* x, int64_t begin, int64_t end, const Filter<scalar_t>& f,
                     typename QuantileKey<scalar_t>::Key* out) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    const CpuIsa isa = active_cpu_isa();
    if (isa == CpuIsa::kAvx512) return gather_avx512(x, begin, end, f, out);
    if (isa == CpuIsa::kAvx2) return gather_avx2(x, begin, end, f, out);
  }
  return gather_scalar(x, begin, end, f, out);
}

// The gathered keys: data[0, size).
template <typename Key>
struct Gathered {
  std::unique_ptr<Key[]> data;
  int64_t size = 0;
};

// Pass 2: the raw keys of x that pass f, packed. bound[c] >= chunk c's count of them (from pass 1).
template <typename scalar_t>
Gathered<typename QuantileKey<scalar_t>::Key> gather(const scalar_t* x, const Chunks& ch, const Filter<scalar_t>& f,
                                                     const std::vector<int64_t>& bound) {
  using Key = typename QuantileKey<scalar_t>::Key;
  std::vector<int64_t> offset(ch.count + 1, 0), count(ch.count, 0);
  for (int64_t c = 0; c < ch.count; ++c) offset[c + 1] = offset[c] + bound[c] + 1;  // +1: the spare slot
  Gathered<Key> g{std::unique_ptr<Key[]>(new Key[offset[ch.count]])};  // uninitialized: used slots are written
  at::parallel_for(0, ch.count, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      count[c] = gather_chunk(x, ch.begin(c), ch.end(c), f, g.data.get() + offset[c]);
  });
  for (int64_t c = 0; c < ch.count; ++c) {  // close the gaps (moves only leftwards)
    std::memmove(g.data.get() + g.size, g.data.get() + offset[c], count[c] * sizeof(Key));
    g.size += count[c];
  }
  return g;
}

// Histogram of one digit of the gathered keys that pass f: hist[sign * kRadixBins + digit].
template <typename scalar_t>
void digit_histogram(const Gathered<typename QuantileKey<scalar_t>::Key>& keys, const Filter<scalar_t>& f,
                     int shift, int width, std::vector<int64_t>& hist) {
  using Key = typename QuantileKey<scalar_t>::Key;
  constexpr int bits = QuantileKey<scalar_t>::kBits;
  constexpr Key mag_mask = (Key(1) << bits) - 1;
  std::fill(hist.begin(), hist.end(), 0);
  std::mutex merge;
  at::parallel_for(0, keys.size, kElemGrain, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> local(2 * kRadixBins, 0);
    for (int64_t i = begin; i < end; ++i) {
      const Key r = keys.data[i], s = r >> bits;
      if ((r & f.mask) == f.want[s]) ++local[s * kRadixBins + ((r >> shift) & ((Key(1) << width) - 1))];
      if ((r & mag_mask) == 0 && f.zero_in[1 - s]) ++local[(1 - s) * kRadixBins];  // zero: both halves
    }
    std::lock_guard<std::mutex> lock(merge);
    for (int j = 0; j < 2 * kRadixBins; ++j) hist[j] += local[j];
  });
}

// Smallest key above key_lo in each half with need_min, over src (x or the gathered keys).
template <typename scalar_t, typename Src>
void min_above(const Src* src, int64_t n, HalfSelect hs[2]) {
  using Key = typename QuantileKey<scalar_t>::Key;
  constexpr int bits = QuantileKey<scalar_t>::kBits;
  constexpr Key none = std::numeric_limits<Key>::max();
  const Key above[2] = {hs[0].need_min ? Key(hs[0].key_lo) : none, hs[1].need_min ? Key(hs[1].key_lo) : none};
  std::mutex merge;
  Key best[2] = {none, none};
  at::parallel_for(0, n, kElemGrain, [&](int64_t begin, int64_t end) {
    Key m[2] = {none, none};
    for (int64_t i = begin; i < end; ++i) {
      const Key r = load_raw<scalar_t>(src[i]), s = r >> bits, mag = r & ((Key(1) << bits) - 1);
      if (mag > above[s] && mag < m[s]) m[s] = mag;  // a zero is never above anything
    }
    std::lock_guard<std::mutex> lock(merge);
    best[0] = std::min(best[0], m[0]);
    best[1] = std::min(best[1], m[1]);
  });
  for (int h = 0; h < 2; ++h)
    if (hs[h].need_min && best[h] != none) {
      hs[h].key_hi = best[h];
      hs[h].need_min = false;
    }
}

// Picks the bucket of hs.rank in this digit's histogram of the half; on the last digit also settles
// key_hi when this histogram can tell it.
void choose_bucket(HalfSelect& hs, const int64_t* hist, int shift, int width, bool last) {
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

template <typename scalar_t>
float select_quantile(const scalar_t* x, int64_t n, double p) {
  using QK = QuantileKey<scalar_t>;
  constexpr int passes = radix_passes(QK::kBits);
  HalfSelect hs[2];
  const Chunks ch(n);

  // Pass 1: top digit.
  std::vector<int64_t> chunk_hist(ch.count * 2 * kRadixBins), hist(2 * kRadixBins, 0);
  TORCH_CHECK_VALUE(!top_histograms(x, ch, chunk_hist.data()), "x contains NaN or Inf");
  for (int64_t c = 0; c < ch.count; ++c)
    for (int j = 0; j < 2 * kRadixBins; ++j) hist[j] += chunk_hist[c * 2 * kRadixBins + j];
  const int shift0 = radix_shift(QK::kBits, 0);
  std::array<int64_t, 2> top_bucket{};
  for (int h = 0; h < 2; ++h) {
    const int64_t* hh = hist.data() + h * kRadixBins;
    hs[h].n = std::accumulate(hh, hh + kRadixBins, int64_t(0));
    if (!hs[h].active()) continue;
    hs[h].q = quantile_rank(hs[h].n, p);
    hs[h].rank = hs[h].q.lo;
    choose_bucket(hs[h], hh, shift0, kRadixBits, passes == 1);
    top_bucket[h] = int64_t(hs[h].prefix >> shift0);
  }
  uint64_t digit_mask = uint64_t(kRadixBins - 1) << shift0;

  // Pass 2: gather the two buckets' keys; chunk c holds at most its counts of them (zeros may count twice).
  std::vector<int64_t> bound(ch.count, 0);
  for (int64_t c = 0; c < ch.count; ++c)
    for (int h = 0; h < 2; ++h)
      if (hs[h].active()) bound[c] += chunk_hist[(c * 2 + h) * kRadixBins + top_bucket[h]];
  const auto keys = gather(x, ch, Filter<scalar_t>(hs, digit_mask), bound);

  // The remaining digits, on the gathered keys.
  for (int pass = 1; pass < passes; ++pass) {
    const int shift = radix_shift(QK::kBits, pass), width = radix_width(QK::kBits, pass);
    digit_histogram<scalar_t>(keys, Filter<scalar_t>(hs, digit_mask), shift, width, hist);
    for (int h = 0; h < 2; ++h)
      if (hs[h].active()) choose_bucket(hs[h], hist.data() + h * kRadixBins, shift, width, pass == passes - 1);
    digit_mask |= uint64_t((1 << width) - 1) << shift;
  }
  // key_hi beyond the last bucket: first among the gathered keys (they hold the whole top bucket),
  // else in the next top buckets, over x.
  if (hs[0].need_min || hs[1].need_min) min_above<scalar_t>(keys.data.get(), keys.size, hs);
  if (hs[0].need_min || hs[1].need_min) min_above<scalar_t>(x, n, hs);

  double result = 0.0;  // n > 0: at least one half is active
  for (const HalfSelect& h : hs)
    if (h.active())
      result = std::max(result, quantile_lerp(QK::value(typename QK::Key(h.key_lo)),
                                              QK::value(typename QK::Key(h.key_hi)), h.q.frac));
  return static_cast<float>(result);
}

at::Tensor two_sided_quantile_cpu(const at::Tensor& x_in, double p) {
  check_float_input(x_in, "x");
  TORCH_CHECK_VALUE(p >= 0.0 && p <= 1.0, "p must be in [0, 1], got ", p);
  TORCH_CHECK_VALUE(x_in.numel() > 0, "two_sided_quantile: x is empty");
  const at::Tensor x = x_in.contiguous();
  float q = 0.f;
  ERBNN_DISPATCH_FLOATS(x.scalar_type(), "two_sided_quantile_cpu", [&] {
    q = select_quantile(x.const_data_ptr<scalar_t>(), x.numel(), p);
  });
  return at::scalar_tensor(q, x.options().dtype(at::kFloat));
}

}  // namespace

TORCH_LIBRARY_IMPL(erbnn, CPU, m) { m.impl("two_sided_quantile", &two_sided_quantile_cpu); }

}  // namespace erbnn
