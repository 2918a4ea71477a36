// two_sided_quantile, CUDA: the CPU's radix select (common/quantile_math.h) on the device, with no
// host sync. Per 11-bit digit, most significant first:
//   digit_histogram_kernel  block histograms in shared memory (warp-aggregated adds, so ties do not
//                           serialize), merged into the pass's global histogram;
//   select_kernel           one warp per half finds the bucket of its rank and extends its prefix.
// The prefixes, ranks and counts stay in a small device state between passes. min_above_kernel finds
// the (lo+1)-th key when it lies beyond the last histogram (it returns at once otherwise), and
// finalize_kernel interpolates. NaN/Inf in x give a NaN result (raising would need a host sync).
#include <torch/library.h>

#include "common/checks.h"
#include "cuda_utils.cuh"
#include "quantile_kernels.cuh"

namespace erbnn {
namespace cuda {
namespace {

at::Tensor two_sided_quantile_cuda(const at::Tensor& x_in, double p) {
  check_cuda_input(x_in, "x");
  check_float_input(x_in, "x");
  TORCH_CHECK_VALUE(p >= 0.0 && p <= 1.0, "p must be in [0, 1], got ", p);
  TORCH_CHECK_VALUE(x_in.numel() > 0, "two_sided_quantile: x is empty");
  c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty({}, x.options().dtype(at::kFloat));
  ERBNN_CUDA_DISPATCH_FLOATS(x.scalar_type(), "two_sided_quantile_cuda", [&] {
    quantile_of_values(PlainValues<scalar_t>{x.const_data_ptr<scalar_t>()}, x.numel(), x, nullptr, p,
                       out.mutable_data_ptr<float>());
  });
  return out;
}

}  // namespace
}  // namespace cuda

ERBNN_CUDA_OPS(m) { m.impl("two_sided_quantile", &cuda::two_sided_quantile_cuda); }

}  // namespace erbnn
