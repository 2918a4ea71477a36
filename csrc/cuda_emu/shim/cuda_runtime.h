// Emulation build: <cuda_runtime.h> is the emulated device (csrc/cuda_emu) plus the host API the
// sources use. A fake device: properties from ERBNN_EMU_SM_COUNT (default 2) and ERBNN_EMU_CC
// (default 9.0, so the sm_80+ paths run).
#pragma once

#include "cuda_emu/device.h"

using cudaStream_t = struct CUstream_st*;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1 };

struct cudaDeviceProp {
  char name[256];
  int major, minor, multiProcessorCount, warpSize, maxThreadsPerBlock;
  size_t sharedMemPerBlock;
};

namespace cuda_emu {
cudaDeviceProp* device_properties();
}

inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "invalid value"; }
