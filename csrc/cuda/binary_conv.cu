// binary_conv2d, binary_linear, pack_conv_weight and binary_conv2d_packed on CUDA.
// A tiled XNOR-popcount implicit GEMM: a block computes 64 output pixels (over the whole batch) x 64
// output channels, staging 8 packed 32-bit words of each in shared memory per step of the reduction
// (taps x words); each thread accumulates a 4 x 4 register block with __popc. Out-of-frame taps stage 0
// and the epilogue removes them exactly (conv = Keff - 2 * (S - sum_oob popc(w_tap)), as on the CPU).
// On sm_80+ the same reduction runs on b1 tensor cores (conv_mma_kernel; ERBNN_CUDA_MMA=0 forces __popc).
// No host sync in the forwards: a NaN input sets a device flag and the outputs become NaN.
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <optional>
#include <string>
#include <tuple>

#include "common/checks.h"
#include "common/conv_checks.h"
#include "common/conv_epilogue.h"
#include "common/conv_geom.h"
#include "common/dense_layout.h"
#include "cuda_utils.cuh"
#include "sign_pack_cuda.cuh"

namespace erbnn {
namespace cuda {
namespace {

constexpr int kTP = 64, kTO = 64, kKC = 8, kConvThreads = 256;

// Also checks w_packed's tail bits (channels >= C in each tap's last word): set bits raise the NaN flag
// (NaN outputs; the CPU raises a ValueError), a device-side check with no host sync.
__global__ void tap_pop_kernel(const uint32_t* __restrict__ wp, ConvGeom g, int32_t* __restrict__ tap_pop,
                               int32_t* __restrict__ ones_full, int* __restrict__ bad_flag) {
  const int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (o >= g.O) return;
  weight_tap_stats(wp + o * g.K, g.taps, g.Cw, g.C, tap_pop + o * g.taps, ones_full + o);
  const int64_t used = g.C - (g.Cw - 1) * 32;
  if (used < 32)
    for (int64_t t = 0; t < g.taps; ++t)
      if (wp[o * g.K + t * g.Cw + g.Cw - 1] >> used) atomicOr(bad_flag, 1);
}

// The common epilogue (common/conv_epilogue.h) and the device NaN flag of the packing pass; with
// emit_bits, the next layer's packed input bits [N * OH * OW, Ow] (zeroed; bits ORed in) and its shift.
struct EpilogueArgs : ConvEpilogue {
  const int* nan_flag;
  uint32_t* bits = nullptr;
  const float* next_shift_dev = nullptr;
  int64_t Ow = 0;
};

// A packed x's tail bits (channels >= C in each pixel's last word) set: the NaN flag, as for w_packed.
__global__ void x_tail_bits_kernel(const uint32_t* __restrict__ P, int64_t pixels, int64_t Cw, int64_t used,
                                   int* __restrict__ bad_flag) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < pixels && (P[i * Cw + Cw - 1] >> used) != 0u) atomicOr(bad_flag, 1);
}

// Output (pixel p over the batch, channel o) from s = sum over ALL taps of popc(x ^ w) with out-of-frame
// x words 0 (or, with s_lacks_wpop, that sum minus sum_t popc(w_t): the AND form's bookkeeping).
__device__ __forceinline__ void write_output(const ConvGeom& g, const EpilogueArgs& e, int64_t p, int64_t o,
                                             int32_t s, bool s_lacks_wpop, bool nan, float* __restrict__ out) {
  const int64_t ohw = g.OH * g.OW, n = p / ohw, rem = p % ohw;
  const int64_t y0 = (rem / g.OW) * g.sh - g.ph, x0 = (rem % g.OW) * g.sw - g.pw;
  int32_t corr = 0, nvalid = 0, all_pop = 0;
  for (int64_t t = 0; t < g.taps; ++t) {
    const int64_t iy = y0 + (t / g.kw) * g.dh, ix = x0 + (t % g.kw) * g.dw;
    const int32_t pop = e.tap_pop[o * g.taps + t];
    all_pop += pop;
    if (iy >= 0 && iy < g.H && ix >= 0 && ix < g.W) {
      ++nvalid;
    } else {
      corr += pop;
    }
  }
  if (s_lacks_wpop) s += all_pop;
  const int32_t C = int32_t(g.C), conv = conv_from_mismatches(C, nvalid, s, corr);
  const float v = epilogue_value(e, o, conv, e.ones ? ones_conv_at(e.ones_full[o], corr, C, int32_t(g.taps), nvalid) : 0);
  const int64_t at = (n * g.O + o) * ohw + rem;
  const float y = nan ? __int_as_float(0x7fc00000) : epilogue_tail(e, o, v, e.residual ? e.residual[at] : 0.0f);
  if (e.float_out) out[at] = y;
  // A NaN output packs as -1 (bit 0): the packed signs cannot carry the NaN flag on.
  if (e.emit_bits && y >= *e.next_shift_dev) atomicOr(e.bits + p * e.Ow + o / 32, 1u << (o % 32));
}

__global__ void __launch_bounds__(kConvThreads)
    conv_kernel(const uint32_t* __restrict__ P, const uint32_t* __restrict__ Wp, ConvGeom g, EpilogueArgs e,
                float* __restrict__ out) {
  __shared__ uint32_t As[kKC][kTP];
  __shared__ uint32_t Ws[kKC][kTO];
  const int64_t ohw = g.OH * g.OW, total_px = g.N * ohw;
  const int64_t px0 = int64_t(blockIdx.x) * kTP, o0 = int64_t(blockIdx.y) * kTO;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;

  // Staging roles: pixel lp / channel lo, rows tid / 64 and tid / 64 + 4 of the 8-word step.
  const int lp = tid % kTP, lo = tid % kTO, lk = tid / kTP;
  const int64_t gp = px0 + lp;
  const bool px_ok = gp < total_px;
  const int64_t pn = px_ok ? gp / ohw : 0, prem = px_ok ? gp % ohw : 0;
  const int64_t iy0 = (prem / g.OW) * g.sh - g.ph, ix0 = (prem % g.OW) * g.sw - g.pw;
  const uint32_t* img = P + pn * g.H * g.W * g.Cw;
  const bool o_ok = o0 + lo < g.O;

  int32_t acc[4][4] = {};
  for (int64_t t = 0; t < g.taps; ++t) {
    const int64_t iy = iy0 + (t / g.kw) * g.dh, ix = ix0 + (t % g.kw) * g.dw;
    const bool in = px_ok && iy >= 0 && iy < g.H && ix >= 0 && ix < g.W;
    const uint32_t* src = in ? img + (iy * g.W + ix) * g.Cw : img;
    const uint32_t* wsrc = Wp + ((o_ok ? o0 + lo : 0) * g.taps + t) * g.Cw;
    for (int64_t cw0 = 0; cw0 < g.Cw; cw0 += kKC) {
#pragma unroll
      for (int r = 0; r < kKC / 4; ++r) {
        const int kk = lk + 4 * r;
        const int64_t cw = cw0 + kk;
        As[kk][lp] = (in && cw < g.Cw) ? src[cw] : 0u;
        Ws[kk][lo] = (o_ok && cw < g.Cw) ? wsrc[cw] : 0u;
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kKC; ++kk) {
        uint32_t a[4], w[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) a[i] = As[kk][tx + 16 * i];
#pragma unroll
        for (int j = 0; j < 4; ++j) w[j] = Ws[kk][ty + 16 * j];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] += __popc(a[i] ^ w[j]);
      }
      __syncthreads();
    }
  }

