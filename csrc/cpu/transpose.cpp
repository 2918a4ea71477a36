// _batch_transpose, CPU: x [B, R, S] -> x.transpose(1, 2).contiguous() [B, S, R]. It moves an ER layer's
// activations between NCHW and NHWC (channels_last) inside its training step, where oneDNN's conv
// backward runs without its own layout reorders; ATen's strided copy does the same transpose at about a
// fifth of copy bandwidth on small C, this one at copy bandwidth (16x16 register tiles for 4- and 2-byte
// types).
#include <torch/library.h>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "transpose.h"

namespace erbnn {
namespace {

at::Tensor batch_transpose_cpu(const at::Tensor& x_in) {
  TORCH_CHECK(x_in.device().is_cpu(), "x must be a CPU tensor, got one on ", x_in.device());
  TORCH_CHECK_VALUE(x_in.dim() == 3, "x must be 3-D [B, R, S], got ", x_in.dim(), "-D");
  const at::Tensor x = x_in.contiguous();
  const int64_t B = x.size(0), R = x.size(1), S = x.size(2);
  at::Tensor y = at::empty({B, S, R}, x.options());
  if (x.numel() == 0) return y;
  constexpr int64_t K = kTransposeTile;
  const int64_t blocks = (R + K - 1) / K, tasks = B * blocks;
  // A task is 16 rows of one matrix (16 * S elements); about 64 KiB of work per grain.
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(K * S, 1));
  AT_DISPATCH_ALL_TYPES_AND3(at::kHalf, at::kBFloat16, at::kBool, x.scalar_type(), "_batch_transpose", [&] {
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    scalar_t* dst = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, tasks, grain, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / blocks, r0 = (t % blocks) * K, rows = std::min(K, R - r0);
        transpose_block(src + b * R * S + r0 * S, S, dst + b * R * S + r0, R, rows, S);
      }
    });
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(erbnn, CPU, m) { m.impl("_batch_transpose", &batch_transpose_cpu); }

}  // namespace erbnn
