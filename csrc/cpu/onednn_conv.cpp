// The onednn_int8 engine (onednn_conv.h): the schema reader, the fused u8 input pass, the weight prepack
// cached per packed-weight entry, and the epilogue over oneDNN's float32 conv (the shared one:
// conv_epilogue_avx512.h, or common/conv_epilogue.h on the scalar path).
#include "onednn_conv.h"

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/jit/frontend/function_schema_parser.h>

#include <immintrin.h>

#include <array>
#include <atomic>
#include <mutex>
#include <optional>
#include <type_traits>
#include <vector>

#include "conv_epilogue_avx512.h"
#include "cpu_isa.h"

namespace erbnn {

// What a packed-weight entry keeps for this engine: the prepacked weights of one stride / padding /
// dilation (qconv_prepack takes them), with the per-channel scales and zero points the conv reads.
struct OnednnWeights {
  std::array<int64_t, 6> geom;
  at::Tensor packed, scales, zero_points;
};

namespace {

// ------------------------------------------------------------------------------ the ops' schemas
// An argument's value comes from the call (the tensors and the geometry) or is a constant of the schema.
enum class Slot { kConst, kX, kW, kWScale, kWZp, kStride, kPadding, kDilation };

struct Plan {
  std::optional<c10::OperatorHandle> op;  // set by find_plan
  std::vector<Slot> slots;
  std::vector<c10::IValue> consts;  // per argument (kConst only)
};

// The type an argument is declared with, as the schema spells it (ScalarType, not int).
std::string type_of(const c10::Argument& a) { return a.real_type()->annotation_str(); }

bool one_of(const std::string& t, std::initializer_list<const char*> ok) {
  for (const char* s : ok)
    if (t == s) return true;
  return false;
}

// The value of a number argument in the type the schema asks: float, int, or a 0-d tensor.
std::optional<c10::IValue> number(const std::string& type, double v, bool integer) {
  if (type == "float") return c10::IValue(v);
  if (type == "int") return c10::IValue(int64_t(v));
  if (type == "Tensor")
    return c10::IValue(integer ? at::scalar_tensor(int64_t(v), at::kLong) : at::scalar_tensor(v, at::kFloat));
  return std::nullopt;
}

// The slot of argument a of qconv2d_pointwise (conv) or qconv_prepack; "" or the problem.
std::string read_arg(const c10::Argument& a, bool conv, Slot& slot, c10::IValue& value) {
  const std::string& n = a.name();
  const std::string t = type_of(a);
  slot = Slot::kConst;
  auto need = [&](bool ok) { return ok ? std::string() : "argument '" + n + "' has type " + t + ", not one known"; };
  auto num = [&](double v, bool integer) {
    auto iv = number(t, v, integer);
    if (iv) value = *iv;
    return need(iv.has_value());
  };
  if (n == "stride" || n == "padding" || n == "dilation") {
    slot = n == "stride" ? Slot::kStride : n == "padding" ? Slot::kPadding : Slot::kDilation;
    return need(t == "List[int]" || t == "int[]");
  }
  if (n == "groups") return num(1, true);
  if (n == "x_scale") return num(1.0, false);
  if (n == "x_zero_point" || n == "x_zp") return num(1, true);
  if (conv) {
    if (n == "qx") return slot = Slot::kX, need(t == "Tensor");
    if (n == "qw" || n == "packed_weight") return slot = Slot::kW, need(t == "Tensor");
    if (n == "w_scale" || n == "w_scales") return slot = Slot::kWScale, need(t == "Tensor");
    if (n == "w_zero_point" || n == "w_zp") return slot = Slot::kWZp, need(t == "Tensor");
    if (n == "bias") return value = c10::IValue(), need(one_of(t, {"Optional[Tensor]", "Tensor?"}));
    // 1 / output scale or output scale: 1 either way; the zero point 0 (the output is float anyway)
    if (n == "output_scale" || n == "inv_output_scale") return num(1.0, false);
    if (n == "output_zero_point") return num(0, true);
    if (n == "output_dtype")
      return value = c10::IValue(at::kFloat), need(one_of(t, {"Optional[ScalarType]", "ScalarType?"}));
    if (n == "fp32_output") return value = c10::IValue(true), need(t == "bool");
    if (n == "attr") return value = c10::IValue(std::string("none")), need(t == "str");
    if (n == "scalars")
      return value = c10::IValue(c10::List<std::optional<at::Scalar>>()),
             need(one_of(t, {"List[Optional[number]]", "Scalar?[]", "List[Optional[Scalar]]"}));
    if (n == "algorithm")
      return value = c10::IValue(std::string()), need(one_of(t, {"Optional[str]", "str?", "str"}));
  } else {
    if (n == "weight") return slot = Slot::kW, need(t == "Tensor");
    if (n == "w_scales" || n == "w_scale") return slot = Slot::kWScale, need(t == "Tensor");
    if (n == "x_shape") return value = c10::IValue(), need(one_of(t, {"Optional[List[int]]", "int[]?"}));
  }
  if (a.default_value()) {  // an argument added later with a default: its default keeps the old meaning
    value = *a.default_value();
    return "";
  }
  return "argument '" + n + "' (" + t + ") is not one known";
}

// The plan for a schema, or the problem with it.
std::string make_plan(const c10::FunctionSchema& s, bool conv, Plan& p) {
  if (s.returns().size() != 1 || type_of(s.returns()[0]) != "Tensor") return s.name() + " does not return one Tensor";
  if (s.is_vararg() || s.is_mutable()) return s.name() + " is vararg or mutates an argument";
  p.slots.clear();
  p.consts.clear();
  bool have[9] = {};
  for (const c10::Argument& a : s.arguments()) {
    Slot slot;
    c10::IValue v;
    const std::string why = read_arg(a, conv, slot, v);
    if (!why.empty()) return s.name() + ": " + why;
    p.slots.push_back(slot);
    p.consts.push_back(std::move(v));
    have[int(slot)] = true;
  }
  for (Slot need : {Slot::kX, Slot::kW, Slot::kWScale, Slot::kStride, Slot::kPadding, Slot::kDilation}) {
    if (need == Slot::kX && !conv) continue;
    if (!have[int(need)]) return s.name() + ": an argument it needs is missing";
  }
  if (conv && !have[int(Slot::kWZp)]) return s.name() + ": no weight zero point argument";
  return "";
}

std::string find_plan(const char* name, bool conv, Plan& p) {
  auto op = c10::Dispatcher::singleton().findSchema({name, ""});
  if (!op) return std::string("torch has no ") + name;
  p.op = op;
  return make_plan(op->schema(), conv, p);
}

// ------------------------------------------------------------------------------ weights and calls
// Calls the plan's op with its argument stack: each slot's value (an undefined tensor for a slot the op
// does not take), the schema's constants elsewhere; returns the one Tensor it must return.
at::Tensor call(const Plan& p, const char* name, const ConvGeom& g, const at::Tensor& x, const at::Tensor& w,
                const at::Tensor& w_scale, const at::Tensor& w_zp) {
  torch::jit::Stack st;
  const std::vector<int64_t> stride{g.sh, g.sw}, pad{g.ph, g.pw}, dil{g.dh, g.dw};
  for (size_t i = 0; i < p.slots.size(); ++i) {
    switch (p.slots[i]) {
      case Slot::kX: st.emplace_back(x); break;
      case Slot::kW: st.emplace_back(w); break;
      case Slot::kWScale: st.emplace_back(w_scale); break;
      case Slot::kWZp: st.emplace_back(w_zp); break;
      case Slot::kStride: st.emplace_back(stride); break;
      case Slot::kPadding: st.emplace_back(pad); break;
      case Slot::kDilation: st.emplace_back(dil); break;
      default: st.push_back(p.consts[i]);
    }
  }
  p.op->callBoxed(st);
  TORCH_CHECK(st.size() == 1 && st[0].isTensor(), name, " returned something other than a Tensor");
  return st[0].toTensor();
}

at::Tensor prepack(const Plan& p, const ConvGeom& g, const uint64_t* words, at::Tensor& scales,
                   at::Tensor& zero_points) {
  // +-1 int8 [O, C, kh, kw] from the packed bits [O, taps, Cw] (a one-time pass per entry)
  at::Tensor w = at::empty({g.O, g.C, g.kh, g.kw}, at::TensorOptions().dtype(at::kChar));
  int8_t* d = w.mutable_data_ptr<int8_t>();
  at::parallel_for(0, g.O, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t o = lo; o < hi; ++o)
      for (int64_t c = 0; c < g.C; ++c)
        for (int64_t t = 0; t < g.taps; ++t)
          d[(o * g.C + c) * g.taps + t] = (words[(o * g.taps + t) * g.Cw + c / 64] >> (c % 64)) & 1 ? 1 : -1;
  });
  scales = at::ones({g.O}, at::kFloat);  // qconv_prepack: float64 in some versions, float32 in others
  zero_points = at::zeros({g.O}, at::kLong);
  return call(p, "onednn::qconv_prepack", g, {}, w, scales, {});
}