  const bool nan = *e.nan_flag != 0;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t p = px0 + tx + 16 * i;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t o = o0 + ty + 16 * j;
      if (p < total_px && o < g.O) write_output(g, e, p, o, acc[i][j], false, nan, out);
    }
  }
}

// ---- sm_80+: b1 tensor cores, mma.m16n8k256 with AND + popc (the form Hopper supports) ----
// popc(x ^ w) = popc(x) + popc(w) - 2 popc(x & w): the MMA gives sum popc(x & w); a second MMA against an
// all-ones B gives sum popc(x) per pixel; write_output adds sum_t popc(w_t). A warp computes 16 pixels x
// 32 channels (4 n-tiles of 8); a block, 4 warps over 64 pixels. Fragments (PTX ISA, m16n8k256 .b1):
// A: a0 (row g, word t), a1 (row g+8, word t), a2 (row g, word t+4), a3 (row g+8, word t+4);
// B: b0 (col g, word t), b1 (col g, word t+4); C: c0, c1 (row g, cols 2t, 2t+1), c2, c3 (row g+8),
// with g = lane / 4, t = lane % 4, words of 32 bits along k.
constexpr int kMmaWarps = 4, kMmaNTiles = 4, kMmaPx = 16 * kMmaWarps, kMmaO = 8 * kMmaNTiles;

