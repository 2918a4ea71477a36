// Activation restoration (method.md section 2), CPU. x is viewed as [N, D] (D = C*H*W or F).
//   forward:  one statistics pass (per-sample sums shifted by the sample's first element, in double),
//             a tiny combine (mean, per-sample RMS about the batch mean, sigma), one write pass.
//   backward: one pass for the global sums (gs = g * surrogate' is kept in dx when dx's dtype holds it
//             exactly), a tiny combine, one write pass.
//   fixed-statistics forward and backward: one pass each.
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
#include "transpose.h"

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

// The NHWC passes of the ER step (x in NCHW [N, C, P], y or grad_y in NHWC rows [N, P, C]): pieces of
// up to kRows channel rows x kCols pixels of one sample, which go through a tile in cache and out (or
// in) transposed, so neither side needs a separate transpose pass.
struct NhwcPiece {
  int64_t n, c0, p0, rows, cols;
};
// Pixels per piece, measured in the ResNet-20 steps on the 2-core Zen 5: the forward reads x's 16 rows whole
// (P <= 1024: one contiguous block), the backward keeps its grad_y tile (16 x 256) in L1.
constexpr int64_t kFwdCols = 1024, kBwdCols = 256;

template <int64_t kCols>
struct NhwcPieces {
  static constexpr int64_t kRows = kTransposeTile;
  using Piece = NhwcPiece;
  int64_t N, C, P, cblocks, pchunks;
  NhwcPieces(int64_t n, int64_t c, int64_t p)
      : N(n), C(c), P(p), cblocks((c + kRows - 1) / kRows), pchunks((p + kCols - 1) / kCols) {}
  int64_t items() const { return N * cblocks * pchunks; }
  int64_t per_sample() const { return cblocks * pchunks; }
  Piece piece(int64_t it) const {
    const int64_t n = it / per_sample(), r = it % per_sample(), c0 = (r / pchunks) * kRows, p0 = (r % pchunks) * kCols;
    return {n, c0, p0, std::min(kRows, C - c0), std::min(kCols, P - p0)};
  }
  int64_t nchw(const Piece& pc, int64_t r) const { return (pc.n * C + pc.c0 + r) * P + pc.p0; }  // row r's start
  int64_t nhwc(const Piece& pc) const { return (pc.n * P + pc.p0) * C + pc.c0; }                // the piece's corner
};

// 16 channels' sign bits (y >= mu) of each of n pixels (rows of y at stride C), float32 on AVX-512: one
// masked compare per pixel. lanes: the first pixel's 16-bit lane, `step` lanes per pixel.
__attribute__((target("avx512f"))) void pack16_avx512(const float* y, int64_t C, int64_t n, int64_t rows, float mu,
                                                       uint16_t* lanes, int64_t step) {
  const __mmask16 valid = static_cast<__mmask16>((uint32_t(1) << rows) - 1);
  const __m512 vmu = _mm512_set1_ps(mu);
  for (int64_t p = 0; p < n; ++p)
    lanes[p * step] = static_cast<uint16_t>(_mm512_mask_cmp_ps_mask(valid, _mm512_maskz_loadu_ps(valid, y + p * C), vmu,
                                                                    _CMP_GE_OQ));
}

// A piece's 16 channels are the 16-bit lane (c0 % 64) / 16 of each pixel's word c0 / 64 (pieces start at
// multiples of 16 channels, so pieces on other threads write other lanes). out: the piece's first pixel's
// words; returns that pixel's lane of this piece (the next pixel's is words(C) * 4 lanes on).
inline uint16_t* piece_lane(uint64_t* out, const NhwcPiece& pc) {
  return reinterpret_cast<uint16_t*>(out) + (pc.c0 / 64) * 4 + (pc.c0 % 64) / 16;
}

// Zeroes the lanes past the last channel, in the piece holding it. out: as piece_lane's.
inline void zero_tail_lanes(int64_t C, const NhwcPiece& pc, uint64_t* out) {
  const int64_t step = (C + 63) / 64 * 4, after = 3 - (pc.c0 % 64) / 16;  // lanes after this one in its word
  uint16_t* lanes = piece_lane(out, pc);
  if (pc.c0 + pc.rows == C)
    for (int64_t p = 0; p < pc.cols; ++p)
      for (int64_t k = 1; k <= after; ++k) lanes[p * step + k] = 0;
}

