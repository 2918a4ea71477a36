// Weight restoration (method.md section 1), CPU: per output channel mean, population RMS and signs in
// one kernel, and the fused backward (surrogate gradient + standardisation backward) in another.
// Parallel over output channels; each channel (Cin*kh*kw elements, <= 18 KiB for the models here) is
// read from memory once and re-read from L1/L2 by the later passes over it.
#include <torch/library.h>

#include <algorithm>

#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu_utils.h"
#include "radix_select.h"
#include "restore_cpu.h"
#include "surrogate_avx512.h"

namespace erbnn {
namespace {

// Channels per parallel task: enough elements that a task outweighs its scheduling.
int64_t channel_grain(int64_t n) { return std::max<int64_t>(1, kElemGrain / std::max<int64_t>(n, 1)); }

// Channel statistics: mean and alpha of row[0, n). Sums are in double (exact enough for any
// Cin*kh*kw); a non-finite sum means NaN/Inf in the channel (a double sum of finite floats cannot
// overflow), so the finiteness check costs nothing extra. Returns false on non-finite input.
template <typename scalar_t, typename stat_t>
bool weight_row_stats(const scalar_t* row, int64_t n, stat_t& mean, stat_t& alpha) {
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(static_cast<stat_t>(row[i]));
  if (!std::isfinite(s)) return false;
  const stat_t mu = static_cast<stat_t>(s / double(n));
  double q = 0.0;
#pragma omp simd reduction(+ : q)
  for (int64_t i = 0; i < n; ++i) {
    const stat_t d = static_cast<stat_t>(row[i]) - mu;
    q += static_cast<double>(d) * static_cast<double>(d);
  }
  mean = mu;
  alpha = static_cast<stat_t>(std::sqrt(q / double(n)));
  return true;
}

// The forward over all channels, one visit per channel: its statistics, then its signs from cache; with
// q (train_quantile in restore_cpu.h), the sign pass also hands the standardised values it computes, in
// blocks of kQBlock, to the quantile.
template <typename scalar_t>
void weight_forward(const scalar_t* src, scalar_t* dst, stat_type<scalar_t>* mp, stat_type<scalar_t>* ap,
                    int64_t O, int64_t n, double p, float* q, double hint) {
  using stat_t = stat_type<scalar_t>;
  const scalar_t pos(1), neg(-1);
  std::atomic<bool> finite{true};
  // Each channel's statistics, then its blocks through sink (WriteOnly, or the quantile's writer).
  const auto write_pass = [&](auto&& sink) {
    at::parallel_for(0, O, channel_grain(n), [&](int64_t lo, int64_t hi) {
      stat_t buf[kQBlock];
      for (int64_t o = lo; o < hi; ++o) {
        const scalar_t* row = src + o * n;
        bool ok = false;
        stat_t mu = 0, al = 0;
        isa_call([&] { ok = weight_row_stats<scalar_t, stat_t>(row, n, mu, al); });
        if (!ok) {
          finite.store(false, std::memory_order_relaxed);
          continue;
        }
        mp[o] = mu;
        ap[o] = al;
        // sign((w - mu) / a), the division kept so that the signs equal the reference's bit for bit
        const stat_t a = clamp_eps(al);
        for (int64_t b = 0; b < n; b += kQBlock) sink(row + b, dst + o * n + b, std::min(kQBlock, n - b), mu, a, pos, neg, buf);
      }
    });
  };
  const auto check_finite = [&] {
    TORCH_CHECK_VALUE(finite.load(), "w contains NaN or Inf: restore_weight needs finite weights");
  };
  if (!q) {
    write_pass(WriteOnly{});
    check_finite();
    return;
  }
  const auto blocks = [&](auto&& fn) {
    at::parallel_for(0, O, channel_grain(n), [&](int64_t lo, int64_t hi) {
      stat_t buf[kQBlock];
      for (int64_t o = lo; o < hi; ++o) {
        const stat_t mu = mp[o], a = clamp_eps(ap[o]);
        for (int64_t b = 0; b < n; b += kQBlock) {
          const int64_t len = std::min(kQBlock, n - b);
          isa_call([&] { standardise_block<scalar_t, stat_t>(src + o * n + b, buf, len, mu, a); });
          fn(static_cast<const stat_t*>(buf), len);
        }
      }
    });
  };
  *q = train_quantile<stat_t>(p, O * n, hint, write_pass, check_finite, blocks,
                              "w gives non-finite standardised values (w - mean) / alpha: q is undefined");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> restore_weight_with_q_cpu(const at::Tensor& w_in, double p,
                                                                         float* q, double hint) {
  check_float_input(w_in, "w");
  TORCH_CHECK_VALUE(w_in.dim() >= 1, "w must have at least 1 dimension (output channels first), got ",
                    w_in.dim(), "-D");
  const at::Tensor w = w_in.contiguous();
  const int64_t O = w.size(0), n = O == 0 ? 0 : w.numel() / O;
  const auto st = stat_dtype(w);
  at::Tensor w_b = at::empty_like(w, at::MemoryFormat::Contiguous);
  at::Tensor mean = at::zeros({O}, w.options().dtype(st));
  at::Tensor alpha = at::zeros({O}, w.options().dtype(st));
  if (n == 0) return {w_b.fill_(1), mean, alpha};
  ERBNN_DISPATCH_FLOATS(w.scalar_type(), "restore_weight_cpu", [&] {
    using stat_t = stat_type<scalar_t>;
    weight_forward<scalar_t>(w.const_data_ptr<scalar_t>(), w_b.mutable_data_ptr<scalar_t>(),
                             mean.mutable_data_ptr<stat_t>(), alpha.mutable_data_ptr<stat_t>(), O, n, p, q, hint);
  });
  return {w_b, mean, alpha};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> restore_weight_cpu(const at::Tensor& w) {
  return restore_weight_with_q_cpu(w, 0.0, nullptr);
}

namespace {

// The first pass over one channel's row: g = grad * surrogate'(What) into scratch (n values,
// cache-resident) and the sums of g and g * What added to sg, sgw. What is (w - mean) * (1 / alpha) here,
// not the forward's division: a gradient needs no bit-exact What (within an ulp of it), and vector
// divisions were most of this kernel's time. Runs summed in stat_t, then into double: a simd reduction
// converting each element to double next to the surrogate does not vectorise with GCC here (measured
// 2.5x slower for this loop).
template <typename scalar_t, typename stat_t>
void weight_grad_pass(const scalar_t* grow, const scalar_t* row, stat_t* scratch, int64_t n, stat_t mu, stat_t inv_a,
                      stat_t inv_b, stat_t scale, double& sg, double& sgw) {
  constexpr int64_t kRun = 512;
  for (int64_t r0 = 0; r0 < n; r0 += kRun) {
    const int64_t r1 = std::min(n, r0 + kRun);
    stat_t rg = 0, rgw = 0;
#pragma omp simd reduction(+ : rg, rgw)
    for (int64_t i = r0; i < r1; ++i) {
      const stat_t what = (static_cast<stat_t>(row[i]) - mu) * inv_a;
      const stat_t g = static_cast<stat_t>(grow[i]) * surrogate_cpu(what, inv_b, scale);
      scratch[i] = g;
      rg += g;
      rgw += g * what;
    }
    sg += static_cast<double>(rg);
    sgw += static_cast<double>(rgw);
  }
}

// weight_grad_pass for float32 on AVX-512 (surrogate_avx512.h); the tail by the portable loop.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq"))) void weight_grad_pass_avx512(
    const float* grow, const float* row, float* scratch, int64_t n, float mu, float inv_a, float inv_b, float scale,
    double& sg, double& sgw) {
  constexpr int64_t kRun = 512;
  const __m512 vmu = _mm512_set1_ps(mu), va = _mm512_set1_ps(inv_a), two_inv_b = _mm512_set1_ps(2.0f * inv_b),
               four_scale = _mm512_set1_ps(4.0f * scale);
  int64_t i = 0;
  while (i + 16 <= n) {
    const int64_t end = std::min(n, i + kRun) & ~int64_t(15);
    __m512 rg = _mm512_setzero_ps(), rgw = _mm512_setzero_ps();
    for (; i < end; i += 16) {
      const __m512 what = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(row + i), vmu), va);
      const __m512 g = _mm512_mul_ps(_mm512_loadu_ps(grow + i), surrogate_avx512(what, two_inv_b, four_scale));
      _mm512_storeu_ps(scratch + i, g);
      rg = _mm512_add_ps(rg, g);
      rgw = _mm512_fmadd_ps(g, what, rgw);
    }
    sg += _mm512_reduce_add_ps(rg);
    sgw += _mm512_reduce_add_ps(rgw);
  }
  if (i < n) weight_grad_pass<float, float>(grow + i, row + i, scratch + i, n - i, mu, inv_a, inv_b, scale, sg, sgw);
}

// weight_grad_pass, by weight_grad_pass_avx512 where it applies.
template <typename scalar_t, typename stat_t>
void weight_grad_pass_best(const scalar_t* grow, const scalar_t* row, stat_t* scratch, int64_t n, stat_t mu,
                           stat_t inv_a, stat_t inv_b, stat_t scale, double& sg, double& sgw) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (active_cpu_isa() == CpuIsa::kAvx512)
      return weight_grad_pass_avx512(grow, row, scratch, n, mu, inv_a, inv_b, scale, sg, sgw);
  }
  weight_grad_pass<scalar_t, stat_t>(grow, row, scratch, n, mu, inv_a, inv_b, scale, sg, sgw);
}

