// The radix select of two_sided_quantile on the device (see quantile.cu), generic over where its values
// come from: a Src is a small device functor, src(i) -> the i-th value (value_t: a float type), so that
// the training ops (restore_train.cu) select on standardised values computed on the fly from x,
// never materialised. Included by quantile.cu and restore_train.cu only.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <climits>

#include "common/quantile_math.h"
#include "cuda_utils.cuh"

namespace erbnn {
namespace cuda {
namespace {  // each including unit compiles its own copy of the kernels
namespace quantile_detail {

using ull = unsigned long long;

// Device-resident selection state; half h holds the keys with sign bit h (0: x >= 0, 1: x <= 0).
struct State {
  ull prefix[2];  // digits chosen so far; ~0 once a half is known to be empty
  long long rank[2], n[2], lo[2], hi[2];
  double frac[2];
  ull key_lo[2], key_hi[2];
  int need_min[2];
  int bad;  // x holds NaN or Inf
  int pad;
};
static_assert(sizeof(State) % sizeof(int64_t) == 0, "State is allocated as int64 words");
constexpr int kStateWords = sizeof(State) / sizeof(int64_t);
constexpr unsigned kFull = 0xffffffffu;
constexpr int kHistThreads = 256;

template <typename Src>
__global__ void digit_histogram_kernel(Src src, int64_t n, State* st,
                                       ull* __restrict__ hist, int shift, int width, ull digit_mask,
                                       bool first) {
  using QK = QuantileKey<typename Src::value_t>;
  using Key = typename QK::Key;
  constexpr Key sign = Key(1) << QK::kBits, mag_mask = sign - 1;
  __shared__ unsigned sh[2 * kRadixBins];
  for (int i = threadIdx.x; i < 2 * kRadixBins; i += blockDim.x) sh[i] = 0;
  // A key stays in half s's selection when (raw & mask) == want[s]; an empty half wants all ones
  // (no finite magnitude has every masked bit set).
  const Key mask = Key(digit_mask) | sign;
  Key want[2];
  bool zero_in[2];
  for (int h = 0; h < 2; ++h) {
    const ull pre = st->prefix[h];
    want[h] = pre == ~0ull ? Key(~Key(0)) : Key(Key(pre) | (h ? sign : Key(0)));
    zero_in[h] = pre == 0;
  }
  __syncthreads();
  const int lane = threadIdx.x & 31;
  bool nonfinite = false;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  // Warp-uniform trip count: every lane reaches the __match_any_sync / __ballot_sync below.
  for (int64_t base = int64_t(blockIdx.x) * blockDim.x; base < n; base += stride) {
    const int64_t i = base + threadIdx.x;
    unsigned bin = UINT_MAX;
    bool zero_to[2] = {false, false};  // a zero also counts in the other half's bucket 0
    if (i < n) {
      const Key r = QK::raw(src(i));
      const int s = int(r >> QK::kBits);
      const Key mag = r & mag_mask;
      nonfinite |= mag >= QK::kInf;
      if ((r & mask) == want[s]) bin = unsigned(s) * kRadixBins + unsigned((r >> shift) & ((Key(1) << width) - 1));
      zero_to[1 - s] = mag == 0 && zero_in[1 - s];
    }
    const unsigned peers = __match_any_sync(kFull, bin);
    if (bin != UINT_MAX && lane == __ffs(peers) - 1) atomicAdd(&sh[bin], unsigned(__popc(peers)));
    const unsigned z0 = __ballot_sync(kFull, zero_to[0]), z1 = __ballot_sync(kFull, zero_to[1]);
    if (lane == 0 && z0) atomicAdd(&sh[0], unsigned(__popc(z0)));
    if (lane == 0 && z1) atomicAdd(&sh[kRadixBins], unsigned(__popc(z1)));
  }
  if (__syncthreads_or(first && nonfinite) && threadIdx.x == 0) st->bad = 1;
  for (int i = threadIdx.x; i < 2 * kRadixBins; i += blockDim.x)
    if (sh[i]) atomicAdd(&hist[i], ull(sh[i]));
}

__device__ long long warp_sum(long long v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

// One warp per half (64 threads): the bucket of the half's rank in this pass's histogram.
// p: *p_dev when given (read on the device), else p_host; outside [0, 1] it makes the result NaN.
__global__ void select_kernel(State* st, const ull* __restrict__ hist, int shift, int width,
                              const double* __restrict__ p_dev, double p_host, bool first, bool last) {
  const int h = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const ull* hh = hist + h * kRadixBins;
  if (first) {
    long long total = 0;
    for (int b = lane; b < kRadixBins; b += 32) total += (long long)hh[b];
    total = warp_sum(total);
    double p = p_dev ? *p_dev : p_host;
    if (!(p >= 0.0 && p <= 1.0)) {
      if (lane == 0) st->bad = 1;
      p = 0.0;
    }
    if (lane == 0) {
      st->n[h] = total;
      if (total == 0) {
        st->prefix[h] = ~0ull;
      } else {
        const QuantileRank q = quantile_rank(total, p);
        st->lo[h] = q.lo;
        st->hi[h] = q.hi;
        st->frac[h] = q.frac;
        st->rank[h] = q.lo;
      }
    }
    __syncwarp();
  }
  if (st->n[h] == 0) return;
  const int bins = 1 << width, per = (bins + 31) / 32;
  const int b0 = min(lane * per, bins), b1 = min(b0 + per, bins);
  long long rank = st->rank[h], sum = 0;
  for (int b = b0; b < b1; ++b) sum += (long long)hh[b];
  long long incl = sum;
  for (int o = 1; o < 32; o <<= 1) {
    const long long v = __shfl_up_sync(kFull, incl, o);
    if (lane >= o) incl += v;
  }
  const long long excl = incl - sum;
  const bool mine = excl <= rank && rank < incl;  // exactly one lane: rank < the half's total
  int bucket = 0;
  long long before = excl;
  if (mine) {
    bucket = b0;
    while (before + (long long)hh[bucket] <= rank) before += (long long)hh[bucket++];
  }
  const int src = __ffs(__ballot_sync(kFull, mine)) - 1;
  bucket = __shfl_sync(kFull, bucket, src);
  before = __shfl_sync(kFull, before, src);
  rank -= before;
  const ull prefix = st->prefix[h] | (ull(bucket) << shift);
  ull key_hi = prefix;
  int need = 0;
  if (last && st->hi[h] != st->lo[h] && rank + 1 >= (long long)hh[bucket]) {
    // rank lo+1 holds a larger key: the next non-empty bucket, else beyond this histogram
    int next = INT_MAX;
    for (int b = bucket + 1 + lane; b < bins; b += 32)
      if (hh[b]) {
        next = b;
        break;
      }
    for (int o = 16; o > 0; o >>= 1) next = min(next, __shfl_xor_sync(kFull, next, o));
    if (next < bins) {
      key_hi = (prefix & ~(ull(bins - 1) << shift)) | (ull(next) << shift);
    } else {
      key_hi = ~0ull;  // min_above_kernel lowers it
      need = 1;
    }
  }
  if (lane == 0) {
    st->prefix[h] = prefix;
    st->rank[h] = rank;
    if (last) {
      st->key_lo[h] = prefix;
      st->key_hi[h] = key_hi;
      st->need_min[h] = need;
    }
  }
}

// The smallest key above key_lo in each half with need_min.
template <typename Src>
__global__ void min_above_kernel(Src src, int64_t n, State* st) {
  using QK = QuantileKey<typename Src::value_t>;
  using Key = typename QK::Key;
  if (!st->need_min[0] && !st->need_min[1]) return;
  constexpr Key none = Key(~Key(0)), mag_mask = (Key(1) << QK::kBits) - 1;
  const Key above[2] = {st->need_min[0] ? Key(st->key_lo[0]) : none, st->need_min[1] ? Key(st->key_lo[1]) : none};
  Key m[2] = {none, none};
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const Key r = QK::raw(src(i)), mag = r & mag_mask;
    const int s = int(r >> QK::kBits);
    if (mag > above[s] && mag < m[s]) m[s] = mag;  // a zero is never above anything
  }
  for (int h = 0; h < 2; ++h) {
    ull v = m[h];
    for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_xor_sync(kFull, v, o));
    if ((threadIdx.x & 31) == 0 && v != ull(none)) atomicMin(&st->key_hi[h], v);
  }
}

template <typename scalar_t>
__global__ void finalize_kernel(const State* st, float* out) {
  using QK = QuantileKey<scalar_t>;
  double result = 0.0;
  for (int h = 0; h < 2; ++h)
    if (st->n[h] > 0) {
      const double v = quantile_lerp(QK::value(typename QK::Key(st->key_lo[h])),
                                     QK::value(typename QK::Key(st->key_hi[h])), st->frac[h]);
      result = v > result ? v : result;
    }
  *out = st->bad ? __int_as_float(0x7fc00000) : float(result);
}

// Enough blocks to fill the GPU, few enough that merging block histograms stays cheap.
int histogram_grid(int64_t n) {
  const int64_t want = (n + kHistThreads * 16 - 1) / (kHistThreads * 16);
  const int64_t cap = int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 8;
  return int(std::max<int64_t>(1, std::min(want, cap)));
}

}  // namespace quantile_detail

// two_sided_quantile of the n values src(0..n-1) into *out (device float32), on the current stream;
// p is *p_dev (device float64) when p_dev is given, else p_host. like: a tensor on the device (for
// the small work buffers' options).
template <typename Src>
void quantile_of_values(Src src, int64_t n, const at::Tensor& like, const double* p_dev, double p_host, float* out) {
  using namespace quantile_detail;
  using value_t = typename Src::value_t;
  constexpr int bits = QuantileKey<value_t>::kBits, passes = radix_passes(bits);
  at::Tensor state = at::zeros({kStateWords}, like.options().dtype(at::kLong));
  at::Tensor hist = at::zeros({passes, 2 * kRadixBins}, like.options().dtype(at::kLong));
  State* st = reinterpret_cast<State*>(state.mutable_data_ptr<int64_t>());
  ull* hist_ptr = reinterpret_cast<ull*>(hist.mutable_data_ptr<int64_t>());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int blocks = histogram_grid(n);
  ull digit_mask = 0;
  for (int pass = 0; pass < passes; ++pass) {
    const int shift = radix_shift(bits, pass), width = radix_width(bits, pass);
    ull* h = hist_ptr + pass * 2 * kRadixBins;
    ERBNN_LAUNCH(blocks, kHistThreads, 0, stream, digit_histogram_kernel<Src>)(src, n, st, h, shift, width, digit_mask,
                                                                      pass == 0);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    ERBNN_LAUNCH(1, 64, 0, stream, select_kernel)(st, h, shift, width, p_dev, p_host, pass == 0, pass == passes - 1);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    digit_mask |= ull((1 << width) - 1) << shift;
  }
  ERBNN_LAUNCH(blocks, kHistThreads, 0, stream, min_above_kernel<Src>)(src, n, st);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  ERBNN_LAUNCH(1, 1, 0, stream, finalize_kernel<value_t>)(st, out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The values of a tensor as they are.
template <typename scalar_t>
struct PlainValues {
  using value_t = scalar_t;
  const scalar_t* x;
  __device__ __forceinline__ scalar_t operator()(int64_t i) const { return x[i]; }
};

}  // namespace
}  // namespace cuda
}  // namespace erbnn