at::Tensor conv(const Plan& p, const ConvGeom& g, const at::Tensor& xu, const OnednnWeights& w) {
  at::Tensor y = call(p, "onednn::qconv2d_pointwise", g, xu, w.packed, w.scales, w.zero_points);
  TORCH_CHECK(y.layout() == at::kStrided && y.scalar_type() == at::kFloat && y.dim() == 4 && y.size(0) == g.N &&
                  y.size(1) == g.O && y.size(2) == g.OH && y.size(3) == g.OW,
              "onednn::qconv2d_pointwise returned ", y.layout(), " ", y.scalar_type(), " ", y.sizes(),
              ", expected a strided float [", g.N, ", ", g.O, ", ", g.OH, ", ", g.OW, "]");
  return y;
}

struct Ops {
  Plan conv, prepack;
  std::string status;  // "" = usable
};

std::string self_test(const Ops& ops);

const Ops& ops() {
  static const Ops o = [] {
    Ops r;
    if (!at::hasMKLDNN()) {
      r.status = "torch was built without oneDNN (mkldnn)";
      return r;
    }
    try {
      r.status = find_plan("onednn::qconv_prepack", false, r.prepack);
      if (r.status.empty()) r.status = find_plan("onednn::qconv2d_pointwise", true, r.conv);
      if (r.status.empty()) r.status = self_test(r);
    } catch (const std::exception& e) {
      r.status = std::string("the self-test call failed: ") + e.what();
    }
    return r;
  }();
  return o;
}

