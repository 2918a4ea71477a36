// Host-side argument checks of the training ops' state tensors (restore_*_train), CPU and CUDA.
#pragma once

#include <ATen/ATen.h>

namespace erbnn {

// A ring of float64 values with its 0-dim int64 push count, on x's device.
inline void check_ring(const at::Tensor& values, const char* vname, const at::Tensor& count, const char* cname,
                       const at::Tensor& x) {
  TORCH_CHECK_TYPE(values.scalar_type() == at::kDouble, vname, " must be float64, got ", values.scalar_type());
  TORCH_CHECK_VALUE(values.dim() == 1 && values.numel() > 0 && values.is_contiguous(), vname,
                    " must be a non-empty contiguous 1-D tensor, got shape ", values.sizes());
  TORCH_CHECK_TYPE(count.scalar_type() == at::kLong, cname, " must be int64, got ", count.scalar_type());
  TORCH_CHECK_VALUE(count.numel() == 1, cname, " must hold one value, got ", count.numel());
  TORCH_CHECK(values.device() == x.device() && count.device() == x.device(), vname, " and ", cname,
              " must be on ", x.device(), " with the input, got ", values.device(), " and ", count.device());
}

// The width buffer (0-dim float64) and the percentile p (one floating value), on x's device.
inline void check_width_and_p(const at::Tensor& width, const at::Tensor& p, const at::Tensor& x) {
  TORCH_CHECK_TYPE(width.scalar_type() == at::kDouble, "width must be float64, got ", width.scalar_type());
  TORCH_CHECK_VALUE(width.numel() == 1, "width must hold one value, got ", width.numel());
  TORCH_CHECK(width.device() == x.device(), "width must be on ", x.device(), ", got ", width.device());
  TORCH_CHECK_TYPE(at::isFloatingType(p.scalar_type()), "p must be a floating tensor, got ", p.scalar_type());
  TORCH_CHECK_VALUE(p.numel() == 1, "p must hold one value, got ", p.numel());
  TORCH_CHECK(p.device() == x.device(), "p must be on ", x.device(), ", got ", p.device());
}

}  // namespace erbnn
