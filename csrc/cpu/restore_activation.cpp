// Activation restoration (method.md section 2), CPU. x is viewed as [N, D] (D = C*H*W or F).
//   forward:  one statistics pass (per-sample sums shifted by the sample's first element, in double),
//             a tiny combine (mean, per-sample RMS about the batch mean, sigma), one write pass.
//   backward: one pass for the global sums (gs = g * surrogate' is kept in dx when dx's dtype holds it
//             exactly), a tiny combine, one write pass.
// The fixed-statistics ops are in restore_activation_fixed.cpp; the NHWC step's pieces in nhwc_pieces.h.
// Work is split into (sample, block) items (SampleBlocks) so that any N and D use all threads.
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "cpu_utils.h"
#include "radix_select.h"
#include "restore_cpu.h"
#include "surrogate_avx512.h"
#include "nhwc_pieces.h"
#include "transpose.h"
#include "tuning.h"

namespace erbnn {
namespace {

void check_activation(const at::Tensor& x) {
  check_float_input(x, "x");
  TORCH_CHECK_VALUE(x.dim() >= 1, "x must have a batch dimension, got a ", x.dim(), "-D tensor");
}

// ------------------------------------------------------------------------------------------ forward
template <typename scalar_t, typename stat_t>
void shifted_sums(const scalar_t* p, int64_t len, double k, double& s1_out, double& s2_out) {
  double s1 = 0.0, s2 = 0.0;
#pragma omp simd reduction(+ : s1, s2)
  for (int64_t i = 0; i < len; ++i) {
    const double v = static_cast<double>(static_cast<stat_t>(p[i])) - k;
    s1 += v;
    s2 += v * v;
  }
  s1_out = s1;
  s2_out = s2;
}

// Visits every block of [0, total): fn(b, len, buf) with a per-task buffer of kQBlock values.
template <typename stat_t, typename Fn>
void x_blocks(int64_t total, Fn&& fn) {
  at::parallel_for(0, total, kElemGrain, [&](int64_t lo, int64_t hi) {
    stat_t buf[kQBlock];
    for (int64_t b = lo; b < hi; b += kQBlock) fn(b, std::min(kQBlock, hi - b), buf);
  });
}

// q of the forward (train_quantile): the write pass given, the sample and the radix fallback reading x.
template <typename scalar_t, typename stat_t, typename WritePass>
void forward_quantile(const scalar_t* xp, int64_t total, stat_t mu_s, stat_t sc, double p, float* q,
                      WritePass&& write_pass) {
  const auto blocks = [&](auto&& fn) {
    x_blocks<stat_t>(total, [&](int64_t b, int64_t len, stat_t* buf) {
      isa_call([&] { standardise_block<scalar_t, stat_t>(xp + b, buf, len, mu_s, sc); });
      fn(static_cast<const stat_t*>(buf), len);
    });
  };
  const auto sample_runs = [&](int64_t m, stat_t* out) {
    using BS = BandSelect<stat_t>;
    isa_call([&] {
      for (int64_t r = 0; r < m / BS::kRun; ++r)
        standardise_block<scalar_t, stat_t>(xp + BS::run_start(r, total, m), out + r * BS::kRun, BS::kRun, mu_s, sc);
    });
  };
  // No hint (restore_train.cpp says why): the sampled band, else (small x) the radix select.
  *q = train_quantile<stat_t>(p, total, /*hint=*/0.0, write_pass, [] {}, blocks,
                              "x gives non-finite standardised values (x - mean) / sigma: q is undefined", sample_runs);
}


// The forward; with q, also q = two_sided_quantile of the standardised values, measured in the write
// pass (train_quantile in restore_cpu.h).
// With C > 0 (nhwc), x is [N, C, P] and y is written as NHWC rows [N, P, C] (NhwcPieces), and with bits
// also the packed signs of y [N, P, ceil(C / 64)] (as pack_signs(y - mean, dim=2): what the popcount conv
// reads, so it need not read y); yp null (nhwc with bits only): the signs without y.
template <typename scalar_t>
void activation_forward(const scalar_t* xp, scalar_t* yp, int64_t N, int64_t D, at::Tensor& mean,
                        at::Tensor& sigma, at::Tensor& rms, double p, float* q, int64_t C = 0,
                        uint64_t* bits = nullptr) {
  using stat_t = stat_type<scalar_t>;
  const SampleBlocks sb(N, D);
  std::vector<double> s1(sb.items()), s2(sb.items());
  at::parallel_for(0, sb.items(), 1, [&](int64_t lo, int64_t hi) {
    isa_call([&] {
      for (int64_t it = lo; it < hi; ++it) {
        const scalar_t* row = xp + sb.sample(it) * D;
        const double k = static_cast<double>(static_cast<stat_t>(row[0]));
        shifted_sums<scalar_t, stat_t>(row + sb.begin(it), sb.end(it) - sb.begin(it), k, s1[it], s2[it]);
      }
    });
  });
  // Combine (O(items), sequential). A non-finite shifted sum means NaN/Inf in x.
  std::vector<double> k(N), S1(N, 0.0), S2(N, 0.0);
  double mu = 0.0;
  for (int64_t n = 0; n < N; ++n) {
    k[n] = static_cast<double>(static_cast<stat_t>(xp[n * D]));
    for (int64_t j = 0; j < sb.per_sample; ++j) {
      S1[n] += s1[n * sb.per_sample + j];
      S2[n] += s2[n * sb.per_sample + j];
    }
    TORCH_CHECK_VALUE(std::isfinite(S1[n]) && std::isfinite(S2[n]) && std::isfinite(k[n]),
                      "x contains NaN or Inf (sample ", n, "): restore_activation needs finite inputs");
    mu += k[n] + S1[n] / double(D);
  }
  mu /= double(N);
  stat_t* rp = rms.mutable_data_ptr<stat_t>();
  double sig = 0.0;
  for (int64_t n = 0; n < N; ++n) {
    const double r = std::sqrt(centered_sq_sum(S1[n], S2[n], double(D), mu - k[n]) / double(D));
    rp[n] = static_cast<stat_t>(r);
    sig += r;
  }
  sig /= double(N);
  const stat_t mu_s = static_cast<stat_t>(mu), sig_s = static_cast<stat_t>(sig), sc = clamp_eps(sig_s);
  *mean.mutable_data_ptr<stat_t>() = mu_s;  // direct writes: fill_ is a dispatched op per call
  *sigma.mutable_data_ptr<stat_t>() = sig_s;
  const scalar_t y_pos = static_cast<scalar_t>(sig_s + mu_s), y_neg = static_cast<scalar_t>(mu_s - sig_s);
  if (C > 0) {  // NHWC out: the write pass (and q's scan in it) per piece of channel rows
    const NhwcPieces<kFwdCols> np(N, C, D / C);
    const bool stream_ok = N * D * int64_t(sizeof(scalar_t)) >= kStreamBytes;
    const float mu_f = static_cast<float>(mu_s);  // stream_piece's (float32 only)
    const int64_t words = (C + 63) / 64;
    const auto write_pass = [&](auto&& sink) {
      at::parallel_for(0, np.items(), 1, [&](int64_t lo, int64_t hi) {
        stat_t buf[kQBlock];
        scalar_t tile[kTransposeTile * kFwdCols];
        for (int64_t it = lo; it < hi; ++it) {
          const NhwcPiece pc = np.piece(it);
          if (pc.cols == np.P) {  // whole rows: x's piece and the tile are one contiguous run each
            const int64_t len = pc.rows * pc.cols, x0 = np.nchw(pc, 0);
            for (int64_t i = 0; i < len; i += kQBlock)
              sink(xp + x0 + i, tile + i, std::min(kQBlock, len - i), mu_s, sc, y_pos, y_neg, buf);
          } else {
            for (int64_t r = 0; r < pc.rows; ++r)
              sink(xp + np.nchw(pc, r), tile + r * pc.cols, pc.cols, mu_s, sc, y_pos, y_neg, buf);
          }
          uint64_t* piece_bits = bits ? bits + (pc.n * np.P + pc.p0) * words : nullptr;
          if (!yp) {
            pack_tile_piece(static_cast<const scalar_t*>(tile), pc, C, mu_s, piece_bits);
            continue;
          }
          if (!(stream_ok && stream_piece<scalar_t>(tile, pc, yp + np.nhwc(pc), C, mu_f, piece_bits))) {
            transpose_block(static_cast<const scalar_t*>(tile), pc.cols, yp + np.nhwc(pc), C, pc.rows, pc.cols);
            if (bits) pack_piece(yp + np.nhwc(pc), C, pc, mu_s, piece_bits);
          }
        }
        if (stream_ok) _mm_sfence();  // stream_piece's stores: globally visible before the task ends
      });
    };
    if (!q) {
      write_pass(WriteOnly{});
      return;
    }
    forward_quantile<scalar_t, stat_t>(xp, N * D, mu_s, sc, p, q, write_pass);
    return;
  }
  if (!q) {
    at::parallel_for(0, sb.items(), 1, [&](int64_t lo, int64_t hi) {
      isa_call([&] {
        for (int64_t it = lo; it < hi; ++it) {
          const int64_t off = sb.sample(it) * D + sb.begin(it);
          two_values_block<scalar_t, stat_t>(xp + off, yp + off, nullptr, sb.end(it) - sb.begin(it), mu_s, sc,
                                             y_pos, y_neg);
        }
      });
    });
    return;
  }
  const auto write_pass = [&](auto&& sink) {
    x_blocks<stat_t>(N * D, [&](int64_t b, int64_t len, stat_t* buf) {
      sink(xp + b, yp + b, len, mu_s, sc, y_pos, y_neg, buf);
    });
  };
  forward_quantile<scalar_t, stat_t>(xp, N * D, mu_s, sc, p, q, write_pass);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> restore_activation_with_q_cpu(const at::Tensor& x_in,
                                                                                     double p, float* q, bool nhwc,
                                                                                     at::Tensor* bits, bool write_y) {
  check_activation(x_in);
  if (nhwc) TORCH_CHECK_VALUE(x_in.dim() == 3, "x must be [N, C, H*W] for NHWC rows out, got ", x_in.dim(), "-D");
  TORCH_CHECK(write_y || (nhwc && bits), "restore_activation_with_q_cpu: y may be left out only for NHWC bits");
  const at::Tensor x = x_in.contiguous();
  const int64_t N = x.size(0), D = N == 0 ? 0 : x.numel() / N, C = nhwc ? x.size(1) : 0;
  const auto st = stat_dtype(x);
  at::Tensor y = !write_y ? at::empty({0}, x.options())
                 : nhwc   ? at::empty({N, x.size(2), C}, x.options())
                          : at::empty_like(x, at::MemoryFormat::Contiguous);
  // The forward writes all three; zeros (a dispatched fill each) only for an empty x.
  const auto make = [&](at::IntArrayRef size) {
    return x.numel() == 0 ? at::zeros(size, x.options().dtype(st)) : at::empty(size, x.options().dtype(st));
  };
  at::Tensor mean = make({}), sigma = make({}), rms = make({N});
  if (bits) *bits = at::empty({N, nhwc ? x.size(2) : 0, (C + 63) / 64}, x.options().dtype(at::kLong));
  if (x.numel() == 0) return {y, mean, sigma, rms};
  ERBNN_DISPATCH_FLOATS(x.scalar_type(), "restore_activation_cpu", [&] {
    activation_forward<scalar_t>(x.const_data_ptr<scalar_t>(), write_y ? y.mutable_data_ptr<scalar_t>() : nullptr,
                                 N, D, mean, sigma,
                                 rms, p, q, C,
                                 bits ? reinterpret_cast<uint64_t*>(bits->mutable_data_ptr<int64_t>()) : nullptr);
  });
  return {y, mean, sigma, rms};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> restore_activation_cpu(const at::Tensor& x) {
  return restore_activation_with_q_cpu(x, 0.0, nullptr, /*nhwc=*/false);
}

namespace {

// ----------------------------------------------------------------------------------------- backward
struct GradSums {
  double g_sign = 0, gs_xhat = 0, g = 0, gs = 0, xc = 0;
};

// Sums of one block; with kStore, gs is written to dx for the write pass.
template <bool kStore, typename scalar_t, typename stat_t>
GradSums grad_sums(const scalar_t* gp, const scalar_t* xp, scalar_t* dx, int64_t len, stat_t mu, stat_t sc,
                   stat_t inv_b, stat_t scale) {
  // Runs of kRun elements are summed in stat_t (vectorised: a simd reduction that converts every element
  // to double does not vectorise with GCC here and ran 20x slower), then added into double totals.
  constexpr int64_t kRun = 512;
  const stat_t inv_sc = stat_t(1) / sc;
  GradSums out;
  for (int64_t r0 = 0; r0 < len; r0 += kRun) {
    const int64_t r1 = std::min(len, r0 + kRun);
    stat_t a = 0, b = 0, c = 0, d = 0, e = 0;
#pragma omp simd reduction(+ : a, b, c, d, e)
    for (int64_t i = r0; i < r1; ++i) {
      const stat_t xc = static_cast<stat_t>(xp[i]) - mu;
      const stat_t xhat = xc * inv_sc;  // a reciprocal: the backward needs no bit-exact xhat, divisions are slow
      const stat_t g = static_cast<stat_t>(gp[i]);
      const stat_t gs = g * surrogate_cpu(xhat, inv_b, scale);
      if constexpr (kStore) dx[i] = gs;
      a += xhat >= stat_t(0) ? g : -g;
      b += gs * xhat;
      c += g;
      d += gs;
      e += xc;
    }
    out.g_sign += a, out.gs_xhat += b, out.g += c, out.gs += d, out.xc += e;
  }
  return out;
}

// grad_sums<true, float, float> on AVX-512 (surrogate_avx512.h): gs stored into dx, the five sums
// per run of kRun elements in float lanes, then in double, as the portable loop does.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq"))) GradSums grad_sums_avx512(
    const float* gp, const float* xp, float* dx, int64_t len, float mu, float sc, float inv_b, float scale) {
  constexpr int64_t kRun = 512;
  const __m512 vmu = _mm512_set1_ps(mu), inv_sc = _mm512_set1_ps(1.0f / sc), two_inv_b = _mm512_set1_ps(2.0f * inv_b),
               four_scale = _mm512_set1_ps(4.0f * scale), zero = _mm512_setzero_ps();
  GradSums out;
  int64_t i = 0;
  while (i + 16 <= len) {
    const int64_t end = std::min(len, i + kRun) & ~int64_t(15);
    __m512 pos = zero, b = zero, c = zero, d = zero, e = zero;  // pos: sum of g where xhat >= 0
    for (; i < end; i += 16) {
      const __m512 xc = _mm512_sub_ps(_mm512_loadu_ps(xp + i), vmu), g = _mm512_loadu_ps(gp + i);
      const __m512 xhat = _mm512_mul_ps(xc, inv_sc);
      const __m512 gs = _mm512_mul_ps(g, surrogate_avx512(xhat, two_inv_b, four_scale));
      _mm512_storeu_ps(dx + i, gs);
      pos = _mm512_mask_add_ps(pos, _mm512_cmp_ps_mask(xhat, zero, _CMP_GE_OQ), pos, g);
      b = _mm512_fmadd_ps(gs, xhat, b);
      c = _mm512_add_ps(c, g);
      d = _mm512_add_ps(d, gs);
      e = _mm512_add_ps(e, xc);
    }
    const double sum_pos = _mm512_reduce_add_ps(pos), sum_g = _mm512_reduce_add_ps(c);
    out.g_sign += 2.0 * sum_pos - sum_g, out.g += sum_g;
    out.gs_xhat += _mm512_reduce_add_ps(b), out.gs += _mm512_reduce_add_ps(d), out.xc += _mm512_reduce_add_ps(e);
  }
  if (i < len) {  // the tail, by the portable loop
    const GradSums t = grad_sums<true, float, float>(gp + i, xp + i, dx + i, len - i, mu, sc, inv_b, scale);
    out.g_sign += t.g_sign, out.gs_xhat += t.gs_xhat, out.g += t.g, out.gs += t.gs, out.xc += t.xc;
  }
  return out;
}

// grad_sums, by grad_sums_avx512 where it applies.
template <bool kStore, typename scalar_t, typename stat_t>
GradSums grad_sums_best(const scalar_t* gp, const scalar_t* xp, scalar_t* dx, int64_t len, stat_t mu, stat_t sc,
                        stat_t inv_b, stat_t scale) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (active_cpu_isa() == CpuIsa::kAvx512) return grad_sums_avx512(gp, xp, dx, len, mu, sc, inv_b, scale);
  }
  return grad_sums<kStore, scalar_t, stat_t>(gp, xp, dx, len, mu, sc, inv_b, scale);
}

template <bool kStore, typename scalar_t, typename stat_t>
void grad_write(const scalar_t* gp, const scalar_t* xp, scalar_t* dx, int64_t len, stat_t mu, stat_t sc,
                stat_t inv_b, stat_t scale, stat_t coef_xc, stat_t coef_1) {
  const stat_t inv_sc = stat_t(1) / sc;
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    const stat_t xc = static_cast<stat_t>(xp[i]) - mu;
    stat_t gs;
    if constexpr (kStore) {
      gs = static_cast<stat_t>(dx[i]);
    } else {
      gs = static_cast<stat_t>(gp[i]) * surrogate_cpu(xc * inv_sc, inv_b, scale);
    }
    dx[i] = static_cast<scalar_t>(gs + coef_xc * xc + coef_1);
  }
}

// The backward; with nhwc, grad_y comes as NHWC rows [N, P, C] of x [N, C, P]: the sums pass reads it
// through NhwcPieces tiles (so no transpose pass over it), the rest runs in x's order.
at::Tensor activation_backward(const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& mean_in,
                               const at::Tensor& sigma_in, const at::Tensor& rms_in, const at::Tensor& b, bool nhwc) {
  check_activation(x_in);
  if (nhwc) {
    TORCH_CHECK_VALUE(x_in.dim() == 3, "x must be [N, C, H*W], got ", x_in.dim(), "-D");
    TORCH_CHECK_VALUE(grad_in.dim() == 3 && grad_in.size(0) == x_in.size(0) && grad_in.size(1) == x_in.size(2) &&
                          grad_in.size(2) == x_in.size(1),
                      "grad_y must be x's NHWC rows [N, H*W, C] = ", at::IntArrayRef({x_in.size(0), x_in.size(2), x_in.size(1)}),
                      ", got ", grad_in.sizes());
  } else {
    check_same_shape(grad_in, "grad_y", x_in, "x");
  }
  const at::Tensor x = x_in.contiguous();
  const int64_t N = x.size(0), D = N == 0 ? 0 : x.numel() / N;
  const auto st = stat_dtype(x);
  const at::Tensor mean = as_stat(mean_in, st, "mean", 1), sigma = as_stat(sigma_in, st, "sigma", 1);
  const at::Tensor rms = as_stat(rms_in, st, "sample_rms", N);
  const double bw = read_width(b);
  at::Tensor dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (x.numel() == 0) return dx.zero_();
  // A bfloat16 grad_y of a float32 x in NHWC rows (a bfloat16-autocast step's conv backward) is read as it
  // is: the sums pass widens it exactly while it transposes each piece, so no float32 copy of it is made.
  const bool bf16_rows = nhwc && x.scalar_type() == at::kFloat && grad_in.scalar_type() == at::kBFloat16;
  at::Tensor g = bf16_rows ? grad_in.contiguous() : grad_in.to(x.scalar_type()).contiguous();
  // Half and bfloat16 recompute g * surrogate' in the write pass from g in x's order: transpose it first.
  if (nhwc && stat_dtype(x) != x.scalar_type()) {
    g = g.transpose(1, 2).contiguous();
    nhwc = false;
  }
  const SampleBlocks sb(N, D);
  const NhwcPieces<kBwdCols> np(N, nhwc ? x.size(1) : 1, nhwc ? x.size(2) : 1);
  const int64_t per_sample = nhwc ? np.per_sample() : sb.per_sample;
  ERBNN_DISPATCH_FLOATS(x.scalar_type(), "restore_activation_backward_cpu", [&] {
    using stat_t = stat_type<scalar_t>;
    constexpr bool kStore = std::is_same_v<scalar_t, stat_t>;
    const stat_t mu = *mean.const_data_ptr<stat_t>(), sc = clamp_eps(*sigma.const_data_ptr<stat_t>());
    const stat_t inv_b = stat_t(1) / stat_t(bw), scale = surrogate_scale(stat_t(bw));
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    // with bf16_rows (scalar_t float32 only), grad_y is read through gb
    const scalar_t* gp = bf16_rows ? nullptr : g.const_data_ptr<scalar_t>();
    scalar_t* dp = dx.mutable_data_ptr<scalar_t>();
    std::vector<GradSums> part(N * per_sample);
    if (nhwc) {
      if constexpr (kStore) {  // gs into dx in x's order; grad_y's piece transposed into a tile first
        const c10::BFloat16* gb = bf16_rows ? g.const_data_ptr<c10::BFloat16>() : nullptr;
        at::parallel_for(0, np.items(), 1, [&](int64_t lo, int64_t hi) {
          scalar_t tile[kTransposeTile * kBwdCols];
          for (int64_t it = lo; it < hi; ++it) {
            const NhwcPiece pc = np.piece(it);
            if (gb) {
              if (it + 1 < np.items()) prefetch_piece(gb, xp, np, np.piece(it + 1));
              transpose_block(gb + np.nhwc(pc), np.C, tile, pc.cols, pc.cols, pc.rows);
            } else {
              if (it + 1 < np.items()) prefetch_piece(gp, xp, np, np.piece(it + 1));
              transpose_block(gp + np.nhwc(pc), np.C, tile, pc.cols, pc.cols, pc.rows);
            }
            GradSums sum;
            // whole rows (cols == P): the tile and x's piece are one contiguous run each
            const int64_t runs = pc.cols == np.P ? 1 : pc.rows, len = pc.cols == np.P ? pc.rows * pc.cols : pc.cols;
            isa_call([&] {
              for (int64_t r = 0; r < runs; ++r) {
                const int64_t off = np.nchw(pc, r);
                const GradSums t = grad_sums_best<kStore, scalar_t, stat_t>(tile + r * pc.cols, xp + off, dp + off,
                                                                            len, mu, sc, inv_b, scale);
                sum.g_sign += t.g_sign, sum.gs_xhat += t.gs_xhat, sum.g += t.g, sum.gs += t.gs, sum.xc += t.xc;
              }
            });
            part[it] = sum;
          }
        });
      }
    } else {
      at::parallel_for(0, sb.items(), 1, [&](int64_t lo, int64_t hi) {
        isa_call([&] {
          for (int64_t it = lo; it < hi; ++it) {
            const int64_t off = sb.sample(it) * D + sb.begin(it);
            part[it] = grad_sums_best<kStore, scalar_t, stat_t>(gp + off, xp + off, dp + off,
                                                                sb.end(it) - sb.begin(it), mu, sc, inv_b, scale);
          }
        });
      });
    }
    const stat_t* rp = rms.const_data_ptr<stat_t>();
    GradSums tot;
    double dsigma_dmu = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      double xc_n = 0.0;
      for (int64_t j = 0; j < per_sample; ++j) {
        const GradSums& p = part[n * per_sample + j];
        tot.g_sign += p.g_sign, tot.gs_xhat += p.gs_xhat, tot.g += p.g, tot.gs += p.gs;
        xc_n += p.xc;
      }
      dsigma_dmu -= (xc_n / double(D)) / static_cast<double>(clamp_eps(rp[n]));
    }
    dsigma_dmu /= double(N);
    const ActivationGradCoef cf = activation_grad_coef(tot.g_sign, tot.gs_xhat, tot.g, tot.gs, dsigma_dmu);
    const double nd = double(N) * double(D);
    const stat_t coef_1 = static_cast<stat_t>(cf.g_mu / nd);
    at::parallel_for(0, sb.items(), 1, [&](int64_t lo, int64_t hi) {
      isa_call([&] {
        for (int64_t it = lo; it < hi; ++it) {
          const int64_t n = sb.sample(it), off = n * D + sb.begin(it);
          const stat_t coef_xc = static_cast<stat_t>(cf.g_sigma / (nd * static_cast<double>(clamp_eps(rp[n]))));
          // with nhwc (kStore only) gp is not read: gs is in dx
          grad_write<kStore, scalar_t, stat_t>((nhwc ? dp : gp) + off, xp + off, dp + off, sb.end(it) - sb.begin(it),
                                               mu, sc, inv_b, scale, coef_xc, coef_1);
        }
      });
    });
  });
  return dx;
}

at::Tensor restore_activation_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& mean,
                                           const at::Tensor& sigma, const at::Tensor& rms, const at::Tensor& b) {
  return activation_backward(grad_y, x, mean, sigma, rms, b, /*nhwc=*/false);
}

at::Tensor restore_activation_backward_nhwc_cpu(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& mean,
                                                const at::Tensor& sigma, const at::Tensor& rms, const at::Tensor& b) {
  return activation_backward(grad_y, x, mean, sigma, rms, b, /*nhwc=*/true);
}

}  // namespace

TORCH_LIBRARY_IMPL(erbnn, CPU, m) {
  m.impl("restore_activation", &restore_activation_cpu);
  m.impl("_restore_activation_backward", &restore_activation_backward_cpu);
  m.impl("_restore_activation_backward_nhwc", &restore_activation_backward_nhwc_cpu);
}

}  // namespace erbnn