std::atomic<bool>& disabled() {
  static std::atomic<bool> off{false};
  return off;
}

// ------------------------------------------------------------------------------ the u8 input
// u8 [N, C, H, W] channels-last: 2 where x >= shift (+1), 0 where below (-1); zero point 1.
constexpr uint8_t kPos = 2, kNeg = 0;

// Rows [h0, h1) of one image of a float32 x with W contiguous (at most kRowBlocks 16-pixel blocks):
// per 64 channels, each channel's compare masks over those rows (read in address order: a channel's
// rows follow each other in NCHW, where one row of all channels at a time jumped a plane per load), then
// per pixel its 64 channel bits (bit j of each mask) expand to 64 bytes of the u8 pixel.
constexpr int64_t kRowBlocks = 128;

ERBNN_EPI_AVX512 bool u8_rows_nchw_avx512(const float* img, int64_t sc, int64_t sh, int64_t C, int64_t h0,
                                          int64_t h1, int64_t W, float shift, uint8_t* d) {
  const __m512 s = _mm512_set1_ps(shift);
  const __m512i pos = _mm512_set1_epi8(char(kPos));
  const int64_t Wb = (W + 15) / 16;
  __mmask16 nan = 0;
  alignas(64) uint16_t m[kRowBlocks][64];  // [row block][channel]
  for (int64_t c0 = 0; c0 < C; c0 += 64) {
    const int64_t nc = std::min<int64_t>(64, C - c0);
    const __mmask64 lanes = nc == 64 ? ~__mmask64(0) : (__mmask64(1) << nc) - 1;
    for (int64_t i = 0; i < 64; ++i) {
      if (i >= nc) {
        for (int64_t b = 0; b < (h1 - h0) * Wb; ++b) m[b][i] = 0;
        continue;
      }
      const float* ch = img + (c0 + i) * sc;
      for (int64_t h = h0; h < h1; ++h)
        for (int64_t wb = 0; wb < Wb; ++wb) {
          const int64_t np = std::min<int64_t>(16, W - wb * 16);
          const __mmask16 pm = np == 16 ? __mmask16(0xFFFF) : __mmask16((1u << np) - 1);
          const __m512 x = _mm512_maskz_loadu_ps(pm, ch + h * sh + wb * 16);
          nan |= _mm512_mask_cmp_ps_mask(pm, x, x, _CMP_UNORD_Q);
          m[(h - h0) * Wb + wb][i] = _mm512_mask_cmp_ps_mask(pm, x, s, _CMP_GE_OQ);
        }
    }
    for (int64_t h = h0; h < h1; ++h)
      for (int64_t wb = 0; wb < Wb; ++wb) {
        const uint16_t* mb = m[(h - h0) * Wb + wb];
        const __m512i lo = _mm512_load_si512(mb), hi = _mm512_load_si512(mb + 32);
        const int64_t np = std::min<int64_t>(16, W - wb * 16);
        uint8_t* px = d + (h * W + wb * 16) * C + c0;
#pragma GCC unroll 16
        for (int j = 0; j < 16; ++j) {
          if (j >= np) break;
          const uint64_t a = uint32_t(_mm512_movepi16_mask(_mm512_slli_epi16(lo, 15 - j)));
          const uint64_t b = uint32_t(_mm512_movepi16_mask(_mm512_slli_epi16(hi, 15 - j)));
          _mm512_mask_storeu_epi8(px + j * C, lanes, _mm512_maskz_mov_epi8(__mmask64(a | (b << 32)), pos));
        }
      }
  }
  return nan != 0;
}

