// The CUDA-on-CPU runtime: a block scheduler that runs every CUDA thread of a block as a fiber and
// completes block barriers and warp collectives with CUDA's semantics. Used only by the emulation build
// (ERBNN_CUDA_EMU, library erbnn_ext._C_emu); kernels reach it through device.h and ERBNN_LAUNCH.
//
// Model: the blocks of a grid run one after another on the calling OS thread; the threads of a block are
// fibers (ucontext, one stack each) that run until they reach a synchronisation point and then yield:
//   - a warp collective (shuffle, vote, match, __syncwarp, b1 mma) completes when every lane named in its
//     mask waits at the same collective (same op, mask and shuffle mode); warp = 32 consecutive linear
//     thread ids, as on NVIDIA GPUs. Results follow the PTX ISA (shfl.sync, vote.sync, match.sync, mma).
//   - a block barrier (__syncthreads and its _or/_and/_count forms) completes when every thread that has
//     not exited waits at it.
// The schedule (schedule.h) picks the order in which ready fibers run between synchronisation points,
// so that a kernel that races (a missing barrier) gives different results under different schedules.
// Whatever would hang or be undefined on a GPU is a Fault (a C++ exception; a RuntimeError in Python):
// a barrier reached by only part of the block, a mask naming an exited lane, a lane reading from a lane
// outside the mask, lanes of one mask waiting at different collectives, any other deadlock.
#pragma once

#include <ucontext.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// cuda_runtime's vector types (global, as in CUDA).
struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

namespace cuda_emu {

// A kernel that would hang or read undefined values on a GPU, or an invalid launch.
struct Fault : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace detail {

enum class Wait : uint8_t { Ready, Barrier, Warp, Done };
enum class Op : uint8_t { Shfl, Vote, Match, SyncWarp, Mma };
enum class BarrierKind : uint8_t { Plain, Or, And, Count };
enum ShflMode : int { kIdx = 0, kUp = 1, kDown = 2, kBfly = 3 };

// A lane's operands of mma.m16n8k256 .b1 (its fragment registers, on its fiber's stack while it waits).
struct MmaOperands {
  const uint32_t* a;  // a0..a3
  uint32_t b0, b1;
  int32_t* c;         // c0..c3, updated in place
  bool use_xor;       // .xor.popc (else .and.popc)
};

struct Thread {
  uint3 tid{};
  unsigned linear = 0, lane = 0, warp = 0;
  ucontext_t ctx{};
  Wait wait = Wait::Ready;
  // at a block barrier
  BarrierKind bar_kind = BarrierKind::Plain;
  int bar_pred = 0, bar_result = 0;
  // at a warp collective: PTX operands (shfl: b = lane / delta / lane mask, c = clamp and segment mask)
  Op op = Op::Shfl;
  int mode = 0;
  unsigned mask = 0;
  uint64_t val = 0;
  int b = 0;
  unsigned c = 0;
  MmaOperands mma{};
  uint64_t result = 0;
};

struct Block {
  uint3 bid{};
  dim3 bdim, gdim;
  const char* site = "";
  std::vector<Thread> threads;
  const std::function<void()>* body = nullptr;
  ucontext_t scheduler{};
  std::string error;  // set by a faulting fiber
};

// The fiber running now and its block (valid inside kernels only).
extern thread_local Thread* cur;
extern thread_local Block* blk;

// Device-side entry points of device.h (they yield to the block scheduler).
uint64_t warp_collective(Op op, unsigned mask, uint64_t val, int b = 0, unsigned c = 0, int mode = 0);
void warp_mma(const MmaOperands& operands);
int block_barrier(BarrierKind kind, int pred);
[[noreturn]] void fault(const std::string& what);
unsigned active_lanes();

void run_grid(const char* site, dim3 grid, dim3 block, size_t dynamic_smem, const std::function<void()>& body);

}  // namespace detail

// One kernel launch, `kernel<<<grid, block, smem, stream>>>(args...)` in CUDA; written
// ERBNN_LAUNCH(grid, block, smem, stream, kernel)(args...) in the sources (csrc/cuda/cuda_utils.cuh).
// The arguments are converted to the kernel's parameter types at the call, as CUDA does; the stream is
// ignored (launches run to completion, in order).
class Launch {
 public:
  template <class Stream>
  Launch(const char* site, dim3 grid, dim3 block, size_t smem, const Stream&)
      : site_(site), grid_(grid), block_(block), smem_(smem) {}

  template <class... P>
  auto operator()(void (*kernel)(P...)) const {
    return [cfg = *this, kernel](auto&&... args) {
      static_assert(sizeof...(args) == sizeof...(P), "kernel launched with the wrong number of arguments");
      const std::tuple<std::decay_t<P>...> params(std::forward<decltype(args)>(args)...);
      detail::run_grid(cfg.site_, cfg.grid_, cfg.block_, cfg.smem_, [&] { std::apply(kernel, params); });
    };
  }

 private:
  const char* site_;
  dim3 grid_, block_;
  size_t smem_;
};

// The launch sites run so far ("file.cu:line" -> launches), for the tests' coverage count.
std::vector<std::pair<std::string, int64_t>> launch_counts();
void reset_launch_counts();

}  // namespace cuda_emu
