// Emulation build: the current device and stream of the emulated device (one device, one stream that
// runs each launch to completion).
#pragma once

#include <cuda_runtime.h>

namespace at {
namespace cuda {

struct CUDAStream {
  operator cudaStream_t() const { return nullptr; }
  cudaStream_t stream() const { return nullptr; }
};

inline cudaDeviceProp* getCurrentDeviceProperties() { return ::cuda_emu::device_properties(); }
inline CUDAStream getCurrentCUDAStream(int = -1) { return {}; }

}  // namespace cuda
}  // namespace at