// One pixel of a float32 x with C contiguous (channels-last x).
ERBNN_EPI_AVX512 bool u8_pixel_nhwc_avx512(const float* px, int64_t C, float shift, uint8_t* d) {
  const __m512 s = _mm512_set1_ps(shift);
  const __m128i pos = _mm_set1_epi8(char(kPos));
  __mmask16 nan = 0;
  for (int64_t c = 0; c < C; c += 16) {
    const int64_t n = std::min<int64_t>(16, C - c);
    const __mmask16 m = n == 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
    const __m512 x = _mm512_maskz_loadu_ps(m, px + c);
    nan |= _mm512_mask_cmp_ps_mask(m, x, x, _CMP_UNORD_Q);
    _mm_mask_storeu_epi8(d + c, m, _mm_maskz_mov_epi8(_mm512_mask_cmp_ps_mask(m, x, s, _CMP_GE_OQ), pos));
  }
  return nan != 0;
}

template <typename T>
void u8_from_typed(const at::Tensor& x, T shift, uint8_t* dst) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t sn = x.stride(0), sc = x.stride(1), sh = x.stride(2), sw = x.stride(3);
  const T* src = x.const_data_ptr<T>();
  const bool avx512 = std::is_same_v<T, float> && active_cpu_isa() == CpuIsa::kAvx512;
  std::atomic<bool> nan{false};
  const int64_t Wb = (W + 15) / 16;
  at::parallel_for(0, N * H, 1, [&](int64_t lo, int64_t hi) {
    bool bad = false;
    for (int64_t r = lo; r < hi; ++r) {
      const T* row = src + (r / H) * sn + (r % H) * sh;
      uint8_t* d = dst + r * W * C;
      if constexpr (std::is_same_v<T, float>) {
        if (avx512 && sw == 1 && W > 1 && Wb <= kRowBlocks) {
          // as many rows of this image at once as the mask block holds
          const int64_t h0 = r % H, h1 = std::min({H, h0 + kRowBlocks / Wb, h0 + (hi - r)});
          bad |= u8_rows_nchw_avx512(src + (r / H) * sn, sc, sh, C, h0, h1, W, shift, dst + (r / H) * H * W * C);
          r += h1 - h0 - 1;
          continue;
        }
        if (avx512 && sc == 1) {
          for (int64_t w = 0; w < W; ++w) bad |= u8_pixel_nhwc_avx512(row + w * sw, C, shift, d + w * C);
          continue;
        }
      }
      for (int64_t w = 0; w < W; ++w)
        for (int64_t c = 0; c < C; ++c) {
          const T v = row[c * sc + w * sw];
          bad |= v != v;
          d[w * C + c] = v >= shift ? kPos : kNeg;
        }
    }
    if (bad) nan.store(true);
  });
  TORCH_CHECK_VALUE(!nan.load(), "x contains NaN: its sign is undefined");
}

