// The emulator's own ops, torch.ops.erbnn_emu._emu_*: the schedule, the launch-site counts, and probe
// kernels that check each intrinsic and each reported fault against the PTX ISA from Python
// (tests/test_cuda_emu_runtime.py).
#include <ATen/ATen.h>
#include <ATen/core/Dict.h>
#include <torch/library.h>

#include <string>

#include <cuda_runtime.h>

#include "cuda_emu/schedule.h"

namespace cuda_emu {
namespace {

// ---- probe kernels: one block of `val.numel()` threads; lanes outside `mask` skip the collective
__global__ void shfl_probe(const int64_t* val, const int32_t* arg, int mode, int width, unsigned mask, bool wide,
                           int64_t* out) {
  const unsigned i = threadIdx.x, lane = i % 32;
  int64_t r = val[i];
  if ((mask >> lane) & 1u) {
    if (wide) {
      const long long v = val[i];
      r = mode == 0 ? __shfl_sync(mask, v, arg[i], width) : mode == 1 ? __shfl_up_sync(mask, v, unsigned(arg[i]), width)
          : mode == 2 ? __shfl_down_sync(mask, v, unsigned(arg[i]), width) : __shfl_xor_sync(mask, v, arg[i], width);
    } else {
      const int v = int(val[i]);
      r = mode == 0 ? __shfl_sync(mask, v, arg[i], width) : mode == 1 ? __shfl_up_sync(mask, v, unsigned(arg[i]), width)
          : mode == 2 ? __shfl_down_sync(mask, v, unsigned(arg[i]), width) : __shfl_xor_sync(mask, v, arg[i], width);
    }
  }
  out[i] = r;
}

__global__ void vote_probe(const int64_t* pred, int kind, unsigned mask, int64_t* out) {
  const unsigned i = threadIdx.x;
  int64_t r = -1;
  if ((mask >> (i % 32)) & 1u) {
    const int p = int(pred[i]);
    r = kind == 0 ? int64_t(__ballot_sync(mask, p)) : kind == 1 ? __any_sync(mask, p) : kind == 2 ? __all_sync(mask, p)
        : int64_t(__match_any_sync(mask, (long long)pred[i]));
  }
  out[i] = r;
}

__global__ void barrier_probe(const int64_t* pred, int kind, int64_t* out) {
  const int p = int(pred[threadIdx.x]);
  out[threadIdx.x] = kind == 0 ? __syncthreads_or(p) : kind == 1 ? __syncthreads_and(p) : __syncthreads_count(p);
}

// Lane l's fragment registers are rows l of a [32, 4], b [32, 2], c [32, 4]; out: its d registers.
__global__ void mma_probe(const int32_t* a, const int32_t* b, const int32_t* c, bool use_xor, int32_t* out) {
  const unsigned l = threadIdx.x;
  const uint32_t ar[4] = {uint32_t(a[4 * l]), uint32_t(a[4 * l + 1]), uint32_t(a[4 * l + 2]), uint32_t(a[4 * l + 3])};
  int32_t d[4] = {c[4 * l], c[4 * l + 1], c[4 * l + 2], c[4 * l + 3]};
  mma_m16n8k256_b1(d, ar, uint32_t(b[2 * l]), uint32_t(b[2 * l + 1]), use_xor);
  for (int k = 0; k < 4; ++k) out[4 * l + k] = d[k];
}

// Kernels a GPU would hang on or compute garbage with: each must be reported.
__global__ void fault_probe(int which, int* sink) {
  const unsigned lane = threadIdx.x % 32;
  switch (which) {
    case 0:  // __syncthreads in divergent code: half the block exits
      if (threadIdx.x < blockDim.x / 2) return;
      __syncthreads();
      break;
    case 1:  // a shuffle whose mask names lanes that exited
      if (lane >= 16) return;
      sink[threadIdx.x] = __shfl_sync(0xffffffffu, int(lane), 0);
      break;
    case 2:  // half a warp at a full-warp shuffle, the other half at __syncthreads
      if (lane < 16) sink[threadIdx.x] = __shfl_xor_sync(0xffffffffu, int(lane), 1);
      __syncthreads();
      break;
    case 3:  // different barrier variants
      if (threadIdx.x == 0) sink[0] = __syncthreads_or(1);
      else __syncthreads();
      break;
    case 4:  // a lane calling a collective with a mask that leaves it out
      sink[threadIdx.x] = __shfl_sync(0xfffffffeu, int(lane), 1);
      break;
    case 5:  // reading a lane outside the mask
      sink[threadIdx.x] = __shfl_sync(0x0000ffffu | (lane < 16 ? 0u : 0xffff0000u), int(lane), 31);
      break;
    case 6:  // lanes of one mask at different collectives
      sink[threadIdx.x] = lane == 0 ? int(__ballot_sync(0xffffffffu, 1)) : __shfl_sync(0xffffffffu, int(lane), 0);
      break;
    case 7:
      __trap();
    case 8:  // a mask naming lanes this (partial) block does not have
      sink[threadIdx.x] = __shfl_sync(0xffffffffu, int(lane), 0);
      break;
  }
}

// Two warps hand a value through shared memory; with `barrier` false the read races the write.
__global__ void race_probe(bool barrier, int64_t* out) {
  __shared__ int64_t slot[2];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) slot[warp] = -1;
  __syncthreads();
  if (lane == 0) slot[warp] = 100 + warp;
  if (barrier) __syncthreads();
  out[threadIdx.x] = slot[1 - warp];
  __syncthreads();
}

at::Tensor check_1d(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cpu() && t.dim() == 1 && t.numel() >= 1 && t.numel() <= 1024, name,
              " must be a 1-D CPU tensor of 1 to 1024 elements (one per thread)");
  return t.to(at::kLong).contiguous();
}

