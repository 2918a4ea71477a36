// binary_conv2d, binary_linear, pack_conv_weight and binary_conv2d_packed (the deploy path with the
// fused epilogue), CPU. Packing: sign_pack.cpp; tiles and microkernels: binary_conv_kernels.cpp. The convs
// run on the engine conv_engine.h picks: XNOR-popcount here, the int8 engines of int8_conv.h, or torch's
// oneDNN int8 conv (onednn_conv.h).
#include <torch/library.h>

#include <memory>
#include <optional>
#include <tuple>

#include "binary_conv_cpu.h"
#include "binary_conv_weights.h"
#include "common/conv_checks.h"
#include "conv_engine.h"
#include "cpu_isa.h"
#include "cpu_utils.h"
#include "int8_conv.h"
#include "onednn_conv.h"
#include "sign_pack.h"
#include "simd.h"

namespace erbnn {
namespace {

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got one on ", t.device());
}

// Runs the tiled XNOR-popcount conv: P [N, H, W, Cw], Wp [O, kh, kw, Cw] (uint64) or, with Kd > 0, the
// dense weights [O, Kd] (dense_words); out [N, O, OH, OW]; the packed output through `bits` where
// e.emit_bits.
void run_conv(const ConvGeom& g, const uint64_t* P, const uint64_t* Wp, const Epilogue& e, float* out,
              int64_t Kd = 0, const BitsOut& bits = {}) {
  const CpuIsa isa = active_cpu_isa();
  auto kernel = isa == CpuIsa::kAvx512 ? &tile_kernel_avx512
                : isa == CpuIsa::kAvx2 ? &tile_kernel_avx2
                                       : &tile_kernel_scalar;
  ConvGeom gk = g;  // the kernels' view: K words per output
  if (Kd > 0) gk.K = Kd;
  struct Worker {
    const ConvGeom &g, &gk;
    const uint64_t *P, *Wp;
    const Epilogue& e;
    float* out;
    decltype(kernel) k;
    const BitsOut& bits;
    void build(Tile& t) const {
      build_tile(g, P, t, gk.K != g.K ? gk.K : 0);
      t.masks = bits.for_thread();
      t.nan_at = 64 * bits.Ow;
    }
    void run(const Tile& t, int64_t o0, int64_t o1) const {
      bits.begin(t, o0, o1);
      k(gk, t, Wp, o0, o1, e, out);
      bits.finish(g, t, o0, o1);
    }
  };
  // Emitting bits: tasks own whole 64-channel words.
  run_tiles(g, e.emit_bits ? 64 : 8, [&] { return Worker{g, gk, P, Wp, e, out, kernel, bits}; });
}

// The dense weights of a cache entry, built on first use.
const uint64_t* dense_weights(const ConvGeom& g, PackedWeights& w, int64_t Kd) {
  {
    std::lock_guard<std::mutex> lock(w.mu);
    if (w.dense.empty()) {
      w.dense.resize(size_t(g.O * Kd));
      for (int64_t o = 0; o < g.O; ++o) {
        const uint64_t* row = w.words.data() + o * g.K;
        for (int64_t k = 0; k < Kd; ++k)
          w.dense[o * Kd + k] = dense_word<uint64_t>(g.C, g.taps, k, [&](int64_t t) { return row[t]; });
      }
    }
  }
  packed_weights_grew();
  return w.dense.data();
}

const uint64_t* words(const at::Tensor& t) { return reinterpret_cast<const uint64_t*>(t.const_data_ptr<int64_t>()); }

at::Tensor pack_conv_weight_cpu(const at::Tensor& w) {
  check_cpu(w, "w");
  check_float_input(w, "w");
  TORCH_CHECK_VALUE(w.dim() == 4, "w must be 4-D [O, C, kh, kw], got ", w.dim(), "-D");
  if (w.is_contiguous()) {
    // [O, C, kh*kw]: the taps are the contiguous axis, so the vector packer spans all kh*kw of them.
    const at::Tensor v = w.view({w.size(0), w.size(1), w.size(2) * w.size(3)}).permute({0, 2, 1}).unsqueeze(1);
    return pack_signs_4d_cpu(v, 0.0, "w").view({w.size(0), w.size(2), w.size(3), cpu_words(w.size(1))});
  }
  return pack_signs_4d_cpu(w.permute({0, 2, 3, 1}), 0.0, "w");
}

// A 1-element CPU tensor's value: float32 / float64 read in place (item() is a dispatched op, a
// noticeable part of a small layer's call), other float types through item().
double scalar_value(const at::Tensor& t) {
  if (t.scalar_type() == at::kDouble) return *t.const_data_ptr<double>();
  if (t.scalar_type() == at::kFloat) return *t.const_data_ptr<float>();
  return t.item<double>();
}

// Checks that a packed x has no bits past its in_channels channels (the kernels count them).
void check_x_tail_bits(const ConvGeom& g, const uint64_t* P) {
  const int64_t used = g.C - (g.Cw - 1) * 64;
  if (used == 64) return;
  const uint64_t tail = ~((uint64_t(1) << used) - 1);
  const int64_t px = g.N * g.H * g.W;
  uint64_t bad = 0;
  isa_call([&] {  // an OR over every pixel's last word: vectorised (it reads N*H*W words per call)
    uint64_t acc = 0;
#pragma omp simd reduction(| : acc)
    for (int64_t i = 0; i < px; ++i) acc |= P[i * g.Cw + g.Cw - 1];
    bad = acc & tail;
  });
  TORCH_CHECK_VALUE(bad == 0, "packed x has bits set beyond its in_channels = ", g.C, " channels");
}

// (out, out_bits): out [N, O, OH, OW] float32 (empty [0] without float_out), out_bits [N, OH, OW, Ow]
// int64 (empty [0] without emit_bits).
std::tuple<at::Tensor, at::Tensor> conv_packed_impl(
    const at::Tensor& x, const at::Tensor& w_packed, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, double x_shift, const std::optional<at::Tensor>& out_scale,
    const std::optional<at::Tensor>& out_bias, const std::optional<at::Tensor>& ones_scale,
    const std::optional<at::Tensor>& residual_in = {}, const std::optional<at::Tensor>& act_in = {},
    const ChainIO& io = {}) {
  check_cpu(x, "x");
  const bool packed_x = io.packed_x();
  if (!packed_x) check_float_input(x, "x");
  const ConvGeom g = packed_x ? check_packed_conv_bits(x, io.in_channels, w_packed, stride, padding, dilation,
                                                       at::kLong, kCpuWordBits)
                              : check_packed_conv(x, w_packed, stride, padding, dilation, at::kLong, kCpuWordBits);
  TORCH_CHECK_VALUE(std::isfinite(x_shift), "x_shift must be finite, got ", x_shift);
  const double next_shift = io.emit_bits() ? scalar_value(io.next_shift) : 0.0;
  TORCH_CHECK_VALUE(std::isfinite(next_shift), "next_shift must be finite, got ", next_shift);
  const at::Tensor scale = per_channel(out_scale, g.O, x, "out_scale"), bias = per_channel(out_bias, g.O, x, "out_bias"),
                   ones = per_channel(ones_scale, g.O, x, "ones_scale");
  const at::Tensor residual = checked_residual(residual_in, g, x), act = checked_act(act_in, g.O, x);
  const auto fopts = x.options().dtype(at::kFloat);
  at::Tensor out = io.float_out ? at::empty({g.N, g.O, g.OH, g.OW}, fopts) : at::empty({0}, fopts);
  const int64_t Ow = cpu_words(g.O);
  at::Tensor out_bits = at::empty(io.emit_bits() ? at::IntArrayRef({g.N, g.OH, g.OW, Ow}) : at::IntArrayRef({0}),
                                  x.options().dtype(at::kLong));
  const at::Tensor P = packed_x ? x.contiguous() : at::Tensor();
  if (packed_x) check_x_tail_bits(g, words(P));
  if (g.N * g.O * g.OH * g.OW == 0) {
    // The packing pass checks x for NaN even when the output is empty over O.
    if (!packed_x) pack_signs_4d_cpu(x.permute({0, 2, 3, 1}), x_shift, "x");
    return {out, out_bits};
  }
  const at::Tensor Wp = w_packed.contiguous();
  const std::shared_ptr<PackedWeights> pw = packed_weights(g, words(Wp));
  const int64_t Kd = dense_words(g);
  Epilogue e;
  e.scale = scale.defined() ? scale.const_data_ptr<float>() : nullptr;
  e.bias = bias.defined() ? bias.const_data_ptr<float>() : nullptr;
  e.ones = ones.defined() ? ones.const_data_ptr<float>() : nullptr;
  e.tap_pop = pw->tap_pop.data();
  e.ones_full = pw->ones_full.data();
  e.residual = residual.defined() ? residual.const_data_ptr<float>() : nullptr;
  e.act = act.defined() ? act.const_data_ptr<float>() : nullptr;
  e.O = g.O;
  e.emit_bits = io.emit_bits();
  e.float_out = io.float_out;
  e.next_shift = static_cast<float>(next_shift);  // the consumer's packing compares in float32 too
  BitsOut bits;
  at::Tensor scratch;
  if (io.emit_bits()) {
    bits.dst = reinterpret_cast<uint64_t*>(out_bits.mutable_data_ptr<int64_t>());
    bits.Ow = Ow;
    scratch = at::empty({int64_t(at::get_num_threads()), bits.masks_per_thread()}, x.options().dtype(at::kShort));
    bits.scratch = reinterpret_cast<uint16_t*>(scratch.mutable_data_ptr<int16_t>());
  }
  float* dst = io.float_out ? out.mutable_data_ptr<float>() : nullptr;
  run_on_conv_engine(g, [&](ConvEngine eng) {
    if (eng == ConvEngine::kXnor) {
      const at::Tensor Pf = packed_x ? P : pack_signs_4d_cpu(x.permute({0, 2, 3, 1}), x_shift, "x");
      run_conv(g, words(Pf), Kd > 0 ? dense_weights(g, *pw, Kd) : pw->words.data(), e, dst, Kd, bits);
    } else if (eng == ConvEngine::kOnednnInt8) {
      onednn_conv_run(g, packed_x ? P : x, x_shift, *pw, e, dst, bits);
    } else {
      int8_conv_run(g, packed_x ? P : x, x_shift, *pw, e, eng == ConvEngine::kAmx, dst, bits);
    }
  });
  return {out, out_bits};
}

// x_shift: None (0) or a 1-element float tensor on the CPU, read as double.
double read_shift(const std::optional<at::Tensor>& s, const at::Tensor& x) {
  check_cpu(x, "x");
  const at::Tensor t = checked_shift(s, x);
  return t.defined() ? scalar_value(t) : 0.0;
}

at::Tensor binary_conv2d_packed_cpu(const at::Tensor& x, const at::Tensor& w_packed, at::IntArrayRef stride,
                                    at::IntArrayRef padding, at::IntArrayRef dilation,
                                    const std::optional<at::Tensor>& x_shift,
                                    const std::optional<at::Tensor>& out_scale,
                                    const std::optional<at::Tensor>& out_bias,
                                    const std::optional<at::Tensor>& ones_scale,
                                    const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& act) {
  return std::get<0>(conv_packed_impl(x, w_packed, stride, padding, dilation, read_shift(x_shift, x), out_scale,
                                      out_bias, ones_scale, residual, act));
}

// binary_conv2d_packed with x given packed (in_channels >= 1) and/or the next layer's packed input out.
std::tuple<at::Tensor, at::Tensor> binary_conv2d_bits_cpu(
    const at::Tensor& x, const at::Tensor& w_packed, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t in_channels, const std::optional<at::Tensor>& x_shift,
    const std::optional<at::Tensor>& out_scale, const std::optional<at::Tensor>& out_bias,
    const std::optional<at::Tensor>& ones_scale, const std::optional<at::Tensor>& residual,
    const std::optional<at::Tensor>& act, const std::optional<at::Tensor>& next_shift, bool float_out) {
  const ChainIO io = check_bits_args(x, in_channels, x_shift, next_shift, float_out);
  return conv_packed_impl(x, w_packed, stride, padding, dilation, io.packed_x() ? 0.0 : read_shift(x_shift, x), out_scale,
                          out_bias, ones_scale, residual, act, io);
}

at::Tensor binary_conv2d_cpu(const at::Tensor& x, const at::Tensor& w, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_cpu(x, "x");
  check_float_input(x, "x");
  check_conv_operands(x, w);
  return std::get<0>(conv_packed_impl(x, pack_conv_weight_cpu(w), stride, padding, dilation, 0.0, {}, {}, {}));
}

at::Tensor binary_linear_cpu(const at::Tensor& x, const at::Tensor& w) {
  check_cpu(x, "x");
  check_cpu(w, "w");
  check_float_input(x, "x");
  check_float_input(w, "w");
  TORCH_CHECK_VALUE(x.dim() >= 1, "x must have at least 1 dimension [..., K]");
  TORCH_CHECK_VALUE(w.dim() == 2, "w must be 2-D [O, K], got ", w.dim(), "-D");
  const int64_t K = x.size(-1), O = w.size(0);
  TORCH_CHECK_VALUE(w.size(1) == K, "w has K = ", w.size(1), " but x has K = ", K);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  shape.push_back(O);
  if (K == 0) return at::zeros(shape, x.options().dtype(at::kFloat));
  const at::Tensor x2 = x.reshape({-1, K});
  const int64_t M = x2.size(0);
  // A 1x1 convolution of one 1 x M image with K channels.
  const at::Tensor P = pack_signs_4d_cpu(x2.unsqueeze(0).unsqueeze(0), 0.0, "x");
  const at::Tensor Wp = pack_signs_4d_cpu(w.unsqueeze(1).unsqueeze(1), 0.0, "w");
  if (M == 0 || O == 0) return at::empty(shape, x.options().dtype(at::kFloat));
  ConvGeom g{};
  g.N = 1, g.C = K, g.H = 1, g.W = M, g.O = O, g.kh = g.kw = 1, g.sh = g.sw = 1, g.ph = g.pw = 0;
  g.dh = g.dw = 1, g.OH = 1, g.OW = M, g.Cw = cpu_words(K), g.taps = 1, g.K = g.Cw;
  TORCH_CHECK_VALUE(K < (int64_t(1) << 31), "binary_linear: K = ", K, " does not fit the int32 accumulators");
  at::Tensor out = at::empty({O, M}, x.options().dtype(at::kFloat));
  std::vector<int32_t> tap_pop(static_cast<size_t>(O)), ones_full(static_cast<size_t>(O));
  for (int64_t o = 0; o < O; ++o)
    weight_tap_stats(words(Wp) + o * g.K, 1, g.Cw, K, tap_pop.data() + o, ones_full.data() + o);
  Epilogue e;
  e.tap_pop = tap_pop.data();
  e.ones_full = ones_full.data();
  run_conv(g, words(P), words(Wp), e, out.mutable_data_ptr<float>());
  return out.t().contiguous().view(shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(erbnn, CPU, m) {
  m.impl("binary_conv2d", &binary_conv2d_cpu);
  m.impl("binary_linear", &binary_linear_cpu);
  m.impl("pack_conv_weight", &pack_conv_weight_cpu);
  m.impl("binary_conv2d_packed", &binary_conv2d_packed_cpu);
  m.impl("binary_conv2d_bits", &binary_conv2d_bits_cpu);
}

}  // namespace erbnn