ERBNN_EPI_AVX512 void u8_pixel_bits_avx512(const uint64_t* words, int64_t C, uint8_t* d) {
  const __m512i pos = _mm512_set1_epi8(char(kPos));
  for (int64_t c0 = 0; c0 < C; c0 += 64) {
    const int64_t n = std::min<int64_t>(64, C - c0);
    const __mmask64 lanes = n == 64 ? ~__mmask64(0) : (__mmask64(1) << n) - 1;
    _mm512_mask_storeu_epi8(d + c0, lanes, _mm512_maskz_mov_epi8(__mmask64(words[c0 / 64]), pos));
  }
}

// From packed signs P [N, H, W, Cw]: pixel by pixel, a word's bits are its 64 channels' bytes.
void u8_from_bits(const ConvGeom& g, const at::Tensor& P, uint8_t* dst) {
  const uint64_t* src = reinterpret_cast<const uint64_t*>(P.const_data_ptr<int64_t>());
  const bool avx512 = active_cpu_isa() == CpuIsa::kAvx512;
  at::parallel_for(0, g.N * g.H * g.W, 64, [&](int64_t lo, int64_t hi) {
    for (int64_t px = lo; px < hi; ++px) {
      const uint64_t* w = src + px * g.Cw;
      uint8_t* d = dst + px * g.C;
      if (avx512) {
        u8_pixel_bits_avx512(w, g.C, d);
        continue;
      }
      for (int64_t c = 0; c < g.C; ++c) d[c] = (w[c / 64] >> (c % 64)) & 1 ? kPos : kNeg;
    }
  });
}

at::Tensor u8_input(const ConvGeom& g, const at::Tensor& x, double shift) {
  at::Tensor xu = at::empty({g.N, g.C, g.H, g.W},
                            x.options().dtype(at::kByte).memory_format(at::MemoryFormat::ChannelsLast));
  uint8_t* d = xu.mutable_data_ptr<uint8_t>();
  if (x.scalar_type() == at::kLong) {
    u8_from_bits(g, x, d);
  } else if (x.scalar_type() == at::kDouble) {
    u8_from_typed<double>(x, shift, d);
  } else {
    // float16 / bfloat16 convert to float32 exactly; the comparison runs in float32 (as sign_pack's).
    u8_from_typed<float>(x.scalar_type() == at::kFloat ? x : x.to(at::kFloat), static_cast<float>(shift), d);
  }
  return xu;
}

