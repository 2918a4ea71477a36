// binary_conv2d, binary_linear, pack_conv_weight and binary_conv2d_packed (the deploy path with the
// fused epilogue), CPU. Packing: sign_pack.cpp; tiles and microkernels: binary_conv_kernels.cpp. The convs
// run on the engine conv_engine.h picks: XNOR-popcount here, or the int8 engines of int8_conv.h.
#include <torch/library.h>

#include <chrono>
#include <optional>
#include <sstream>
#include <string>

#include "binary_conv_cpu.h"
#include "conv_engine.h"
#include "cpu_isa.h"
#include "cpu_utils.h"
#include "int8_conv.h"
#include "sign_pack.h"

namespace erbnn {
namespace {

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got one on ", t.device());
}

ConvGeom make_geom(const at::Tensor& x, int64_t O, int64_t kh, int64_t kw, at::IntArrayRef stride,
                   at::IntArrayRef padding, at::IntArrayRef dilation) {
  return make_conv_geom(x, O, kh, kw, stride, padding, dilation, kCpuWordBits);
}

// Per output channel: popcount of each weight tap (border correction) and conv(1, W_b) in frame; the
// epilogue of every engine reads them.
struct TapStats {
  std::vector<int32_t> tap_pop;
  std::vector<int64_t> ones_full;
};
TapStats tap_stats(const ConvGeom& g, const uint64_t* Wp) {
  TapStats s{std::vector<int32_t>(size_t(g.O * g.taps)), std::vector<int64_t>(size_t(g.O))};
  for (int64_t o = 0; o < g.O; ++o) {
    int64_t tot = 0;
    for (int64_t t = 0; t < g.taps; ++t) {
      int32_t c = 0;
      for (int64_t cw = 0; cw < g.Cw; ++cw) c += __builtin_popcountll(Wp[(o * g.taps + t) * g.Cw + cw]);
      s.tap_pop[o * g.taps + t] = c;
      tot += 2 * c - g.C;
    }
    s.ones_full[o] = tot;
  }
  return s;
}

// Runs the tiled XNOR-popcount conv: P [N, H, W, Cw], Wp [O, kh, kw, Cw] (uint64), out [N, O, OH, OW];
// e.tap_pop / e.ones_full from tap_stats.
void run_conv(const ConvGeom& g, const uint64_t* P, const uint64_t* Wp, const Epilogue& e, float* out) {
  const int64_t ohw = g.OH * g.OW, nblk = (ohw + kTilePx - 1) / kTilePx, tiles = g.N * nblk;
  // Too few pixel tiles to feed every thread (small images, batch 1): split output channels too.
  const int64_t want = 4 * int64_t(at::get_num_threads());
  int64_t nch = 1;
  if (tiles < want) nch = std::min<int64_t>((g.O + 7) / 8, (want + tiles - 1) / tiles);
  const int64_t ochunk = ((g.O + nch - 1) / nch + 7) / 8 * 8;
  nch = (g.O + ochunk - 1) / ochunk;
  const CpuIsa isa = active_cpu_isa();
  auto kernel = isa == CpuIsa::kAvx512 ? &tile_kernel_avx512
                : isa == CpuIsa::kAvx2 ? &tile_kernel_avx2
                                       : &tile_kernel_scalar;
  at::parallel_for(0, tiles * nch, 1, [&](int64_t lo, int64_t hi) {
    Tile t;
    int64_t built = -1;
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t tile = task / nch, ch = task % nch;
      if (tile != built) {  // consecutive tasks of one tile share its im2col buffer
        t.n = tile / nblk;
        t.p0 = (tile % nblk) * kTilePx;
        t.np = int(std::min<int64_t>(kTilePx, ohw - t.p0));
        build_tile(g, P, t);
        built = tile;
      }
      const int64_t o0 = ch * ochunk, o1 = std::min(g.O, o0 + ochunk);
      kernel(g, t, Wp, o0, o1, e, out);
    }
  });
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

// 1-element tensors broadcast to [O]; others must have O elements. float32 contiguous, or undefined.
at::Tensor per_channel(const std::optional<at::Tensor>& t, int64_t O, const char* name) {
  if (!t.has_value() || !t->defined()) return {};
  check_cpu(*t, name);
  check_float_input(*t, name);
  TORCH_CHECK_VALUE(t->numel() == O || t->numel() == 1, name, " must have 1 or O = ", O, " elements, got ",
                    t->numel());
  at::Tensor v = t->to(at::kFloat).reshape({-1});
  return (v.numel() == O ? v : v.expand({O})).contiguous();
}

// The auto-choice cache key: shape, geometry, dtype, memory layout and thread count.
std::string engine_key(const ConvGeom& g, const at::Tensor& x) {
  std::ostringstream k;
  k << g.N << ',' << g.C << ',' << g.H << ',' << g.W << ',' << g.O << ',' << g.kh << ',' << g.kw << ',' << g.sh
    << ',' << g.sw << ',' << g.ph << ',' << g.pw << ',' << g.dh << ',' << g.dw << ',' << x.scalar_type() << ','
    << x.stride(1) << ',' << at::get_num_threads();
  return k.str();
}

at::Tensor conv_packed_impl(const at::Tensor& x, const at::Tensor& w_packed, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, double x_shift,
                            const std::optional<at::Tensor>& out_scale, const std::optional<at::Tensor>& out_bias,
                            const std::optional<at::Tensor>& ones_scale) {
  check_cpu(x, "x");
  check_cpu(w_packed, "w_packed");
  check_float_input(x, "x");
  TORCH_CHECK_TYPE(w_packed.scalar_type() == at::kLong, "w_packed must be int64 (pack_conv_weight on CPU), got ",
                   w_packed.scalar_type());
  TORCH_CHECK_VALUE(w_packed.dim() == 4, "w_packed must be 4-D [O, kh, kw, Cw], got ", w_packed.dim(), "-D");
  const ConvGeom g = make_geom(x, w_packed.size(0), w_packed.size(1), w_packed.size(2), stride, padding, dilation);
  TORCH_CHECK_VALUE(w_packed.size(3) == g.Cw, "w_packed has ", w_packed.size(3), " words per tap but x has C = ",
                    g.C, " channels (", g.Cw, " words)");
  TORCH_CHECK_VALUE(std::isfinite(x_shift), "x_shift must be finite, got ", x_shift);
  const at::Tensor scale = per_channel(out_scale, g.O, "out_scale"), bias = per_channel(out_bias, g.O, "out_bias"),
                   ones = per_channel(ones_scale, g.O, "ones_scale");
  at::Tensor out = at::empty({g.N, g.O, g.OH, g.OW}, x.options().dtype(at::kFloat));
  if (out.numel() == 0) {
    // The packing pass checks x for NaN even when the output is empty over O.
    pack_signs_4d_cpu(x.permute({0, 2, 3, 1}), x_shift, "x");
    return out;
  }
  const at::Tensor Wp = w_packed.contiguous();
  const TapStats st = tap_stats(g, words(Wp));
  Epilogue e;
  e.scale = scale.defined() ? scale.const_data_ptr<float>() : nullptr;
  e.bias = bias.defined() ? bias.const_data_ptr<float>() : nullptr;
  e.ones = ones.defined() ? ones.const_data_ptr<float>() : nullptr;
  e.tap_pop = st.tap_pop.data();
  e.ones_full = st.ones_full.data();
  float* dst = out.mutable_data_ptr<float>();
  auto run = [&](ConvEngine eng) {
    if (eng == ConvEngine::kXnor) {
      const at::Tensor P = pack_signs_4d_cpu(x.permute({0, 2, 3, 1}), x_shift, "x");
      run_conv(g, words(P), words(Wp), e, dst);
    } else {
      int8_conv_run(g, x, x_shift, words(Wp), e, eng == ConvEngine::kAmx, dst);
    }
  };
  auto timed = [&](ConvEngine eng) {
    const auto t0 = std::chrono::steady_clock::now();
    run(eng);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  run(choose_conv_engine(engine_key(g, x), timed));
  return out;
}

// x_shift: None (0) or a 1-element float tensor on the CPU, read as double.
double read_shift(const std::optional<at::Tensor>& s) {
  if (!s.has_value() || !s->defined()) return 0.0;
  check_cpu(*s, "x_shift");
  check_float_input(*s, "x_shift");
  TORCH_CHECK_VALUE(s->numel() == 1, "x_shift must hold one value, got ", s->numel());
  return s->item<double>();
}

at::Tensor binary_conv2d_packed_cpu(const at::Tensor& x, const at::Tensor& w_packed, at::IntArrayRef stride,
                                    at::IntArrayRef padding, at::IntArrayRef dilation,
                                    const std::optional<at::Tensor>& x_shift,
                                    const std::optional<at::Tensor>& out_scale,
                                    const std::optional<at::Tensor>& out_bias,
                                    const std::optional<at::Tensor>& ones_scale) {
  return conv_packed_impl(x, w_packed, stride, padding, dilation, read_shift(x_shift), out_scale, out_bias,
                          ones_scale);
}

at::Tensor binary_conv2d_cpu(const at::Tensor& x, const at::Tensor& w, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_cpu(x, "x");
  check_float_input(x, "x");
  TORCH_CHECK_VALUE(x.dim() == 4, "x must be 4-D [N, C, H, W], got ", x.dim(), "-D");
  TORCH_CHECK_VALUE(w.dim() == 4, "w must be 4-D [O, C, kh, kw], got ", w.dim(), "-D");
  TORCH_CHECK_VALUE(w.size(1) == x.size(1), "w has ", w.size(1), " input channels but x has ", x.size(1));
  return conv_packed_impl(x, pack_conv_weight_cpu(w), stride, padding, dilation, 0.0, {}, {}, {});
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
  const TapStats st = tap_stats(g, words(Wp));
  Epilogue e;
  e.tap_pop = st.tap_pop.data();
  e.ones_full = st.ones_full.data();
  run_conv(g, words(P), words(Wp), e, out.mutable_data_ptr<float>());
  return out.t().contiguous().view(shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(erbnn, CPU, m) {
  m.impl("binary_conv2d", &binary_conv2d_cpu);
  m.impl("binary_linear", &binary_linear_cpu);
  m.impl("pack_conv_weight", &pack_conv_weight_cpu);
  m.impl("binary_conv2d_packed", &binary_conv2d_packed_cpu);
}

}  // namespace erbnn