unsigned mask_arg(int64_t mask) {
  TORCH_CHECK(mask >= 0 && mask <= 0xffffffffLL, "mask must be in [0, 2^32), got ", mask);
  return unsigned(mask);
}

at::Tensor probe_shfl(const at::Tensor& val_in, const at::Tensor& arg_in, int64_t mode, int64_t width, int64_t mask,
                      bool wide) {
  const at::Tensor val = check_1d(val_in, "val"), arg = check_1d(arg_in, "arg").to(at::kInt);
  TORCH_CHECK(mode >= 0 && mode <= 3, "mode must be 0 (idx), 1 (up), 2 (down) or 3 (bfly)");
  at::Tensor out = at::empty_like(val);
  Launch(__FILE__ ":shfl", 1, dim3(unsigned(val.numel())), 0, 0)(shfl_probe)(val.const_data_ptr<int64_t>(), arg.const_data_ptr<int32_t>(),
                                                             int(mode), int(width), mask_arg(mask), wide,
                                                             out.mutable_data_ptr<int64_t>());
  return out;
}

at::Tensor probe_vote(const at::Tensor& pred_in, int64_t kind, int64_t mask) {
  const at::Tensor pred = check_1d(pred_in, "pred");
  at::Tensor out = at::empty_like(pred);
  Launch(__FILE__ ":vote", 1, dim3(unsigned(pred.numel())), 0, 0)(vote_probe)(
      pred.const_data_ptr<int64_t>(), int(kind), mask_arg(mask), out.mutable_data_ptr<int64_t>());
  return out;
}

at::Tensor probe_barrier(const at::Tensor& pred_in, int64_t kind) {
  const at::Tensor pred = check_1d(pred_in, "pred");
  at::Tensor out = at::empty_like(pred);
  Launch(__FILE__ ":barrier", 1, dim3(unsigned(pred.numel())), 0, 0)(barrier_probe)(
      pred.const_data_ptr<int64_t>(), int(kind), out.mutable_data_ptr<int64_t>());
  return out;
}