__device__ __forceinline__ void bmma_and_popc(int32_t (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(ERBNN_CUDA_EMU)
  cuda_emu::mma_m16n8k256_b1(c, a, b0, b1, /*use_xor=*/false);  // inline PTX cannot run on the CPU
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  __trap();  // never launched below sm_80 (run_conv checks the device)
#endif
}

// Word kw (0 <= kw < K, k = tap * Cw + cw) of pixel p's im2col row, 0 out of frame or past the end.
__device__ __forceinline__ uint32_t im2col_word(const uint32_t* __restrict__ P, const ConvGeom& g, bool px_ok,
                                                int64_t n, int64_t iy0, int64_t ix0, int32_t kw) {
  if (!px_ok || kw >= g.K) return 0u;
  const int32_t t = kw / int32_t(g.Cw), cw = kw - t * int32_t(g.Cw);
  const int64_t iy = iy0 + (t / g.kw) * g.dh, ix = ix0 + (t % g.kw) * g.dw;
  if (iy < 0 || iy >= g.H || ix < 0 || ix >= g.W) return 0u;
  return P[((n * g.H + iy) * g.W + ix) * g.Cw + cw];
}

// Word kd of pixel p's dense im2col row (common/dense_layout.h; Cw == 1), 0 out of frame or past the end.
__device__ __forceinline__ uint32_t im2col_word_dense(const uint32_t* __restrict__ P, const ConvGeom& g, bool px_ok,
                                                      int64_t n, int64_t iy0, int64_t ix0, int32_t kd, int32_t Kd) {
  if (!px_ok || kd >= Kd) return 0u;
  return dense_word<uint32_t>(g.C, g.taps, kd, [&](int64_t t) {
    const int64_t iy = iy0 + (t / g.kw) * g.dh, ix = ix0 + (t % g.kw) * g.dw;
    return (iy < 0 || iy >= g.H || ix < 0 || ix >= g.W) ? 0u : P[(n * g.H + iy) * g.W + ix];
  });
}

// Dense weights [O, Kd] from the per-tap ones [O, taps] (Cw == 1).
__global__ void dense_weights_kernel(const uint32_t* __restrict__ wp, ConvGeom g, int32_t Kd, uint32_t* __restrict__ wd) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= g.O * Kd) return;
  const uint32_t* row = wp + (i / Kd) * g.taps;
  wd[i] = dense_word<uint32_t>(g.C, g.taps, i % Kd, [&](int64_t t) { return row[t]; });
}

// Kd > 0: P / Wp in the dense layout, Kd words per output (the per-tap layout otherwise).
__global__ void __launch_bounds__(32 * kMmaWarps)
    conv_mma_kernel(const uint32_t* __restrict__ P, const uint32_t* __restrict__ Wp, ConvGeom g, int32_t Kd,
                    EpilogueArgs e, float* __restrict__ out) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, gi = lane / 4, ti = lane % 4;
  const int64_t ohw = g.OH * g.OW, total_px = g.N * ohw;
  const int64_t pbase = int64_t(blockIdx.x) * kMmaPx + warp * 16, o0 = int64_t(blockIdx.y) * kMmaO;
  bool ok[2];
  int64_t pn[2], iy0[2], ix0[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {  // rows gi and gi + 8 of the warp's 16 pixels
    const int64_t p = pbase + gi + 8 * h;
    ok[h] = p < total_px;
    const int64_t q = ok[h] ? p : 0, rem = q % ohw;
    pn[h] = q / ohw;
    iy0[h] = (rem / g.OW) * g.sh - g.ph;
    ix0[h] = (rem % g.OW) * g.sw - g.pw;
  }
  int32_t acc[kMmaNTiles][4] = {}, xpop[4] = {};
  const int32_t K = Kd > 0 ? Kd : int32_t(g.K);
  auto word = [&](int h, int32_t k) {
    return Kd > 0 ? im2col_word_dense(P, g, ok[h], pn[h], iy0[h], ix0[h], k, Kd)
                  : im2col_word(P, g, ok[h], pn[h], iy0[h], ix0[h], k);
  };
  for (int32_t k0 = 0; k0 < K; k0 += 8) {
    const int32_t kw0 = k0 + ti, kw1 = k0 + ti + 4;
    const uint32_t a[4] = {word(0, kw0), word(1, kw0), word(0, kw1), word(1, kw1)};
#pragma unroll
    for (int nt = 0; nt < kMmaNTiles; ++nt) {
      const int64_t o = o0 + nt * 8 + gi;
      const bool oo = o < g.O;
      const uint32_t b0 = (oo && kw0 < K) ? Wp[o * K + kw0] : 0u;
      const uint32_t b1 = (oo && kw1 < K) ? Wp[o * K + kw1] : 0u;
      bmma_and_popc(acc[nt], a, b0, b1);
    }
    bmma_and_popc(xpop, a, ~0u, ~0u);  // sum popc(x) per pixel (every column alike)
  }
  const bool nan = *e.nan_flag != 0;
#pragma unroll
  for (int nt = 0; nt < kMmaNTiles; ++nt) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int h = r / 2;
      const int64_t p = pbase + gi + 8 * h, o = o0 + nt * 8 + 2 * ti + (r % 2);
      if (ok[h] && o < g.O) write_output(g, e, p, o, xpop[r] - 2 * acc[nt][r], true, nan, out);
    }
  }
}

