// Helpers shared by the CPU restoration kernels (restore_weight.cpp, restore_activation.cpp, restore_train.cpp).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <type_traits>
#include <vector>

#include "common/checks.h"
#include "common/restore_math.h"
#include "band_select.h"
#include "restore_blocks.h"
#include "radix_select.h"
#include "simd.h"

namespace erbnn {

// The forward restorations; the _with_q forms (q non-null) also measure *q = two_sided_quantile of
// the standardised values at p inside the same passes (the training ops, restore_train.cpp); the
// weights' form is faster when `hint` (the previous step's q; 0: none) is close (train_quantile).
std::tuple<at::Tensor, at::Tensor, at::Tensor> restore_weight_cpu(const at::Tensor& w);
std::tuple<at::Tensor, at::Tensor, at::Tensor> restore_weight_with_q_cpu(const at::Tensor& w, double p, float* q,
                                                                         double hint = 0.0);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> restore_activation_cpu(const at::Tensor& x);
// nhwc: x is [N, C, P] and y comes out as its NHWC rows [N, P, C] (the same values, transposed); with
// bits (nhwc only), *bits = y's packed signs [N, P, ceil(C / 64)] int64 (pack_signs(y - mean, dim=2)); without
// write_y (nhwc with bits only) y is not written (an empty tensor is returned in its place).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> restore_activation_with_q_cpu(const at::Tensor& x,
                                                                                     double p, float* q,
                                                                                     bool nhwc = false,
                                                                                     at::Tensor* bits = nullptr,
                                                                                     bool write_y = true);
at::Tensor two_sided_quantile_cpu(const at::Tensor& x, double p);

// ER-BNN's surrogate d sign(x)/dx (method.md section 3) with inv_b = 1/b, scale = max(b,1)/b.
// float32 uses the branch-free sech^2 of simd.h so that the loops vectorise; float64 uses tanh.
inline float surrogate_cpu(float x, float inv_b, float scale) { return scale * sech2(x * inv_b); }
inline double surrogate_cpu(double x, double inv_b, double scale) { return surrogate_grad(x, inv_b, scale); }

// The 0-dim statistics tensors (mean, alpha, sigma, ...) as contiguous tensors of the stats dtype.
inline at::Tensor as_stat(const at::Tensor& t, at::ScalarType st, const char* name, int64_t numel) {
  TORCH_CHECK(t.numel() == numel, name, " must hold ", numel, " values, got ", t.numel());
  return t.to(t.device(), st).contiguous();
}

// Standardised values per histogram / gather block of the training ops: a block stays in L1.
constexpr int64_t kQBlock = 2048;

// Relative half-width of the band that the training ops put around the previous step's q: 4 / sqrt(total),
// within [0.2%, 5%]. Between steps q moves by its sampling noise (for normal-like values about
// 0.3% / sqrt(total / 65536) at the usual percentiles, so the band is some 5 standard errors wide) plus a
// slow drift of the weights and of p; the band gathers a similar fraction of the values, which the
// selection after the pass then sorts through. A miss costs one radix select more, never a wrong q.
inline double hint_band_width(int64_t total) {
  return std::min(0.05, std::max(0.002, 4.0 / std::sqrt(double(std::max<int64_t>(total, 1)))));
}

// The magnitude key band [hint (1 - d), hint (1 + d)] in stat_t (d = hint_band_width(total)), or false
// when the hint is no usable quantile (no step yet, or a non-positive / non-finite value).
template <typename stat_t>
bool hint_band(double hint, int64_t total, typename QuantileKey<stat_t>::Key& lo,
               typename QuantileKey<stat_t>::Key& hi) {
  const double d = hint_band_width(total);
  if (!(hint > 0.0) || !std::isfinite(hint * (1.0 + d))) return false;
  lo = QuantileKey<stat_t>::raw(static_cast<stat_t>(hint * (1.0 - d)));
  hi = QuantileKey<stat_t>::raw(static_cast<stat_t>(hint * (1.0 + d)));
  return true;
}

// The block writers of the restorations' output passes: sink(x, y, len, mu, sc, y_pos, y_neg, buf)
// writes y = (x - mu) / sc >= 0 ? y_pos : y_neg over x[0, len) (len <= kQBlock; buf: a per-task scratch
// of kQBlock stat_t values) and, for q, hands the standardised values to the quantile.
struct WriteOnly {
  template <typename scalar_t, typename stat_t>
  void operator()(const scalar_t* x, scalar_t* y, int64_t len, stat_t mu, stat_t sc, scalar_t y_pos, scalar_t y_neg,
                  stat_t*) const {
    isa_call([&] { two_values_block<scalar_t, stat_t>(x, y, nullptr, len, mu, sc, y_pos, y_neg); });
  }
};