// Channels [lo, hi) of the backward: weight_grad_pass, then dW in a second pass over the channel.
template <typename scalar_t, typename stat_t>
void weight_backward_rows(const scalar_t* grad, const scalar_t* w, const stat_t* mean, const stat_t* alpha,
                          scalar_t* dw, stat_t* scratch, int64_t n, stat_t inv_b, stat_t scale, int64_t lo,
                          int64_t hi) {
  for (int64_t o = lo; o < hi; ++o) {
    const scalar_t* row = w + o * n;
    const scalar_t* grow = grad + o * n;
    const stat_t mu = mean[o], a = clamp_eps(alpha[o]), inv_a = stat_t(1) / a;
    double sg = 0.0, sgw = 0.0;
    weight_grad_pass_best<scalar_t, stat_t>(grow, row, scratch, n, mu, inv_a, inv_b, scale, sg, sgw);
    const stat_t mg = static_cast<stat_t>(sg / double(n)), mgw = static_cast<stat_t>(sgw / double(n));
    scalar_t* dst = dw + o * n;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const stat_t what = (static_cast<stat_t>(row[i]) - mu) * inv_a;
      dst[i] = static_cast<scalar_t>(restore_weight_grad(scratch[i], what, mg, mgw, inv_a));
    }
  }
}