// ------------------------------------------------------------------------------ the epilogue
// The tile's out-of-frame bookkeeping (nvalid, keff, oob_c, part_tap / part_bad: build_tile's meaning),
// from the geometry alone: oneDNN did the im2col. A tap is in frame for a pixel where its row and its
// column are: per tap, the AND of a row mask and a column mask over the tile's pixels.
void frame_tile(const ConvGeom& g, Tile& t) {
  t.part_tap.clear();
  t.part_bad.clear();
  int64_t iy0[kTilePx], ix0[kTilePx];
  tile_origins(g, t, iy0, ix0);
  const uint32_t full = (1u << t.np) - 1;
  constexpr int64_t kMaxKw = 32;
  uint32_t cols[kMaxKw];
  int32_t ny[kTilePx] = {}, nx[kTilePx] = {};
  for (int64_t kx = 0; kx < std::min(g.kw, kMaxKw); ++kx) {
    cols[kx] = 0;
    for (int j = 0; j < t.np; ++j) {
      const int64_t ix = ix0[j] + kx * g.dw;
      const bool in = ix >= 0 && ix < g.W;
      cols[kx] |= uint32_t(in) << j;
      nx[j] += in;
    }
  }
  for (int64_t ky = 0; ky < g.kh; ++ky) {
    uint32_t row = 0;
    for (int j = 0; j < t.np; ++j) {
      const int64_t iy = iy0[j] + ky * g.dh;
      const bool in = iy >= 0 && iy < g.H;
      row |= uint32_t(in) << j;
      ny[j] += in;
    }
    for (int64_t kx = 0; kx < g.kw; ++kx) {
      uint32_t col = 0;
      if (kx < kMaxKw) {
        col = cols[kx];
      } else {
        for (int j = 0; j < t.np; ++j) col |= uint32_t(ix0[j] + kx * g.dw >= 0 && ix0[j] + kx * g.dw < g.W) << j;
        if (ky == 0)
          for (int j = 0; j < t.np; ++j) nx[j] += (col >> j) & 1u;
      }
      const uint32_t ok = row & col;
      if (ok != full) {
        t.part_tap.push_back(int32_t(ky * g.kw + kx));
        t.part_bad.push_back(~ok & ((1u << kTilePx) - 1));
      }
    }
  }
  for (int j = 0; j < kTilePx; ++j) {
    t.nvalid[j] = j < t.np ? ny[j] * nx[j] : 0;
    t.keff[j] = int32_t(g.C * t.nvalid[j]);
    t.oob_c[j] = int32_t(g.C * (g.taps - t.nvalid[j]));
  }
}

// The conv sums of the tile: element offsets of its pixels in image n of y (channel 0).
struct ConvSums {
  const float* y;
  int64_t sn, sc, sh, sw;
  bool gather;  // every offset within an image fits int32
  const float* image(const Tile& t) const { return y + t.n * sn; }
  int64_t offset(const ConvGeom& g, const Tile& t, int j) const {
    const int64_t p = t.p0 + j;
    return (p / g.OW) * sh + (p % g.OW) * sw;
  }
};

// 16 x 16 floats: r[j] lane i -> r[i] lane j (32-bit, then 64-bit interleaves within 128-bit lanes, then
// 128-bit lane shuffles).
ERBNN_EPI_AVX512 inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int k = 0; k < 8; ++k) {
    t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
    t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
  }
  __m512 u[16];  // u[4k + m], 128-bit lane L: element 4L + m of rows 4k .. 4k + 3
  for (int k = 0; k < 4; ++k) {
    const __m512d a = _mm512_castps_pd(t[4 * k]), b = _mm512_castps_pd(t[4 * k + 1]),
                  c = _mm512_castps_pd(t[4 * k + 2]), d = _mm512_castps_pd(t[4 * k + 3]);
    u[4 * k] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    u[4 * k + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    u[4 * k + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    u[4 * k + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int m = 0; m < 4; ++m) {
    const __m512 x0 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0x44), x1 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0x44);
    const __m512 y0 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0xEE), y1 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0xEE);
    r[m] = _mm512_shuffle_f32x4(x0, x1, 0x88);
    r[4 + m] = _mm512_shuffle_f32x4(x0, x1, 0xDD);
    r[8 + m] = _mm512_shuffle_f32x4(y0, y1, 0x88);
    r[12 + m] = _mm512_shuffle_f32x4(y0, y1, 0xDD);
  }
}