at::Tensor probe_mma(const at::Tensor& a_in, const at::Tensor& b_in, const at::Tensor& c_in, bool use_xor) {
  TORCH_CHECK(a_in.sizes() == at::IntArrayRef({32, 4}) && b_in.sizes() == at::IntArrayRef({32, 2}) &&
                  c_in.sizes() == at::IntArrayRef({32, 4}),
              "a, b, c must be the lanes' fragments [32, 4], [32, 2], [32, 4]");
  const at::Tensor a = a_in.to(at::kInt).contiguous(), b = b_in.to(at::kInt).contiguous(), c = c_in.to(at::kInt).contiguous();
  at::Tensor out = at::empty_like(c);
  Launch(__FILE__ ":mma", 1, 32, 0, 0)(mma_probe)(a.const_data_ptr<int32_t>(), b.const_data_ptr<int32_t>(),
                                                   c.const_data_ptr<int32_t>(), use_xor, out.mutable_data_ptr<int32_t>());
  return out;
}

void probe_fault(int64_t which, int64_t threads) {
  // Up to 2048 threads: launches above the device's 1024 must be refused by the launcher itself.
  TORCH_CHECK(threads >= 1 && threads <= 2048, "threads must be in [1, 2048]");
  std::vector<int> sink(size_t(threads), 0);
  Launch(__FILE__ ":fault", 1, dim3(unsigned(threads)), 0, 0)(fault_probe)(int(which), sink.data());
}

at::Tensor probe_race(bool barrier) {
  at::Tensor out = at::empty({64}, at::kLong);
  Launch(__FILE__ ":race", 1, 64, 0, 0)(race_probe)(barrier, out.mutable_data_ptr<int64_t>());
  return out;
}

c10::Dict<std::string, int64_t> launch_count_dict() {
  c10::Dict<std::string, int64_t> d;
  for (const auto& [site, n] : launch_counts()) d.insert(site, n);
  return d;
}

}  // namespace
}  // namespace cuda_emu

TORCH_LIBRARY_FRAGMENT(erbnn_emu, m) {
  using namespace cuda_emu;
  // The fiber schedule (schedule.h); returns the previous one. "" keeps it (a query).
  m.def("_emu_set_schedule", [](std::string spec) {
    if (spec.empty()) return schedule_name(current_schedule());
    try {
      return set_schedule(spec);
    } catch (const std::invalid_argument& e) {
      TORCH_CHECK_VALUE(false, e.what());
    }
  });
  // The fake device: multiprocessors (the kernels size their grids by it) and compute capability (sm_80+
  // selects the tensor-core conv). Returns the previous [sm_count, major, minor].
  m.def("_emu_set_device(int sm_count, int major, int minor) -> int[]", [](int64_t sm, int64_t major, int64_t minor) {
    TORCH_CHECK_VALUE(sm >= 1 && major >= 1 && minor >= 0, "sm_count and major must be >= 1, minor >= 0");
    cudaDeviceProp* p = device_properties();
    std::vector<int64_t> old{p->multiProcessorCount, p->major, p->minor};
    p->multiProcessorCount = int(sm), p->major = int(major), p->minor = int(minor);
    return old;
  });
  m.def("_emu_launch_counts", [] { return launch_count_dict(); });
  m.def("_emu_reset_launch_counts", [] { reset_launch_counts(); });
  m.def("_emu_probe_shfl(Tensor val, Tensor arg, int mode, int width, int mask, bool wide) -> Tensor", &probe_shfl);
  m.def("_emu_probe_vote(Tensor pred, int kind, int mask) -> Tensor", &probe_vote);
  m.def("_emu_probe_barrier(Tensor pred, int kind) -> Tensor", &probe_barrier);
  m.def("_emu_probe_mma(Tensor a, Tensor b, Tensor c, bool use_xor) -> Tensor", &probe_mma);
  m.def("_emu_probe_fault(int which, int threads) -> ()", &probe_fault);
  m.def("_emu_probe_race(bool barrier) -> Tensor", &probe_race);
}
