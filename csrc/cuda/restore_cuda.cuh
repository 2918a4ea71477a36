// Entry points of the CUDA restoration ops, for the training ops (restore_train.cu).
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace erbnn {
namespace cuda {

std::tuple<at::Tensor, at::Tensor, at::Tensor> restore_weight_cuda(const at::Tensor& w);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> restore_activation_cuda(const at::Tensor& x);

}  // namespace cuda
}  // namespace erbnn