// Channels [o0, o1) of the tile into the AVX-512 epilogue. Channels-last y (channel stride 1): per 16
// channels, the 16 pixels' rows are read as whole vectors (the tile's block of y in address order; a
// gather per channel straight from y stalled on the misses) and transposed in registers. Other strides:
// one gather per channel.
ERBNN_EPI_AVX512 void epilogue_tile_avx512(const ConvGeom& g, const ConvSums& y, const Tile& t, int64_t o0,
                                           int64_t o1, const Epilogue& e, float* out) {
  alignas(64) int32_t off[kTilePx] = {};
  for (int j = 0; j < t.np; ++j) off[j] = int32_t(y.offset(g, t, j));
  const __mmask16 store = __mmask16((1u << t.np) - 1);
  const float* img = y.image(t);
  if (y.sc != 1) {
    const __m512i base = _mm512_load_si512(off);
    for (int64_t o = o0; o < o1; ++o) {
      const __m512i idx = _mm512_add_epi32(base, _mm512_set1_epi32(int32_t(o * y.sc)));
      const __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), store, idx, img, 4);
      store_conv_avx512(t, o, _mm512_cvtps_epi32(v), oob_pop_avx512(g, t, o, e), e, store, out,
                        out_offset(g, t, o));
    }
    return;
  }
  for (int64_t ob = o0; ob < o1; ob += 16) {
    const int64_t nc = std::min<int64_t>(16, o1 - ob);
    const __mmask16 cm = nc == 16 ? __mmask16(0xFFFF) : __mmask16((1u << nc) - 1);
    __m512 r[16];
    for (int j = 0; j < 16; ++j)
      r[j] = j < t.np ? _mm512_maskz_loadu_ps(cm, img + off[j] + ob) : _mm512_setzero_ps();
    transpose16(r);
    for (int64_t i = 0; i < nc; ++i) {
      const int64_t o = ob + i;
      store_conv_avx512(t, o, _mm512_cvtps_epi32(r[i]), oob_pop_avx512(g, t, o, e), e, store, out,
                        out_offset(g, t, o));
    }
  }
}

// The scalar path: epilogue_scalar takes the XNOR engine's mismatch sums, S = corr + (C nvalid - conv) / 2
// (conv_epilogue.h; conv and C nvalid have the same parity).
void epilogue_tile_scalar(const ConvGeom& g, const ConvSums& y, const Tile& t, int64_t o0, int64_t o1,
                          const Epilogue& e, float* out) {
  const float* img = y.image(t);
  for (int64_t o = o0; o < o1; ++o) {
    const int32_t* pop = e.tap_pop + o * g.taps;
    int64_t s[kTilePx] = {};
    for (int j = 0; j < t.np; ++j) {
      int32_t corr = 0;
      for (size_t i = 0; i < t.part_tap.size(); ++i)
        if ((t.part_bad[i] >> j) & 1u) corr += pop[t.part_tap[i]];
      const int64_t conv = int64_t(img[y.offset(g, t, j) + o * y.sc]);
      s[j] = corr + (t.keff[j] - conv) / 2;
    }
    epilogue_scalar(g, t, o, s, e, out);
  }
}

// The self-test: a 3-channel 4x4 image, 2 output channels, 3x3 with padding 1 and stride 1, signs in a
// fixed pattern, against the direct zero-padded conv.
std::string self_test(const Ops& o) {
  ConvGeom g{};
  g.N = 1, g.C = 3, g.H = 4, g.W = 4, g.O = 2, g.kh = g.kw = 3, g.sh = g.sw = 1, g.ph = g.pw = 1, g.dh = g.dw = 1;
  g.OH = g.OW = 4, g.Cw = 1, g.taps = 9, g.K = 9;
  std::vector<uint64_t> words(size_t(g.O * g.taps));
  for (size_t i = 0; i < words.size(); ++i) words[i] = (i * 5 + 3) % 8 & 7;
  at::Tensor x = at::empty({1, 3, 4, 4}, at::kFloat);
  float* xp = x.mutable_data_ptr<float>();
  for (int i = 0; i < 48; ++i) xp[i] = (i * 7 + i / 5) % 3 == 0 ? -1.0f : 1.0f;
  OnednnWeights w;
  w.packed = prepack(o.prepack, g, words.data(), w.scales, w.zero_points);
  const at::Tensor y = conv(o.conv, g, u8_input(g, x, 0.0), w);
  for (int64_t oc = 0; oc < g.O; ++oc)
    for (int64_t oy = 0; oy < 4; ++oy)
      for (int64_t ox = 0; ox < 4; ++ox) {
        int64_t want = 0;
        for (int64_t t = 0; t < 9; ++t) {
          const int64_t iy = oy + t / 3 - 1, ix = ox + t % 3 - 1;
          if (iy < 0 || iy >= 4 || ix < 0 || ix >= 4) continue;
          for (int64_t c = 0; c < 3; ++c)
            want += int64_t(xp[(c * 4 + iy) * 4 + ix]) * ((words[oc * 9 + t] >> c) & 1 ? 1 : -1);
        }
        const float got = y[0][oc][oy][ox].item<float>();
        if (got != float(want))
          return "the self-test conv through oneDNN was not exact (" + std::to_string(got) + " for " +
                 std::to_string(want) + "): a schema whose meaning changed";
      }
  return "";
}

}  // namespace