// Read per call (cheap) so that tests can compare both kernels in one process.
bool use_mma() {
  const char* v = std::getenv("ERBNN_CUDA_MMA");
  const bool env_ok = v == nullptr || std::string(v) != "0";
  return env_ok && at::cuda::getCurrentDeviceProperties()->major >= 8;
}

const uint32_t* words(const at::Tensor& t) { return reinterpret_cast<const uint32_t*>(t.const_data_ptr<int32_t>()); }

void check_float_cuda(const at::Tensor& t, const char* name) {
  check_cuda_input(t, name);
  check_float_input(t, name);
}

// Conv of packed P [N, H, W, Cw] with Wp [O, kh, kw, Cw] into out [N, O, OH, OW] (float32); epi holds the
// per-channel and tail pointers (tap_pop / ones_full are computed here).
void run_conv(const ConvGeom& g, const at::Tensor& P, const at::Tensor& Wp, const EpilogueArgs& epi,
              const at::Tensor& nan_flag, float* out) {
  auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor pops = at::empty({g.O * g.taps + g.O}, Wp.options().dtype(at::kInt));
  int32_t* tap_pop = pops.mutable_data_ptr<int32_t>();
  ERBNN_LAUNCH(int((g.O + 127) / 128), 128, 0, stream, tap_pop_kernel)(words(Wp), g, tap_pop, tap_pop + g.O * g.taps,
                                                             nan_flag.mutable_data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t total_px = g.N * g.OH * g.OW;
  const int64_t bx = (total_px + kTP - 1) / kTP, by = (g.O + kTO - 1) / kTO;
  TORCH_CHECK(bx < (int64_t(1) << 31) && by < 65536, "binary_conv2d: output too large for one launch");
  EpilogueArgs e = epi;
  e.tap_pop = tap_pop, e.ones_full = tap_pop + g.O * g.taps;
  e.nan_flag = nan_flag.const_data_ptr<int>();
  if (use_mma()) {
    const int64_t mx = (total_px + kMmaPx - 1) / kMmaPx, my = (g.O + kMmaO - 1) / kMmaO;
    TORCH_CHECK(mx < (int64_t(1) << 31) && my < 65536, "binary_conv2d: output too large for one launch");
    // C < 32: the dense layout (common/dense_layout.h) drops the per-tap padding words.
    const int32_t Kd = int32_t(dense_word_count(g.C, g.Cw, g.taps, 32));
    at::Tensor wd;
    if (Kd > 0) {
      wd = at::empty({g.O * Kd}, Wp.options().dtype(at::kInt));
      ERBNN_LAUNCH(int((g.O * Kd + 127) / 128), 128, 0, stream, dense_weights_kernel)(
          words(Wp), g, Kd, reinterpret_cast<uint32_t*>(wd.mutable_data_ptr<int32_t>()));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    ERBNN_LAUNCH(dim3(unsigned(mx), unsigned(my)), 32 * kMmaWarps, 0, stream, conv_mma_kernel)(
        words(P), Kd > 0 ? words(wd) : words(Wp), g, Kd, e, out);
  } else {
    ERBNN_LAUNCH(dim3(unsigned(bx), unsigned(by)), kConvThreads, 0, stream, conv_kernel)(words(P), words(Wp), g, e, out);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor pack_conv_weight_cuda(const at::Tensor& w) {
  check_float_cuda(w, "w");
  TORCH_CHECK_VALUE(w.dim() == 4, "w must be 4-D [O, C, kh, kw], got ", w.dim(), "-D");
  c10::cuda::CUDAGuard guard(w.device());
  at::Tensor flag = at::zeros({1}, w.options().dtype(at::kInt));
  at::Tensor wp = pack_signs_4d_cuda(w.permute({0, 2, 3, 1}), at::Tensor(), flag);
  // Packing weights happens once (deploy): a host check is affordable and gives the clear error.
  TORCH_CHECK_VALUE(flag.item<int>() == 0, "w contains NaN: its sign is undefined");
  return wp;
}

std::tuple<at::Tensor, at::Tensor> conv_packed_impl(
    const at::Tensor& x, const at::Tensor& w_packed, const at::Tensor& flag, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, const std::optional<at::Tensor>& x_shift,
    const std::optional<at::Tensor>& out_scale, const std::optional<at::Tensor>& out_bias,
    const std::optional<at::Tensor>& ones_scale, const std::optional<at::Tensor>& residual_in = {},
    const std::optional<at::Tensor>& act_in = {}, const ChainIO& io = {}) {
  const bool packed_x = io.packed_x();
  const ConvGeom g = packed_x ? check_packed_conv_bits(x, io.in_channels, w_packed, stride, padding, dilation,
                                                       at::kInt, kCudaWordBits)
                              : check_packed_conv(x, w_packed, stride, padding, dilation, at::kInt, kCudaWordBits);
  // Read by the packing kernel; not finite -> NaN outputs, like NaN in x.
  const at::Tensor shift = packed_x ? at::Tensor() : checked_shift(x_shift, x);
  const at::Tensor scale = per_channel(out_scale, g.O, x, "out_scale");
  const at::Tensor bias = per_channel(out_bias, g.O, x, "out_bias");
  const at::Tensor ones = per_channel(ones_scale, g.O, x, "ones_scale");
  const at::Tensor residual = checked_residual(residual_in, g, x), act = checked_act(act_in, g.O, x);
  const auto fopts = x.options().dtype(at::kFloat);
  at::Tensor out = io.float_out ? at::empty({g.N, g.O, g.OH, g.OW}, fopts) : at::empty({0}, fopts);
  const bool emit = io.emit_bits();
  const int64_t Ow = (g.O + kCudaWordBits - 1) / kCudaWordBits;
  at::Tensor out_bits = emit ? at::zeros({g.N, g.OH, g.OW, Ow}, x.options().dtype(at::kInt))
                             : at::empty({0}, x.options().dtype(at::kInt));
  if (g.N * g.O * g.OH * g.OW == 0) return {out, out_bits};
  at::Tensor P;
  if (packed_x) {
    P = x.contiguous();
    const int64_t used = g.C - (g.Cw - 1) * kCudaWordBits, pixels = g.N * g.H * g.W;
    if (used < kCudaWordBits && pixels > 0) {
      ERBNN_LAUNCH(int((pixels + 255) / 256), 256, 0, at::cuda::getCurrentCUDAStream(), x_tail_bits_kernel)(
          words(P), pixels, g.Cw, used, flag.mutable_data_ptr<int>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  } else {
    P = pack_signs_4d_cuda(x.permute({0, 2, 3, 1}), shift, flag);
  }
  auto ptr = [](const at::Tensor& t) { return t.defined() ? t.const_data_ptr<float>() : nullptr; };
  EpilogueArgs e;
  e.scale = ptr(scale), e.bias = ptr(bias), e.ones = ptr(ones), e.residual = ptr(residual), e.act = ptr(act);
  e.O = g.O;
  e.float_out = io.float_out;
  e.emit_bits = emit;
  at::Tensor next_shift;
  if (emit) {
    next_shift = io.next_shift.to(at::kFloat);  // on the device: no host sync
    e.next_shift_dev = next_shift.const_data_ptr<float>();
    e.bits = reinterpret_cast<uint32_t*>(out_bits.mutable_data_ptr<int32_t>());
    e.Ow = Ow;
  }
  run_conv(g, P, w_packed.contiguous(), e, flag, io.float_out ? out.mutable_data_ptr<float>() : nullptr);
  return {out, out_bits};
}

at::Tensor binary_conv2d_packed_cuda(const at::Tensor& x, const at::Tensor& w_packed, at::IntArrayRef stride,
                                     at::IntArrayRef padding, at::IntArrayRef dilation,
                                     const std::optional<at::Tensor>& x_shift,
                                     const std::optional<at::Tensor>& out_scale,
                                     const std::optional<at::Tensor>& out_bias,
                                     const std::optional<at::Tensor>& ones_scale,
                                     const std::optional<at::Tensor>& residual,
                                     const std::optional<at::Tensor>& act) {
  check_float_cuda(x, "x");
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor flag = at::zeros({1}, x.options().dtype(at::kInt));
  return std::get<0>(conv_packed_impl(x, w_packed, flag, stride, padding, dilation, x_shift, out_scale, out_bias,
                                      ones_scale, residual, act));
}

std::tuple<at::Tensor, at::Tensor> binary_conv2d_bits_cuda(
    const at::Tensor& x, const at::Tensor& w_packed, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t in_channels, const std::optional<at::Tensor>& x_shift,
    const std::optional<at::Tensor>& out_scale, const std::optional<at::Tensor>& out_bias,
    const std::optional<at::Tensor>& ones_scale, const std::optional<at::Tensor>& residual,
    const std::optional<at::Tensor>& act, const std::optional<at::Tensor>& next_shift, bool float_out) {
  check_cuda_input(x, "x");
  const ChainIO io = check_bits_args(x, in_channels, x_shift, next_shift, float_out);
  if (!io.packed_x()) check_float_input(x, "x");
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor flag = at::zeros({1}, x.options().dtype(at::kInt));
  return conv_packed_impl(x, w_packed, flag, stride, padding, dilation, x_shift, out_scale, out_bias, ones_scale,
                          residual, act, io);
}

at::Tensor binary_conv2d_cuda(const at::Tensor& x, const at::Tensor& w, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_float_cuda(x, "x");
  check_float_cuda(w, "w");
  check_conv_operands(x, w);
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor flag = at::zeros({1}, x.options().dtype(at::kInt));
  const at::Tensor wp = pack_signs_4d_cuda(w.permute({0, 2, 3, 1}), at::Tensor(), flag);  // NaN in w -> NaN out
  return std::get<0>(conv_packed_impl(x, wp, flag, stride, padding, dilation, {}, {}, {}, {}));
}

at::Tensor binary_linear_cuda(const at::Tensor& x, const at::Tensor& w) {
  check_float_cuda(x, "x");
  check_float_cuda(w, "w");
  TORCH_CHECK(w.device() == x.device(), "w is on ", w.device(), " but x is on ", x.device());
  TORCH_CHECK_VALUE(x.dim() >= 1, "x must have at least 1 dimension [..., K]");
  TORCH_CHECK_VALUE(w.dim() == 2, "w must be 2-D [O, K], got ", w.dim(), "-D");
  const int64_t K = x.size(-1), O = w.size(0);
  TORCH_CHECK_VALUE(w.size(1) == K, "w has K = ", w.size(1), " but x has K = ", K);
  c10::cuda::CUDAGuard guard(x.device());
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  shape.push_back(O);
  if (K == 0) return at::zeros(shape, x.options().dtype(at::kFloat));
  if (x.numel() == 0 || O == 0) return at::empty(shape, x.options().dtype(at::kFloat));
  const at::Tensor x4 = x.reshape({-1, K}).t().unsqueeze(0).unsqueeze(2);  // [1, K, 1, M] as an image
  at::Tensor flag = at::zeros({1}, x.options().dtype(at::kInt));
  const at::Tensor wp = pack_signs_4d_cuda(w.unsqueeze(1).unsqueeze(1), at::Tensor(), flag);
  const at::Tensor out = std::get<0>(conv_packed_impl(x4, wp, flag, {1, 1}, {0, 0}, {1, 1}, {}, {}, {}, {}));  // [1, O, 1, M]
  return out.view({O, -1}).t().contiguous().view(shape);
}

}  // namespace
}  // namespace cuda

ERBNN_CUDA_OPS(m) {
  m.impl("binary_conv2d", &cuda::binary_conv2d_cuda);
  m.impl("binary_linear", &cuda::binary_linear_cuda);
  m.impl("pack_conv_weight", &cuda::pack_conv_weight_cuda);
  m.impl("binary_conv2d_packed", &cuda::binary_conv2d_packed_cuda);
  m.impl("binary_conv2d_bits", &cuda::binary_conv2d_bits_cuda);
}

}  // namespace erbnn
