// The onednn_int8 engine of the CPU binary convolution: torch's own oneDNN int8 conv
// (onednn::qconv2d_pointwise, weights prepacked by onednn::qconv_prepack) on the +-1 operands, exact:
//   activations u8 in {0, 2} with zero point 1 (= sign(x - shift) in {-1, +1}), channels-last;
//   weights s8 +-1, scale 1; float32 output (scale 1, the int32 sums converted once).
// A padded tap holds the zero point, i.e. the value 0: the same zero-padded integer conv as the other
// engines (conv_epilogue.h), so the shared epilogue turns it into bit-identical outputs.
// The ops are found through the dispatcher and called boxed, with the argument stack built from the
// schema's argument names: the schema changed across torch versions, and one this code does not know
// leaves the engine unavailable with a reason (onednn_status), never a wrong call.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "binary_conv_cpu.h"
#include "binary_conv_weights.h"

namespace erbnn {

// Whether torch has the ops with a schema understood here and a small conv through them was exact
// (checked once, on first use); the reason when not.
bool onednn_available();
std::string onednn_status();
// Tests: make the engine look unavailable (as with an unknown schema), or the real state again.
void set_onednn_disabled(bool disabled);
// Tests of the schema reader on any torch: what the reader says of a schema string ("" = understood).
std::string onednn_schema_problem(const std::string& schema);

// out [N, O, OH, OW] from x [N, C, H, W] (float dtypes, any strides) or its packed signs [N, H, W, Cw]
// (int64, shift ignored) and w (the packed weights' cache entry: the prepacked oneDNN weights are built
// into it once per stride / padding / dilation); e: the epilogue; bits: the packed output where
// e.emit_bits. NaN in x -> ValueError.
void onednn_conv_run(const ConvGeom& g, const at::Tensor& x, double shift, PackedWeights& w, const Epilogue& e,
                     float* out, const BitsOut& bits = {});

}  // namespace erbnn