// q of the training ops: two_sided_quantile at p of the `total` standardised values, measured while
// write_pass(sink) writes the op's output block by block (from any thread; see WriteOnly);
// after_write() runs once the pass is done (the op's own checks). With a hint (the previous step's q),
// the sink counts the values below a band around it and gathers those inside (band_select.h; float32 on
// AVX-512 in the same loop as the write): no other pass is needed when the band holds the quantile, as it
// almost always does for weights. Without a hint but with a sampler (the activations), a band bracketed
// by a sample instead. Otherwise the radix select: its top-digit histogram is built in the write pass and
// only its gather phase runs over blocks(fn) (fn(xhat, len) on the standardised values recomputed block
// by block); after a missed band, both phases. Exact either way: the hint or sample only decides how fast.
template <typename stat_t, typename WritePass, typename AfterWrite, typename Blocks, typename SampleRuns = std::nullptr_t>
float train_quantile(double p, int64_t total, double hint, WritePass&& write_pass, AfterWrite&& after_write,
                     Blocks&& blocks, const char* nonfinite_message, SampleRuns&& sample_runs = nullptr) {
  using BS = BandSelect<stat_t>;
  // The write pass scanning around bs's band; q from the band, or the radix select when it missed.
  const auto with_band = [&](BS& bs) {
    std::vector<typename BS::Counts> counts(at::get_num_threads());
    write_pass([&](const auto* x, auto* y, int64_t len, stat_t mu, stat_t sc, auto y_pos, auto y_neg, stat_t* buf) {
      bs.template write_and_scan<kQBlock>(x, y, len, mu, sc, y_pos, y_neg, buf, counts[at::get_thread_num()]);
    });
    after_write();
    for (const auto& c : counts) bs.merge(c);
    TORCH_CHECK_VALUE(!bs.nonfinite(), nonfinite_message);
    float q = 0.f;
    if (bs.finish(&q)) return q;
    // ERBNN_BAND_SELECT_STRICT=1 (tests only): a miss raises instead of falling back, so that tests can
    // tell which path ran without timing it
    const char* strict = std::getenv("ERBNN_BAND_SELECT_STRICT");
    TORCH_CHECK(strict == nullptr || strict[0] != '1', "band select missed its ranks (ERBNN_BAND_SELECT_STRICT=1)");
    return radix_select_blocks<stat_t, kQBlock>(p, blocks, nonfinite_message);  // the band missed
  };
  typename BS::Key lo, hi;
  if (hint_band<stat_t>(hint, total, lo, hi)) {
    BS bs(p, total, lo, hi);
    return with_band(bs);
  }
  // With a sampler (sample_runs(m, out): the m standardised values of BS::run_start's runs into out, the
  // statistics known before the write pass), from train_band_select_min() values: a band bracketed by a
  // sample of about total / 32 values (BandSelect's histogram constructor), shared by both halves and
  // scanned in the write pass; the radix select only when it missed.
  if constexpr (!std::is_same_v<std::decay_t<SampleRuns>, std::nullptr_t>) {
    if (total >= std::max(train_band_select_min(), 4 * BS::kMinSample)) {
      const int64_t m = BS::sample_size(total);  // up to n / 32 values: from PyTorch's allocator
      const at::Tensor sample_t = at::empty({m}, at::TensorOptions().dtype(c10::CppTypeToScalarType<stat_t>::value));
      stat_t* sample = sample_t.mutable_data_ptr<stat_t>();
      sample_runs(m, sample);
      BS bs(p, total, sample, m, typename BS::FromHistogram{});
      return with_band(bs);
    }
  }
  // Otherwise: the radix select's first phase (the top-digit histogram) in the write pass, so only its
  // gather phase reads the values again.
  RadixSelect<stat_t> rs(p);
  std::vector<TopHistogram<stat_t>> tops(at::get_num_threads());
  write_pass([&](const auto* x, auto* y, int64_t len, stat_t mu, stat_t sc, auto y_pos, auto y_neg, stat_t* buf) {
    using X = std::remove_cv_t<std::remove_pointer_t<decltype(x)>>;
    isa_call([&] { two_values_block<X, stat_t>(x, y, buf, len, mu, sc, y_pos, y_neg); });
    tops[at::get_thread_num()].add(buf, len);
  });
  after_write();
  for (auto& t : tops) rs.merge(t);
  TORCH_CHECK_VALUE(!rs.nonfinite(), nonfinite_message);
  return rs.template gather_and_finish<kQBlock>(blocks);
}

// Work items for the activation kernels: each sample's D elements split into blocks of at most
// kBlock elements, so a batch of one huge sample still runs on all threads.
struct SampleBlocks {
  static constexpr int64_t kBlock = 1 << 14;
  int64_t n, d, per_sample;
  SampleBlocks(int64_t n_, int64_t d_) : n(n_), d(d_), per_sample(std::max<int64_t>(1, (d_ + kBlock - 1) / kBlock)) {}
  int64_t items() const { return n * per_sample; }
  int64_t sample(int64_t item) const { return item / per_sample; }
  int64_t begin(int64_t item) const { return (item % per_sample) * kBlock; }
  int64_t end(int64_t item) const { return std::min(d, begin(item) + kBlock); }
};

}  // namespace erbnn
