// CUDA's device-side language on the emulated device: qualifiers, built-in variables, synchronisation,
// warp intrinsics, atomics and the integer / float intrinsics the kernels use. Included through the shim
// <cuda_runtime.h> in the emulation build only (ERBNN_CUDA_EMU).
#pragma once

#include <math.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cuda_emu/runtime.h"

// ---- qualifiers
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
// One copy per block: blocks run one at a time on one OS thread, whose threads are fibers. It keeps the
// previous block's contents (a GPU's is undefined at block start).
#define __shared__ static thread_local
#define __constant__ static

// ---- built-in variables
#define threadIdx (::cuda_emu::detail::cur->tid)
#define blockIdx (::cuda_emu::detail::blk->bid)
#define blockDim (::cuda_emu::detail::blk->bdim)
#define gridDim (::cuda_emu::detail::blk->gdim)
inline constexpr int warpSize = 32;

namespace cuda_emu {
namespace detail {

template <class T>
inline uint64_t to_bits(T v) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "warp intrinsics take 1- to 8-byte values");
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(T));
  return u;
}
template <class T>
inline T from_bits(uint64_t u) {
  T v;
  std::memcpy(&v, &u, sizeof(T));
  return v;
}
// shfl.sync's c operand as the CUDA headers build it: segment mask (32 - width) << 8, clamp 31 (0 for up).
inline unsigned shfl_c(int width, bool up) { return ((32u - unsigned(width)) << 8) | (up ? 0u : 0x1fu); }

}  // namespace detail

// mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.{and,xor}.popc: c += popc(A op B) over the warp's
// fragments (PTX ISA layout; see runtime.cpp). Inline PTX cannot run on the CPU: kernels call this
// under ERBNN_CUDA_EMU. Every lane of the warp must call it.
inline void mma_m16n8k256_b1(int32_t (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, bool use_xor) {
  detail::warp_mma(detail::MmaOperands{a, b0, b1, c, use_xor});
}

}  // namespace cuda_emu

// ---- synchronisation
inline void __syncthreads() { ::cuda_emu::detail::block_barrier(::cuda_emu::detail::BarrierKind::Plain, 0); }
inline int __syncthreads_or(int p) { return ::cuda_emu::detail::block_barrier(::cuda_emu::detail::BarrierKind::Or, p); }
inline int __syncthreads_and(int p) { return ::cuda_emu::detail::block_barrier(::cuda_emu::detail::BarrierKind::And, p); }
inline int __syncthreads_count(int p) {
  return ::cuda_emu::detail::block_barrier(::cuda_emu::detail::BarrierKind::Count, p);
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::cuda_emu::detail::warp_collective(::cuda_emu::detail::Op::SyncWarp, mask, 0);
}
// Fibers of one OS thread: program order is already sequentially consistent; the fences keep the compiler
// from moving memory accesses across them.
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
[[noreturn]] inline void __trap() { ::cuda_emu::detail::fault("__trap() called"); }

// ---- warp intrinsics (any 1- to 8-byte type, as CUDA's overloads; 64-bit = two 32-bit shuffles there)
template <class T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
  using namespace ::cuda_emu::detail;
  return from_bits<T>(warp_collective(Op::Shfl, mask, to_bits(var), src_lane, shfl_c(width, false), kIdx));
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  using namespace ::cuda_emu::detail;
  return from_bits<T>(warp_collective(Op::Shfl, mask, to_bits(var), int(delta), shfl_c(width, true), kUp));
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  using namespace ::cuda_emu::detail;
  return from_bits<T>(warp_collective(Op::Shfl, mask, to_bits(var), int(delta), shfl_c(width, false), kDown));
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
  using namespace ::cuda_emu::detail;
  return from_bits<T>(warp_collective(Op::Shfl, mask, to_bits(var), lane_mask, shfl_c(width, false), kBfly));
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  return unsigned(::cuda_emu::detail::warp_collective(::cuda_emu::detail::Op::Vote, mask, pred != 0));
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == mask; }
template <class T>
inline unsigned __match_any_sync(unsigned mask, T value) {
  using namespace ::cuda_emu::detail;
  return unsigned(warp_collective(Op::Match, mask, to_bits(value)));
}
// The lanes of the caller's warp that have not exited. On a GPU: the lanes converged with the caller,
// which fibers cannot know; the project's kernels do not use it.
inline unsigned __activemask() { return ::cuda_emu::detail::active_lanes(); }

// ---- integer and bit intrinsics
inline int __popc(unsigned x) { return std::popcount(x); }
inline int __popcll(unsigned long long x) { return std::popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __clz(int x) { return std::countl_zero(unsigned(x)); }
inline int __clzll(long long x) { return std::countl_zero((unsigned long long)x); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline double __longlong_as_double(long long x) { return std::bit_cast<double>(x); }
inline long long __double_as_longlong(double x) { return std::bit_cast<long long>(x); }

// ---- IEEE round-to-nearest arithmetic: plain C++ operations (the build uses -ffp-contract=off, so no
// multiply-add is fused unless written as fma)
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }

// ---- atomics (return the old value)
template <class T>
inline T atomicAdd(T* p, std::type_identity_t<T> v) {
  return std::atomic_ref<T>(*p).fetch_add(v);
}
template <class T>
inline T atomicSub(T* p, std::type_identity_t<T> v) {
  return std::atomic_ref<T>(*p).fetch_sub(v);
}
template <class T>
inline T atomicExch(T* p, std::type_identity_t<T> v) {
  return std::atomic_ref<T>(*p).exchange(v);
}
template <class T>
inline T atomicOr(T* p, std::type_identity_t<T> v) {
  return std::atomic_ref<T>(*p).fetch_or(v);
}
template <class T>
inline T atomicAnd(T* p, std::type_identity_t<T> v) {
  return std::atomic_ref<T>(*p).fetch_and(v);
}
template <class T>
inline T atomicXor(T* p, std::type_identity_t<T> v) {
  return std::atomic_ref<T>(*p).fetch_xor(v);
}
template <class T>
inline T atomicMin(T* p, std::type_identity_t<T> v) {
  std::atomic_ref<T> a(*p);
  T old = a.load();
  while (v < old && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}
template <class T>
inline T atomicMax(T* p, std::type_identity_t<T> v) {
  std::atomic_ref<T> a(*p);
  T old = a.load();
  while (old < v && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}
template <class T>
inline T atomicCAS(T* p, std::type_identity_t<T> cmp, std::type_identity_t<T> v) {
  std::atomic_ref<T>(*p).compare_exchange_strong(cmp, v);
  return cmp;
}

// ---- the math CUDA declares globally for device code (float overloads stay float)
using std::isfinite;
using std::isinf;
using std::isnan;
template <class A, class B, std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>, int> = 0>
inline auto min(A a, B b) {
  using C = std::common_type_t<A, B>;
  if constexpr (std::is_floating_point_v<C>) return std::fmin(C(a), C(b));
  else return C(a) < C(b) ? C(a) : C(b);
}
template <class A, class B, std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>, int> = 0>
inline auto max(A a, B b) {
  using C = std::common_type_t<A, B>;
  if constexpr (std::is_floating_point_v<C>) return std::fmax(C(a), C(b));
  else return C(a) < C(b) ? C(b) : C(a);
}
