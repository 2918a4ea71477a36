// two_sided_quantile, CPU: an O(n) radix select on the magnitude key (common/quantile_math.h), both
// halves at once, never a sort (radix_select.h):
//   1. One pass over x: per-task histograms of the top 11-bit digit of each half's keys, the zero
//      counts and the NaN/Inf check. The bucket holding rank lo of each half is then known.
//   2. One pass over x gathers the raw keys of those two buckets (AVX-512 compress-store for float32;
//      a vector skip test on AVX2): usually a few percent of x.
//   3. The remaining digits are selected on the gathered keys.
// The (lo+1)-th value is the lo-th's key again, the next non-empty bucket of the last histogram, or
// the smallest key above it (in the gathered keys, or, rarely, one more pass over x).
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cpu_utils.h"
#include "band_select.h"
#include "radix_select.h"
#include "simd.h"
#include "restore_cpu.h"

namespace erbnn {
namespace {

// Values per parallel task: a task outweighs its start (a pass costs about 1 ns per element).
constexpr int64_t kTaskGrain = int64_t(1) << 18;
// Gather buffer: keys are appended to the shared list every kGatherBlock values.
constexpr int64_t kGatherBlock = int64_t(1) << 16;

// The band select (radix_select.h) for float32 / float64 when x is large enough to sample; true when
// it settled q.
template <typename scalar_t>
bool band_quantile(const scalar_t* x, int64_t n, double p, float* q) {
  if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
    using BS = BandSelect<scalar_t>;
    if (n < std::max(band_select_min(), 4 * BS::kSample)) return false;
    std::vector<scalar_t> sample(BS::kSample);
    for (int64_t i = 0; i < BS::kSample; ++i) sample[i] = x[BS::sample_index(i, n)];
    BS bs(p, n, sample.data(), BS::kSample);
    bs.share_band();  // the shared-band scan (a half below the band is resolved, a miss falls back)
    constexpr int64_t kBlock = 2048;
    at::parallel_for(0, n, kTaskGrain, [&](int64_t begin, int64_t end) {
      typename BS::Counts c;
      for (int64_t b = begin; b < end; b += kBlock) {
        const int64_t len = std::min(kBlock, end - b);
        bs.template scan<kBlock>(x + b, len, c);
      }
      bs.merge(c);
    });
    TORCH_CHECK_VALUE(!bs.nonfinite(), "x contains NaN or Inf");
    return bs.finish(q);
  }
  return false;
}

template <typename scalar_t>
float select_quantile(const scalar_t* x, int64_t n, double p) {
  using Key = typename QuantileKey<scalar_t>::Key;
  float q = 0.f;
  if (band_quantile(x, n, p, &q)) return q;
  RadixSelect<scalar_t> rs(p);
  at::parallel_for(0, n, kTaskGrain, [&](int64_t begin, int64_t end) {
    TopHistogram<scalar_t> top;
    top.add(x + begin, end - begin);
    rs.merge(top);
  });
  TORCH_CHECK_VALUE(!rs.nonfinite(), "x contains NaN or Inf");
  rs.plan();
  at::parallel_for(0, n, kTaskGrain, [&](int64_t begin, int64_t end) {
    std::vector<Key> keys(std::min(kGatherBlock, end - begin) + 16);  // gather_block's slack
    for (int64_t b = begin; b < end; b += kGatherBlock) {
      const int64_t len = std::min(kGatherBlock, end - b);
      rs.append(keys.data(), gather_block(x + b, len, rs.filter(), keys.data()));
    }
  });
  return rs.finish([&](auto&& fn) {
    at::parallel_for(0, n, kTaskGrain, [&](int64_t begin, int64_t end) { fn(x + begin, end - begin); });
  });
}

}  // namespace

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

TORCH_LIBRARY_IMPL(erbnn, CPU, m) { m.impl("two_sided_quantile", &two_sided_quantile_cpu); }

}  // namespace erbnn
