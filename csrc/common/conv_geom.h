// Geometry and argument checks of the binary convolutions, shared by the CPU and CUDA entry points.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace erbnn {

struct ConvGeom {
  int64_t N, C, H, W, O, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW;
  int64_t Cw;    // words per pixel (64-bit on CPU, 32-bit on CUDA)
  int64_t taps;  // kh * kw
  int64_t K;     // taps * Cw words per output
};

inline void check_conv_pair(at::IntArrayRef v, const char* name, int64_t min) {
  TORCH_CHECK_VALUE(v.size() == 2, name, " must have 2 values, got ", v.size());
  TORCH_CHECK_VALUE(v[0] >= min && v[1] >= min, name, " must be >= ", min, ", got ", v);
}

// An input of N x C x H x W; O output channels, kh x kw kernel; word_bits per packed word.
inline ConvGeom make_conv_geom(int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int64_t kh, int64_t kw,
                               at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                               int64_t word_bits) {
  check_conv_pair(stride, "stride", 1);
  check_conv_pair(padding, "padding", 0);
  check_conv_pair(dilation, "dilation", 1);
  TORCH_CHECK_VALUE(kh >= 1 && kw >= 1, "the kernel must be at least 1x1, got ", kh, "x", kw);
  ConvGeom g{};
  g.N = N, g.C = C, g.H = H, g.W = W, g.O = O, g.kh = kh, g.kw = kw;
  g.sh = stride[0], g.sw = stride[1], g.ph = padding[0], g.pw = padding[1], g.dh = dilation[0], g.dw = dilation[1];
  const int64_t eh = g.H + 2 * g.ph - g.dh * (kh - 1) - 1, ew = g.W + 2 * g.pw - g.dw * (kw - 1) - 1;
  TORCH_CHECK_VALUE(eh >= 0 && ew >= 0, "binary_conv2d: the (dilated) kernel ", kh, "x", kw,
                    " is larger than the padded input ", g.H + 2 * g.ph, "x", g.W + 2 * g.pw);
  g.OH = eh / g.sh + 1;
  g.OW = ew / g.sw + 1;
  g.Cw = (g.C + word_bits - 1) / word_bits;
  g.taps = kh * kw;
  g.K = g.taps * g.Cw;
  TORCH_CHECK_VALUE(g.C * g.taps < (int64_t(1) << 31), "binary_conv2d: C * kh * kw = ", g.C * g.taps,
                    " does not fit the int32 accumulators");
  return g;
}

// x: [N, C, H, W].
inline ConvGeom make_conv_geom(const at::Tensor& x, int64_t O, int64_t kh, int64_t kw, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, int64_t word_bits) {
  TORCH_CHECK_VALUE(x.dim() == 4, "x must be 4-D [N, C, H, W], got ", x.dim(), "-D");
  return make_conv_geom(x.size(0), x.size(1), x.size(2), x.size(3), O, kh, kw, stride, padding, dilation, word_bits);
}

}  // namespace erbnn