at::Tensor restore_weight_backward_cpu(const at::Tensor& grad_in, const at::Tensor& w_in, const at::Tensor& mean_in,
                                       const at::Tensor& alpha_in, const at::Tensor& b) {
  check_float_input(w_in, "w");
  TORCH_CHECK_VALUE(w_in.dim() >= 1, "w must have at least 1 dimension, got ", w_in.dim(), "-D");
  check_same_shape(grad_in, "grad_wb", w_in, "w");
  const at::Tensor w = w_in.contiguous();
  const int64_t O = w.size(0), n = O == 0 ? 0 : w.numel() / O;
  const auto st = stat_dtype(w);
  const at::Tensor mean = as_stat(mean_in, st, "mean", O), alpha = as_stat(alpha_in, st, "alpha", O);
  const double bw = read_width(b);
  at::Tensor dw = at::empty_like(w, at::MemoryFormat::Contiguous);
  if (n == 0) return dw.zero_();
  const at::Tensor g = grad_in.to(w.scalar_type()).contiguous();
  ERBNN_DISPATCH_FLOATS(w.scalar_type(), "restore_weight_backward_cpu", [&] {
    using stat_t = stat_type<scalar_t>;
    const stat_t inv_b = stat_t(1) / stat_t(bw), scale = surrogate_scale(stat_t(bw));
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const stat_t* mp = mean.const_data_ptr<stat_t>();
    const stat_t* ap = alpha.const_data_ptr<stat_t>();
    scalar_t* out = dw.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, O, channel_grain(n), [&](int64_t lo, int64_t hi) {
      std::vector<stat_t> scratch(n);
      isa_call([&] {
        weight_backward_rows<scalar_t, stat_t>(gp, wp, mp, ap, out, scratch.data(), n, inv_b, scale, lo, hi);
      });
    });
  });
  return dw;
}

}  // namespace

TORCH_LIBRARY_IMPL(erbnn, CPU, m) {
  m.impl("restore_weight", &restore_weight_cpu);
  m.impl("_restore_weight_backward", &restore_weight_backward_cpu);
}

}  // namespace erbnn
