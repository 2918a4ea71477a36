// Entry points of the CUDA restoration and quantile ops, for the training ops (restore_train.cu).
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace erbnn {
namespace cuda {

std::tuple<at::Tensor, at::Tensor, at::Tensor> restore_weight_cuda(const at::Tensor& w);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> restore_activation_cuda(const at::Tensor& x);
// two_sided_quantile of x (contiguous, non-empty, on the current device) into *out (device float32),
// on the current stream; p is *p_dev (device float64) when p_dev is given, else p_host.
void two_sided_quantile_into(const at::Tensor& x, const double* p_dev, double p_host, float* out);

}  // namespace cuda
}  // namespace erbnn