bool onednn_available() { return !disabled().load() && ops().status.empty(); }

std::string onednn_status() {
  if (disabled().load()) return "disabled (set_onednn_disabled)";
  const std::string& s = ops().status;
  return s.empty() ? "usable: onednn::qconv2d_pointwise" : "unavailable: " + s;
}

void set_onednn_disabled(bool off) { disabled().store(off); }

std::string onednn_schema_problem(const std::string& schema) {
  const c10::FunctionSchema s = torch::jit::parseSchema(schema);
  Plan p;
  const bool conv = s.name().find("qconv_prepack") == std::string::npos;
  return make_plan(s, conv, p);
}

namespace {

// oneDNN's conv of xu, then the epilogue into out / bits.
void run_conv_epilogue(const ConvGeom& g, const Ops& o, const OnednnWeights& ow, const at::Tensor& xu,
                       const Epilogue& e, float* out, const BitsOut& bits) {
  const at::Tensor y = conv(o.conv, g, xu, ow);
  ConvSums sums{y.const_data_ptr<float>(), y.stride(0), y.stride(1), y.stride(2), y.stride(3), false};
  sums.gather = (g.OH - 1) * sums.sh + (g.OW - 1) * sums.sw + (g.O - 1) * sums.sc < (int64_t(1) << 31);
  const bool avx512 = active_cpu_isa() == CpuIsa::kAvx512 && sums.gather;
  struct Worker {
    const ConvGeom& g;
    const ConvSums& y;
    const Epilogue& e;
    float* out;
    const BitsOut& bits;
    bool avx512;
    void build(Tile& t) const {
      frame_tile(g, t);
      t.masks = bits.for_thread();
      t.nan_at = 64 * bits.Ow;
    }
    void run(const Tile& t, int64_t o0, int64_t o1) const {
      bits.begin(t, o0, o1);
      if (avx512)
        epilogue_tile_avx512(g, y, t, o0, o1, e, out);
      else
        epilogue_tile_scalar(g, y, t, o0, o1, e, out);
      bits.finish(g, t, o0, o1);
    }
  };
  run_tiles(g, e.emit_bits ? 64 : 16, [&] { return Worker{g, sums, e, out, bits, avx512}; });
}

}  // namespace

void onednn_conv_run(const ConvGeom& g, const at::Tensor& x, double shift, PackedWeights& w, const Epilogue& e,
                     float* out, const BitsOut& bits) {
  TORCH_CHECK(onednn_available(), "the onednn_int8 engine is not available: ", onednn_status());
  const Ops& o = ops();
  const std::array<int64_t, 6> geom{g.sh, g.sw, g.ph, g.pw, g.dh, g.dw};
  std::shared_ptr<OnednnWeights> ow;
  {
    std::lock_guard<std::mutex> lock(w.mu);
    for (const auto& c : w.onednn)
      if (c->geom == geom) ow = c;
    if (!ow) {
      ow = std::make_shared<OnednnWeights>();
      ow->geom = geom;
      ow->packed = prepack(o.prepack, g, w.words.data(), ow->scales, ow->zero_points);
      w.onednn.push_back(ow);
      w.onednn_bytes += size_t(g.O * g.C * g.taps + g.O * 12);
    }
  }
  packed_weights_grew();
  run_conv_epilogue(g, o, *ow, u8_input(g, x, shift), e, out, bits);
}

}  // namespace erbnn
