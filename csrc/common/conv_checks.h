// Argument checks of binary_conv2d_packed / binary_conv2d_bits shared by the CPU and CUDA entry points (x's own dtype check is
// the device's float-input check).
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "common/conv_geom.h"

namespace erbnn {

inline const char* word_type_name(at::ScalarType t) { return t == at::kLong ? "int64" : "int32"; }

inline void check_on_x_device(const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK(t.device() == x.device(), name, " is on ", t.device(), " but x is on ", x.device());
}

// w_packed: [O, kh, kw, Cw] words of word_type for C channels (device checked by the caller).
inline void check_w_packed(const at::Tensor& w_packed, at::ScalarType word_type, const at::Tensor& x) {
  check_on_x_device(w_packed, "w_packed", x);
  TORCH_CHECK_TYPE(w_packed.scalar_type() == word_type, "w_packed must be ", word_type_name(word_type), " (pack_conv_weight on ",
                   x.device().type(), "), got ", w_packed.scalar_type());
  TORCH_CHECK_VALUE(w_packed.dim() == 4, "w_packed must be 4-D [O, kh, kw, Cw], got ", w_packed.dim(), "-D");
}

inline void check_w_words(const at::Tensor& w_packed, const ConvGeom& g) {
  TORCH_CHECK_VALUE(w_packed.size(3) == g.Cw, "w_packed has ", w_packed.size(3), " words per tap but x has C = ",
                    g.C, " channels (", g.Cw, " words)");
}

// w_packed: [O, kh, kw, Cw] words of word_type (int64 on CPU, int32 on CUDA) for x's C channels.
inline ConvGeom check_packed_conv(const at::Tensor& x, const at::Tensor& w_packed, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation, at::ScalarType word_type,
                                  int64_t word_bits) {
  check_w_packed(w_packed, word_type, x);
  const ConvGeom g = make_conv_geom(x, w_packed.size(0), w_packed.size(1), w_packed.size(2), stride, padding,
                                    dilation, word_bits);
  check_w_words(w_packed, g);
  return g;
}

// x given as its packed signs [N, H, W, Cw] (words of word_type, the layout of the packing pass and of
// binary_conv2d_bits' out_bits) of in_channels channels.
inline ConvGeom check_packed_conv_bits(const at::Tensor& x, int64_t in_channels, const at::Tensor& w_packed,
                                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                       at::ScalarType word_type, int64_t word_bits) {
  check_w_packed(w_packed, word_type, x);
  TORCH_CHECK_VALUE(x.dim() == 4, "packed x must be 4-D [N, H, W, Cw], got ", x.dim(), "-D");
  TORCH_CHECK_VALUE(in_channels >= 1, "in_channels must be >= 1 with a packed x (its channel count), got ",
                    in_channels);
  TORCH_CHECK_VALUE(x.size(3) == (in_channels + word_bits - 1) / word_bits, "packed x has ", x.size(3),
                    " words per pixel but in_channels = ", in_channels, " needs ",
                    (in_channels + word_bits - 1) / word_bits);
  const ConvGeom g = make_conv_geom(x.size(0), in_channels, x.size(1), x.size(2), w_packed.size(0), w_packed.size(1),
                                    w_packed.size(2), stride, padding, dilation, word_bits);
  check_w_words(w_packed, g);
  return g;
}

// The chained-deploy options of binary_conv2d_bits, one rule for both devices: x is given as the packed
// signs of in_channels channels exactly when in_channels >= 1 (-1: x is float), and the next layer's
// packed input is written exactly when next_shift is defined (the CPU reads its value on the host, CUDA
// keeps it on the device: no host sync).
struct ChainIO {
  int64_t in_channels = -1;  // >= 1: x is packed signs [N, H, W, Cw]
  at::Tensor next_shift;     // defined: emit the packed output
  bool float_out = true;
  bool packed_x() const { return in_channels >= 1; }
  bool emit_bits() const { return next_shift.defined(); }
};

// binary_conv2d_bits' own arguments, checked: in_channels -1 or >= 1, x_shift None with a packed x,
// next_shift one float value on x's device, float_out=False only with next_shift.
inline ChainIO check_bits_args(const at::Tensor& x, int64_t in_channels, const std::optional<at::Tensor>& x_shift,
                               const std::optional<at::Tensor>& next_shift, bool float_out) {
  TORCH_CHECK_VALUE(in_channels == -1 || in_channels >= 1, "in_channels must be -1 (x is float) or >= 1 (x is "
                    "packed), got ", in_channels);
  ChainIO io;
  io.in_channels = in_channels;
  io.float_out = float_out;
  TORCH_CHECK_VALUE(!(io.packed_x() && x_shift.has_value() && x_shift->defined()),
                    "x_shift must be None with a packed x (its signs already hold the shift)");
  if (next_shift.has_value() && next_shift->defined()) {
    check_on_x_device(*next_shift, "next_shift", x);
    TORCH_CHECK_TYPE(at::isFloatingType(next_shift->scalar_type()), "next_shift must be a float tensor, got ",
                     next_shift->scalar_type());
    TORCH_CHECK_VALUE(next_shift->numel() == 1, "next_shift must hold one value, got ", next_shift->numel());
    io.next_shift = *next_shift;
  }
  TORCH_CHECK_VALUE(io.emit_bits() || float_out, "float_out=False needs next_shift (the op would compute nothing)");
  return io;
}

// binary_conv2d(x, w): x [N, C, H, W] and w [O, C, kh, kw] on one device.
inline void check_conv_operands(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK_VALUE(x.dim() == 4, "x must be 4-D [N, C, H, W], got ", x.dim(), "-D");
  TORCH_CHECK_VALUE(w.dim() == 4, "w must be 4-D [O, C, kh, kw], got ", w.dim(), "-D");
  TORCH_CHECK_VALUE(w.size(1) == x.size(1), "w has ", w.size(1), " input channels but x has ", x.size(1));
  check_on_x_device(w, "w", x);
}

// out_scale / out_bias / ones_scale: [O] or 1 element (broadcast), a float tensor on x's device; returned
// as contiguous float32 [O], or undefined for None.
inline at::Tensor per_channel(const std::optional<at::Tensor>& t, int64_t O, const at::Tensor& x, const char* name) {
  if (!t.has_value() || !t->defined()) return {};
  check_on_x_device(*t, name, x);
  TORCH_CHECK_TYPE(at::isFloatingType(t->scalar_type()), name, " must be a float tensor, got ", t->scalar_type());
  TORCH_CHECK_VALUE(t->numel() == O || t->numel() == 1, name, " must have 1 or O = ", O, " elements, got ",
                    t->numel());
  // Already float32 [O]-sized and contiguous: used as is (the kernels read O floats).
  if (t->scalar_type() == at::kFloat && t->numel() == O && t->is_contiguous()) return *t;
  // One float32 value on the CPU (the ER step's scalars): broadcast by a direct fill, not four ops.
  if (t->scalar_type() == at::kFloat && t->numel() == 1 && t->device().is_cpu()) {
    at::Tensor v = at::empty({O}, t->options());
    const float value = *t->const_data_ptr<float>();
    float* out = v.mutable_data_ptr<float>();
    for (int64_t o = 0; o < O; ++o) out[o] = value;
    return v;
  }
  at::Tensor v = t->to(at::kFloat).reshape({-1});
  return (v.numel() == O ? v : v.expand({O})).contiguous();
}

// The fused tail (common/conv_epilogue.h). residual: [N, O, OH, OW] like the output; act: [3, O] or [3, 1]
// (RPReLU shift_in, slope, shift_out). Float tensors on x's device, returned as contiguous float32.
inline at::Tensor checked_residual(const std::optional<at::Tensor>& r, const ConvGeom& g, const at::Tensor& x) {
  if (!r.has_value() || !r->defined()) return {};
  check_on_x_device(*r, "residual", x);
  TORCH_CHECK_TYPE(at::isFloatingType(r->scalar_type()), "residual must be a float tensor, got ", r->scalar_type());
  TORCH_CHECK_VALUE(r->sizes() == at::IntArrayRef({g.N, g.O, g.OH, g.OW}), "residual must have the output's shape [",
                    g.N, ", ", g.O, ", ", g.OH, ", ", g.OW, "], got ", r->sizes());
  if (r->scalar_type() == at::kFloat && r->is_contiguous()) return *r;
  return r->to(at::kFloat).contiguous();
}

inline at::Tensor checked_act(const std::optional<at::Tensor>& a, int64_t O, const at::Tensor& x) {
  if (!a.has_value() || !a->defined()) return {};
  check_on_x_device(*a, "act", x);
  TORCH_CHECK_TYPE(at::isFloatingType(a->scalar_type()), "act must be a float tensor, got ", a->scalar_type());
  TORCH_CHECK_VALUE(a->dim() == 2 && a->size(0) == 3 && (a->size(1) == O || a->size(1) == 1),
                    "act must be [3, O] or [3, 1] (RPReLU shift_in, slope, shift_out) with O = ", O, ", got ",
                    a->sizes());
  if (a->scalar_type() == at::kFloat && a->size(1) == O && a->is_contiguous()) return *a;
  return a->to(at::kFloat).expand({3, O}).contiguous();
}

// x_shift: None (returned undefined: shift 0) or a 1-element float tensor on x's device.
inline at::Tensor checked_shift(const std::optional<at::Tensor>& s, const at::Tensor& x) {
  if (!s.has_value() || !s->defined()) return {};
  check_on_x_device(*s, "x_shift", x);
  TORCH_CHECK_TYPE(at::isFloatingType(s->scalar_type()), "x_shift must be a float tensor, got ", s->scalar_type());
  TORCH_CHECK_VALUE(s->numel() == 1, "x_shift must hold one value, got ", s->numel());
  return *s;
}

}  // namespace erbnn
