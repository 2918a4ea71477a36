// Shape logic of pack_signs / unpack_signs shared by the CPU (64-bit words) and CUDA (32-bit words) ops:
// the packed axis is moved last and the tensor seen as 4-D [A, B, D, C] for the packing kernels.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

namespace erbnn {

inline int64_t words_for(int64_t n, int64_t word_bits) { return (n + word_bits - 1) / word_bits; }

// [leading..., n] (packed axis last) as a 4-D view, padding with size-1 leading dims or flattening the
// extra ones (a copy only for rank > 4 with non-collapsible strides).
inline at::Tensor as_4d(const at::Tensor& t) {
  at::Tensor v = t;
  if (v.dim() > 4) v = v.flatten(0, v.dim() - 4);
  while (v.dim() < 4) v = v.unsqueeze(0);
  return v;
}

// pack_signs(x, dim): x with `dim` moved last (xm), and the shape of the packed result.
struct PackPlan {
  at::Tensor xm;
  std::vector<int64_t> shape;
};
inline PackPlan plan_pack(const at::Tensor& x, int64_t dim, int64_t word_bits) {
  TORCH_CHECK_VALUE(x.dim() >= 1, "pack_signs: x must have at least 1 dimension");
  dim = c10::maybe_wrap_dim(dim, x.dim());
  PackPlan p{x.movedim(dim, -1), {}};
  p.shape.assign(p.xm.sizes().begin(), p.xm.sizes().end() - 1);
  p.shape.push_back(words_for(x.size(dim), word_bits));
  return p;
}

// unpack_signs(packed, n, dim): checks, and the shape of the unpacked result with the axis still last.
inline std::vector<int64_t> plan_unpack(const at::Tensor& packed, int64_t n, at::ScalarType word_type,
                                        int64_t word_bits, const char* layout) {
  TORCH_CHECK_TYPE(packed.scalar_type() == word_type, "packed must be ", word_type == at::kLong ? "int64" : "int32",
                   " (the ", layout,
                   " pack_signs layout), got ", packed.scalar_type());
  TORCH_CHECK_VALUE(packed.dim() >= 1, "packed must have at least 1 dimension");
  TORCH_CHECK_VALUE(n >= 0 && words_for(n, word_bits) == packed.size(-1), "unpack_signs: n = ", n, " needs ",
                    words_for(std::max<int64_t>(n, 0), word_bits), " words, packed has ", packed.size(-1));
  std::vector<int64_t> shape(packed.sizes().begin(), packed.sizes().end() - 1);
  shape.push_back(n);
  return shape;
}

}  // namespace erbnn
