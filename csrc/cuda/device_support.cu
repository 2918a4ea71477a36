// Whether this build's CUDA code can run on a device: the CUDA runtime loads a kernel image for the
// device (SASS for its architecture, or PTX it can JIT) or says there is none. Asked once per device by
// erbnn_ext._native.cuda_supported, so that ops fall back instead of failing at every launch on a GPU
// older than the compiled architectures.
#include <cuda_runtime.h>
#include <torch/library.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/util/Exception.h>

namespace erbnn {
namespace cuda {
namespace {

// Never launched: compiled with the same -gencode list as every kernel of the library.
__global__ void probe_kernel() {}

// binaryVersion (10 * major + minor of the image the runtime picked) or -1 when none fits the device.
int64_t kernel_image_version(int64_t device) {
  int count = 0;
  C10_CUDA_CHECK(cudaGetDeviceCount(&count));
  TORCH_CHECK(device >= 0 && device < count, "device must be a CUDA device index in [0, ", count, "), got ",
              device);
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  cudaFuncAttributes attr{};
  const cudaError_t err = cudaFuncGetAttributes(&attr, probe_kernel);
  if (err == cudaErrorNoKernelImageForDevice || err == cudaErrorInvalidDeviceFunction ||
      err == cudaErrorUnsupportedPtxVersion) {
    (void)cudaGetLastError();  // not sticky: clear it so that the next runtime call does not report it
    return -1;
  }
  C10_CUDA_CHECK(err);
  return attr.binaryVersion;
}

}  // namespace
}  // namespace cuda
}  // namespace erbnn

TORCH_LIBRARY_FRAGMENT(erbnn, m) {
  m.def("_cuda_kernel_image_version", &erbnn::cuda::kernel_image_version);
}
