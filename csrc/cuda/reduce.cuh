// Block-wide sums for the CUDA reduction kernels: warp shuffles, then one shared-memory step.
#pragma once

#include <cuda_runtime.h>

namespace erbnn {
namespace cuda {

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

// Sum of v over the block, returned to every thread. smem: 32 slots of shared memory. Every thread of
// the block must call it (it synchronises); calls may follow one another with the same smem.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* smem) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();  // smem may still be read by the previous call
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T r = lane < warps ? smem[lane] : T(0);
    r = warp_sum(r);
    if (lane == 0) smem[0] = r;
  }
  __syncthreads();
  return smem[0];
}

}  // namespace cuda
}  // namespace erbnn