// The sign bits (y >= mu, as pack_signs(y - mu)) of one NhwcPieces piece of y's NHWC rows, in the piece's
// lane (piece_lane); the piece holding the last channels also zeroes the lanes past them. out: the
// piece's first pixel's words.
template <typename scalar_t, typename stat_t>
void pack_piece(const scalar_t* y, int64_t C, const NhwcPiece& pc, stat_t mu, uint64_t* out) {
  const int64_t step = (C + 63) / 64 * 4;
  uint16_t* lanes = piece_lane(out, pc);
  zero_tail_lanes(C, pc, out);
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (active_cpu_isa() == CpuIsa::kAvx512) return pack16_avx512(y, C, pc.cols, pc.rows, mu, lanes, step);
  }
  for (int64_t p = 0; p < pc.cols; ++p) {
    uint32_t m = 0;
    for (int64_t r = 0; r < pc.rows; ++r) m |= uint32_t(static_cast<stat_t>(y[p * C + r]) >= mu) << r;
    lanes[p * step] = static_cast<uint16_t>(m);
  }
}

// The NHWC write of one float32 piece of 16 channels on AVX-512: y's pixels from the tile (16 channel rows
// of `cols` pixels) by register transposes and streaming stores, and each pixel's sign bits (y >= mu) from
// the same registers. Streaming, because y is next read by the backward's conv, after the rest of the
// step's traffic: caching it would only evict x, which the backward reads too. Needs C % 16 == 0 and a
// 64-byte aligned y (every pixel's 16 channels one aligned line).
// Only for a y of kStreamBytes or more: measured on the 2-core Zen 5 (1 MiB L2 per core, 32 MiB L3), side by
// side against nn.Conv2d, a 4 MiB y (ResNet-20's layer2.0.conv1 at batch 64) streamed made the layer's step
// 1.13x -> 1.01x the float one (the op from cold caches 811 -> 707 us), while a 2 MiB one (layer3.0.conv1 at
// batch 64), which a single layer's step still finds in L3, went 1.00x -> 1.13x.
constexpr int64_t kStreamBytes = int64_t(4) << 20;
__attribute__((target("avx512f"))) void stream_piece16_avx512(const float* tile, int64_t cols, float* y, int64_t C,
                                                                float mu, uint16_t* lanes, int64_t step) {
  const __m512 vmu = _mm512_set1_ps(mu);
  int64_t c = 0;
  for (; c + 16 <= cols; c += 16) {
    __m512 o[16];
    transpose16_regs(tile + c, cols, o);
    for (int i = 0; i < 16; ++i) {
      _mm512_stream_ps(y + (c + i) * C, o[i]);
      if (lanes) lanes[(c + i) * step] = static_cast<uint16_t>(_mm512_cmp_ps_mask(o[i], vmu, _CMP_GE_OQ));
    }
  }
  const __m512i rows = _mm512_mullo_epi32(_mm512_set1_epi32(static_cast<int>(cols)),
                                          _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  for (; c < cols; ++c) {  // tail pixels: one column of the tile each
    const __m512 v = _mm512_i32gather_ps(rows, tile + c, 4);
    _mm512_stream_ps(y + c * C, v);
    if (lanes) lanes[c * step] = static_cast<uint16_t>(_mm512_cmp_ps_mask(v, vmu, _CMP_GE_OQ));
  }
}

// One piece's NHWC write (and packed signs) by stream_piece16_avx512 where it applies: float32 on
// AVX-512, C % 16 == 0 (so every piece has 16 channels) and an aligned y; false otherwise.
template <typename scalar_t>
bool stream_piece(const scalar_t* tile, const NhwcPiece& pc, scalar_t* y, int64_t C, float mu, uint64_t* bits) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (C % kTransposeTile != 0 || reinterpret_cast<uintptr_t>(y) % 64 != 0 || active_cpu_isa() != CpuIsa::kAvx512)
      return false;
    uint16_t* lanes = nullptr;
    if (bits) {
      zero_tail_lanes(C, pc, bits);
      lanes = piece_lane(bits, pc);
    }
    stream_piece16_avx512(tile, pc.cols, y, C, mu, lanes, (C + 63) / 64 * 4);
    return true;
  }
  return false;
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
// reads, so it need not read y).
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
                                                                                     at::Tensor* bits) {
  check_activation(x_in);
  if (nhwc) TORCH_CHECK_VALUE(x_in.dim() == 3, "x must be [N, C, H*W] for NHWC rows out, got ", x_in.dim(), "-D");
  const at::Tensor x = x_in.contiguous();
  const int64_t N = x.size(0), D = N == 0 ? 0 : x.numel() / N, C = nhwc ? x.size(1) : 0;
  const auto st = stat_dtype(x);
  at::Tensor y = nhwc ? at::empty({N, x.size(2), C}, x.options()) : at::empty_like(x, at::MemoryFormat::Contiguous);
  // The forward writes all three; zeros (a dispatched fill each) only for an empty x.
  const auto make = [&](at::IntArrayRef size) {
    return x.numel() == 0 ? at::zeros(size, x.options().dtype(st)) : at::empty(size, x.options().dtype(st));
  };
  at::Tensor mean = make({}), sigma = make({}), rms = make({N});
  if (bits) *bits = at::empty({N, nhwc ? x.size(2) : 0, (C + 63) / 64}, x.options().dtype(at::kLong));
  if (x.numel() == 0) return {y, mean, sigma, rms};
  ERBNN_DISPATCH_FLOATS(x.scalar_type(), "restore_activation_cpu", [&] {
    activation_forward<scalar_t>(x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), N, D, mean, sigma,
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

// Prefetches one NhwcPieces piece of the backward's sums pass (grad_y's rows and x's channel runs) into L1
// while the piece before it is summed: x's runs (one per channel, kBwdCols long) are too short for the
// hardware prefetcher to ramp up (measured on the 2-core Zen 5: the op from cold caches 1135 -> 1048 us,
// ResNet-20's layer2.0.conv1 step at batch 64 1-2% faster).
template <typename scalar_t, typename Pieces>
void prefetch_piece(const scalar_t* gp, const scalar_t* xp, const Pieces& np, const NhwcPiece& pc) {
  constexpr int64_t kLine = 64 / sizeof(scalar_t);
  const auto fetch = [](const scalar_t* q) { _mm_prefetch(reinterpret_cast<const char*>(q), _MM_HINT_T0); };
  const scalar_t* g = gp + np.nhwc(pc);
  if (pc.rows == np.C) {  // grad_y's piece is one contiguous run
    for (int64_t i = 0; i < pc.cols * np.C; i += kLine) fetch(g + i);
  } else {  // each pixel's channels: at most two lines
    for (int64_t p = 0; p < pc.cols; ++p) fetch(g + p * np.C), fetch(g + p * np.C + pc.rows - 1);
  }
  for (int64_t r = 0; r < pc.rows; ++r)
    for (int64_t i = 0; i < pc.cols; i += kLine) fetch(xp + np.nchw(pc, r) + i);
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
  at::Tensor g = grad_in.to(x.scalar_type()).contiguous();
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
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* dp = dx.mutable_data_ptr<scalar_t>();
    std::vector<GradSums> part(N * per_sample);
    if (nhwc) {
      if constexpr (kStore) {  // gs into dx in x's order; grad_y's piece transposed into a tile first
        at::parallel_for(0, np.items(), 1, [&](int64_t lo, int64_t hi) {
          scalar_t tile[kTransposeTile * kBwdCols];
          for (int64_t it = lo; it < hi; ++it) {
            const NhwcPiece pc = np.piece(it);
            if (it + 1 < np.items()) prefetch_piece(gp, xp, np, np.piece(it + 1));
            transpose_block(gp + np.nhwc(pc), np.C, tile, pc.cols, pc.cols, pc.rows);
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

// ---------------------------------------------------------------------------------- fixed statistics
template <typename scalar_t, typename stat_t>
bool write_two_values_checked(const scalar_t* p, scalar_t* y, int64_t len, stat_t mu, stat_t sc, scalar_t y_pos,
                              scalar_t y_neg) {
  int nan = 0;
#pragma omp simd reduction(| : nan)
  for (int64_t i = 0; i < len; ++i) {
    const stat_t v = static_cast<stat_t>(p[i]);
    nan |= v != v;
    y[i] = restore_activation_value(v, mu, sc, y_pos, y_neg);
  }
  return nan == 0;
}

at::Tensor restore_activation_fixed_cpu(const at::Tensor& x_in, const at::Tensor& mean_in, const at::Tensor& sigma_in) {
  check_float_input(x_in, "x");
  const at::Tensor x = x_in.contiguous();
  const auto st = stat_dtype(x);
  const at::Tensor mean = as_stat(mean_in, st, "mean", 1), sigma = as_stat(sigma_in, st, "sigma", 1);
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (x.numel() == 0) return y;
  ERBNN_DISPATCH_FLOATS(x.scalar_type(), "restore_activation_fixed_cpu", [&] {
    using stat_t = stat_type<scalar_t>;
    const stat_t mu = *mean.const_data_ptr<stat_t>(), sig = *sigma.const_data_ptr<stat_t>(), sc = clamp_eps(sig);
    const scalar_t y_pos = static_cast<scalar_t>(sig + mu), y_neg = static_cast<scalar_t>(mu - sig);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    std::atomic<bool> ok{true};
    at::parallel_for(0, x.numel(), kElemGrain, [&](int64_t lo, int64_t hi) {
      bool fine = true;
      isa_call([&] { fine = write_two_values_checked<scalar_t, stat_t>(xp + lo, yp + lo, hi - lo, mu, sc, y_pos, y_neg); });
      if (!fine) ok.store(false, std::memory_order_relaxed);
    });
    TORCH_CHECK_VALUE(ok.load(), "x contains NaN: its restored value is undefined");
  });
  return y;
}

template <typename scalar_t, typename stat_t>
void fixed_grad(const scalar_t* gp, const scalar_t* xp, scalar_t* dx, int64_t len, stat_t mu, stat_t sc,
                stat_t inv_b, stat_t scale) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    const stat_t xhat = (static_cast<stat_t>(xp[i]) - mu) / sc;
    dx[i] = static_cast<scalar_t>(static_cast<stat_t>(gp[i]) * surrogate_cpu(xhat, inv_b, scale));
  }
}

at::Tensor restore_activation_fixed_backward_cpu(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                 const at::Tensor& mean_in, const at::Tensor& sigma_in,
                                                 const at::Tensor& b) {
  check_float_input(x_in, "x");
  check_same_shape(grad_in, "grad_y", x_in, "x");
  const at::Tensor x = x_in.contiguous();
  const auto st = stat_dtype(x);
  const at::Tensor mean = as_stat(mean_in, st, "mean", 1), sigma = as_stat(sigma_in, st, "sigma", 1);
  const double bw = read_width(b);
  at::Tensor dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (x.numel() == 0) return dx;
  const at::Tensor g = grad_in.to(x.scalar_type()).contiguous();
  ERBNN_DISPATCH_FLOATS(x.scalar_type(), "restore_activation_fixed_backward_cpu", [&] {
    using stat_t = stat_type<scalar_t>;
    const stat_t mu = *mean.const_data_ptr<stat_t>(), sig = *sigma.const_data_ptr<stat_t>(), sc = clamp_eps(sig);
    // dy/dx = sigma * surrogate'(xhat) / max(sigma, eps): the ratio folds into the surrogate's height.
    const stat_t inv_b = stat_t(1) / stat_t(bw), scale = surrogate_scale(stat_t(bw)) * (sig / sc);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* dp = dx.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), kElemGrain, [&](int64_t lo, int64_t hi) {
      isa_call([&] { fixed_grad<scalar_t, stat_t>(gp + lo, xp + lo, dp + lo, hi - lo, mu, sc, inv_b, scale); });
    });
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(erbnn, CPU, m) {
  m.impl("restore_activation", &restore_activation_cpu);
  m.impl("_restore_activation_backward", &restore_activation_backward_cpu);
  m.impl("_restore_activation_backward_nhwc", &restore_activation_backward_nhwc_cpu);
  m.impl("restore_activation_fixed", &restore_activation_fixed_cpu);
  m.impl("_restore_activation_fixed_backward", &restore_activation_fixed_backward_cpu);
}

}  // namespace erbnn
