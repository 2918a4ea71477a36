// The block scheduler of the emulated device (see runtime.h): fibers, collectives, faults, schedules.
#include "cuda_emu/runtime.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <random>

#include <cuda_runtime.h>

#include "cuda_emu/schedule.h"

namespace cuda_emu {

// ------------------------------------------------------------------------------------- schedules
Schedule parse_schedule(const std::string& spec) {
  Schedule s;
  if (spec == "inorder" || spec.empty()) return s;
  if (spec == "reverse") {
    s.order = Schedule::Order::Reverse;
  } else if (spec == "ahead") {
    s.warps_ahead = true;
  } else if (spec == "ahead-reverse") {
    s.warps_ahead = true;
    s.order = Schedule::Order::Reverse;
  } else if (spec.rfind("random:", 0) == 0 && spec.size() > 7 &&
             spec.find_first_not_of("0123456789", 7) == std::string::npos) {
    s.order = Schedule::Order::Random;
    s.seed = std::stoull(spec.substr(7));
  } else {
    throw std::invalid_argument("unknown emulator schedule '" + spec +
                                "': expected inorder, reverse, ahead, ahead-reverse or random:SEED");
  }
  return s;
}

std::string schedule_name(const Schedule& s) {
  if (s.order == Schedule::Order::Random) return "random:" + std::to_string(s.seed);
  const bool rev = s.order == Schedule::Order::Reverse;
  return s.warps_ahead ? (rev ? "ahead-reverse" : "ahead") : (rev ? "reverse" : "inorder");
}

namespace {
std::mutex g_mutex;  // the schedule, the launch counts
Schedule& schedule_ref() {
  static Schedule s = [] {
    const char* env = std::getenv("ERBNN_EMU_SCHEDULE");
    return parse_schedule(env ? env : "");
  }();
  return s;
}
std::map<std::string, int64_t>& counts_ref() {
  static std::map<std::string, int64_t> m;
  return m;
}
uint64_t g_launches = 0;  // seeds the random schedule per launch (reproducible for a given call sequence)
}  // namespace

Schedule current_schedule() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return schedule_ref();
}

std::string set_schedule(const std::string& spec) {
  const Schedule s = parse_schedule(spec);
  std::lock_guard<std::mutex> lock(g_mutex);
  const std::string old = schedule_name(schedule_ref());
  schedule_ref() = s;
  g_launches = 0;
  return old;
}

std::vector<std::pair<std::string, int64_t>> launch_counts() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return {counts_ref().begin(), counts_ref().end()};
}

void reset_launch_counts() {
  std::lock_guard<std::mutex> lock(g_mutex);
  counts_ref().clear();
}

cudaDeviceProp* device_properties() {
  static cudaDeviceProp p = [] {
    cudaDeviceProp d{};
    std::snprintf(d.name, sizeof d.name, "erbnn cuda_emu (CPU)");
    const char* sm = std::getenv("ERBNN_EMU_SM_COUNT");
    d.multiProcessorCount = sm ? std::max(1, std::atoi(sm)) : 2;
    const char* cc = std::getenv("ERBNN_EMU_CC");
    d.major = 9, d.minor = 0;
    if (cc) std::sscanf(cc, "%d.%d", &d.major, &d.minor);
    d.warpSize = 32;
    d.maxThreadsPerBlock = 1024;
    d.sharedMemPerBlock = 48 * 1024;
    return d;
  }();
  return &p;
}

namespace detail {

thread_local Thread* cur = nullptr;
thread_local Block* blk = nullptr;

namespace {

// ------------------------------------------------------------------------------------- fibers
// Stacks are mapped once per OS thread and reused; the lowest page of each is a guard page, so an
// overflow faults instead of corrupting the neighbour.
struct StackPool {
  static constexpr size_t kSize = 256 * 1024;
  std::vector<char*> stacks;
  char* get(size_t i) {
    while (stacks.size() <= i) {
      void* p = mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK,
                     -1, 0);
      if (p == MAP_FAILED) throw Fault("cuda_emu: cannot map a fiber stack");
      mprotect(p, size_t(sysconf(_SC_PAGESIZE)), PROT_NONE);
      stacks.push_back(static_cast<char*>(p));
    }
    return stacks[i];
  }
  ~StackPool() {
    for (char* p : stacks) munmap(p, kSize);
  }
};
thread_local StackPool stack_pool;

std::string coords(uint3 v) {
  return "(" + std::to_string(v.x) + "," + std::to_string(v.y) + "," + std::to_string(v.z) + ")";
}

void yield() { swapcontext(&cur->ctx, &blk->scheduler); }

void fiber_entry() {
  Block& b = *blk;
  try {
    (*b.body)();
  } catch (const std::exception& e) {  // thrown on this fiber's stack: it cannot unwind into the scheduler
    if (b.error.empty()) b.error = "thread " + coords(cur->tid) + " threw: " + e.what();
  }
  cur->wait = Wait::Done;  // returning resumes the scheduler (uc_link)
}

const char* op_name(Op op, int mode) {
  switch (op) {
    case Op::Shfl:
      return mode == kIdx ? "__shfl_sync" : mode == kUp ? "__shfl_up_sync" : mode == kDown ? "__shfl_down_sync" : "__shfl_xor_sync";
    case Op::Vote: return "__ballot_sync/__any_sync/__all_sync";
    case Op::Match: return "__match_any_sync";
    case Op::SyncWarp: return "__syncwarp";
    case Op::Mma: return "mma.m16n8k256.b1";
  }
  return "?";
}

std::string state(const Thread& t) {
  switch (t.wait) {
    case Wait::Done: return "exited";
    case Wait::Barrier: return "__syncthreads";
    case Wait::Ready: return "running";
    case Wait::Warp: {
      char m[16];
      std::snprintf(m, sizeof m, "%08x", t.mask);
      return std::string(op_name(t.op, t.mode)) + "(mask " + m + ")";
    }
  }
  return "?";
}

// One line per warp: runs of lanes in the same state.
std::string describe(const Block& b) {
  std::string s;
  const auto& th = b.threads;
  for (size_t base = 0; base < th.size(); base += 32) {
    s += "\n  warp " + std::to_string(base / 32) + ":";
    for (size_t l = 0; l < 32 && base + l < th.size(); ++l) {
      const std::string st = state(th[base + l]);
      if (l == 0 || st != state(th[base + l - 1])) s += " lanes " + std::to_string(l) + "+ " + st + ";";
    }
  }
  return s;
}

[[noreturn]] void block_fault(const Block& b, const std::string& what) {
  throw Fault("cuda_emu: kernel launched at " + std::string(b.site) + ", block " + coords(b.bid) + ": " + what);
}

// ------------------------------------------------------------------------------------- collectives
uint64_t shfl_result(const Block& b, unsigned base, unsigned k, const Thread& t) {
  // PTX ISA, shfl.sync: lane j's value, or the caller's own when j is outside its segment/clamp.
  const int lane = int(k), bval = t.b & 0x1f, cval = int(t.c & 0x1f), segmask = int((t.c >> 8) & 0x1f);
  const int max_lane = (lane & segmask) | (cval & ~segmask), min_lane = lane & segmask;
  int j = 0;
  bool pval = false;
  switch (t.mode) {
    case kIdx: j = min_lane | (bval & ~segmask); pval = j <= max_lane; break;
    case kUp: j = lane - bval; pval = j >= max_lane; break;
    case kDown: j = lane + bval; pval = j <= max_lane; break;
    default: j = lane ^ bval; pval = j <= max_lane; break;
  }
  if (!pval) j = lane;
  if (!((t.mask >> j) & 1u))
    block_fault(b, std::string(op_name(t.op, t.mode)) + ": lane " + std::to_string(k) + " of warp " +
                       std::to_string(base / 32) + " reads lane " + std::to_string(j) +
                       ", which is not in the mask (undefined on a GPU)" + describe(b));
  return b.threads[base + unsigned(j)].val;
}

// PTX ISA, mma.m16n8k256 .b1 fragments (g = lane / 4, t = lane % 4, 32-bit words along k):
// A (16 x 256, row): a0 row g, word t; a1 row g + 8, word t; a2 row g, word t + 4; a3 row g + 8, word t + 4.
// B (256 x 8, col): b0 column g, word t; b1 column g, word t + 4.
// C, D (16 x 8): c0, c1 row g, columns 2t, 2t + 1; c2, c3 row g + 8, columns 2t, 2t + 1.
void complete_mma(Block& b, unsigned base) {
  uint32_t A[16][8], B[8][8];
  for (unsigned k = 0; k < 32; ++k) {
    const MmaOperands& m = b.threads[base + k].mma;
    const unsigned g = k / 4, t = k % 4;
    A[g][t] = m.a[0], A[g + 8][t] = m.a[1], A[g][t + 4] = m.a[2], A[g + 8][t + 4] = m.a[3];
    B[g][t] = m.b0, B[g][t + 4] = m.b1;
  }
  const bool use_xor = b.threads[base].mma.use_xor;
  auto dot = [&](unsigned row, unsigned col) {
    int32_t s = 0;
    for (int w = 0; w < 8; ++w) s += std::popcount(use_xor ? (A[row][w] ^ B[col][w]) : (A[row][w] & B[col][w]));
    return s;
  };
  for (unsigned k = 0; k < 32; ++k) {
    int32_t* c = b.threads[base + k].mma.c;
    const unsigned g = k / 4, t = k % 4;
    c[0] += dot(g, 2 * t), c[1] += dot(g, 2 * t + 1), c[2] += dot(g + 8, 2 * t), c[3] += dot(g + 8, 2 * t + 1);
  }
}

// Completes every collective of warp `base / 32` whose lanes have all arrived; faults on a mask that
// names an exited or absent lane. Returns whether any completed.
bool complete_warp(Block& b, unsigned base) {
  auto& th = b.threads;
  const unsigned n = unsigned(th.size());
  bool any = false;
  for (unsigned l = 0; l < 32 && base + l < n; ++l) {
    const Thread& t = th[base + l];
    if (t.wait != Wait::Warp) continue;
    const unsigned mask = t.mask;
    bool ready = true;
    for (unsigned k = 0; k < 32 && ready; ++k) {
      if (!((mask >> k) & 1u)) continue;
      if (base + k >= n)
        block_fault(b, std::string(op_name(t.op, t.mode)) + ": the mask names lane " + std::to_string(k) + " of warp " +
                           std::to_string(base / 32) + ", which this block does not have");
      const Thread& o = th[base + k];
      if (o.wait == Wait::Done)
        block_fault(b, std::string(op_name(t.op, t.mode)) + ": lane " + std::to_string(k) + " of warp " +
                           std::to_string(base / 32) + " is in the mask but has exited" + describe(b));
      ready = o.wait == Wait::Warp && o.op == t.op && o.mask == mask && (t.op != Op::Shfl || o.mode == t.mode);
    }
    if (!ready) continue;
    const Op op = t.op;
    uint64_t res[32] = {};
    if (op == Op::Mma) {
      if (mask != 0xffffffffu) block_fault(b, "mma.sync.aligned needs all 32 lanes of the warp (mask ffffffff)");
      complete_mma(b, base);
    }
    for (unsigned k = 0; k < 32; ++k) {
      if (!((mask >> k) & 1u)) continue;
      const Thread& o = th[base + k];
      if (op == Op::Shfl) {
        res[k] = shfl_result(b, base, k, o);
      } else if (op == Op::Vote || op == Op::Match) {
        uint64_t r = 0;
        for (unsigned q = 0; q < 32; ++q)
          if (((mask >> q) & 1u) && (op == Op::Vote ? th[base + q].val != 0 : th[base + q].val == o.val)) r |= 1ull << q;
        res[k] = r;
      }
    }
    for (unsigned k = 0; k < 32; ++k)
      if ((mask >> k) & 1u) {
        th[base + k].result = res[k];
        th[base + k].wait = Wait::Ready;
      }
    any = true;
  }
  return any;
}

bool complete_warps(Block& b) {
  bool any = false;
  for (unsigned base = 0; base < b.threads.size(); base += 32) any |= complete_warp(b, base);
  return any;
}

// Completes the block barrier when every thread that has not exited waits at it.
bool complete_barrier(Block& b) {
  auto& th = b.threads;
  const Thread* first = nullptr;
  int acc_or = 0, acc_and = 1, count = 0;
  for (const Thread& t : th) {
    if (t.wait == Wait::Done) continue;
    if (t.wait != Wait::Barrier) return false;
    if (!first) first = &t;
    if (t.bar_kind != first->bar_kind)
      block_fault(b, "threads of the block wait at different __syncthreads variants" + describe(b));
    acc_or |= t.bar_pred != 0, acc_and &= t.bar_pred != 0, count += t.bar_pred != 0;
  }
  if (!first) return false;
  for (const Thread& t : th)
    if (t.wait == Wait::Done)
      block_fault(b, "__syncthreads reached by only part of the block: thread " + coords(t.tid) +
                         " exited while the others wait at it (a barrier in divergent code)" + describe(b));
  const BarrierKind kind = first->bar_kind;
  const int r = kind == BarrierKind::Or ? acc_or : kind == BarrierKind::And ? acc_and : kind == BarrierKind::Count ? count : 0;
  for (Thread& t : th)
    if (t.wait == Wait::Barrier) t.bar_result = r, t.wait = Wait::Ready;
  return true;
}

// ------------------------------------------------------------------------------------- block scheduler
void resume(Block& b, Thread& t) {
  cur = &t;
  swapcontext(&b.scheduler, &t.ctx);
  cur = nullptr;
  if (!b.error.empty()) block_fault(b, b.error);
}

void run_block(Block& b, const Schedule& s, std::mt19937_64& rng) {
  auto& th = b.threads;
  const unsigned n = unsigned(th.size());
  for (unsigned i = 0; i < n; ++i) {
    Thread& t = th[i];
    t = Thread{};
    t.linear = i;
    t.tid = uint3{i % b.bdim.x, (i / b.bdim.x) % b.bdim.y, i / (b.bdim.x * b.bdim.y)};
    t.lane = i % 32;
    t.warp = i / 32;
    getcontext(&t.ctx);
    t.ctx.uc_stack.ss_sp = stack_pool.get(i);
    t.ctx.uc_stack.ss_size = StackPool::kSize;
    t.ctx.uc_link = &b.scheduler;
    makecontext(&t.ctx, fiber_entry, 0);
  }
  const bool reverse = s.order == Schedule::Order::Reverse;
  std::vector<unsigned> ready;
  for (;;) {
    bool ran = false;
    if (s.warps_ahead) {
      const unsigned warps = (n + 31) / 32;
      for (unsigned wi = 0; wi < warps; ++wi) {
        const unsigned base = 32 * (reverse ? warps - 1 - wi : wi);
        for (bool progress = true; progress;) {
          progress = false;
          for (unsigned l = 0; l < 32 && base + l < n; ++l)
            if (th[base + l].wait == Wait::Ready) resume(b, th[base + l]), progress = ran = true;
          progress |= complete_warp(b, base);
        }
      }
    } else if (s.order == Schedule::Order::Random) {
      // One random ready thread at a time; collectives complete at random moments in between.
      for (;;) {
        ready.clear();
        for (unsigned i = 0; i < n; ++i)
          if (th[i].wait == Wait::Ready) ready.push_back(i);
        if (ready.empty()) break;
        resume(b, th[ready[rng() % ready.size()]]);
        ran = true;
        if (rng() % 4 == 0) complete_warps(b);
      }
    } else {
      for (unsigned k = 0; k < n; ++k) {
        Thread& t = th[reverse ? n - 1 - k : k];
        if (t.wait == Wait::Ready) resume(b, t), ran = true;
      }
    }
    bool all_done = true;
    for (const Thread& t : th) all_done &= t.wait == Wait::Done;
    if (all_done) return;
    if (complete_warps(b) || complete_barrier(b) || ran) continue;
    // Nothing can move: report why, lane by lane.
    std::string why;
    for (const Thread& t : th) {
      if (t.wait != Wait::Warp) continue;
      const unsigned base = t.warp * 32;
      for (unsigned k = 0; k < 32 && why.empty(); ++k) {
        if (!((t.mask >> k) & 1u)) continue;
        const Thread& o = th[base + k];
        if (o.wait != Wait::Warp || o.op != t.op || o.mask != t.mask || o.mode != t.mode)
          why = "\n  lane " + std::to_string(t.lane) + " of warp " + std::to_string(t.warp) + " waits at " + state(t) +
                " but lane " + std::to_string(k) + " of its mask waits at " + state(o);
      }
      if (!why.empty()) break;
    }
    block_fault(b, "deadlock (a GPU would hang or compute garbage):" + why + describe(b));
  }
}

}  // namespace

// ------------------------------------------------------------------------------------- device entry points
uint64_t warp_collective(Op op, unsigned mask, uint64_t val, int bop, unsigned c, int mode) {
  Thread* t = cur;
  if (!((mask >> t->lane) & 1u)) {
    char m[16];
    std::snprintf(m, sizeof m, "%08x", mask);
    fault(std::string(op_name(op, mode)) + " called by lane " + std::to_string(t->lane) + ", which is not in its mask " + m);
  }
  t->op = op, t->mask = mask, t->val = val, t->b = bop, t->c = c, t->mode = mode;
  t->wait = Wait::Warp;
  yield();
  return t->result;
}

void warp_mma(const MmaOperands& operands) {
  Thread* t = cur;
  t->op = Op::Mma, t->mask = 0xffffffffu, t->mode = 0, t->mma = operands;
  t->wait = Wait::Warp;
  yield();
}

int block_barrier(BarrierKind kind, int pred) {
  Thread* t = cur;
  t->bar_kind = kind, t->bar_pred = pred;
  t->wait = Wait::Barrier;
  yield();
  return t->bar_result;
}

void fault(const std::string& what) {
  // On a fiber: record the fault and leave for good (the scheduler throws; the fiber is never resumed).
  if (blk->error.empty()) blk->error = "thread " + coords(cur->tid) + ": " + what;
  cur->wait = Wait::Done;
  swapcontext(&cur->ctx, &blk->scheduler);
  std::abort();
}

unsigned active_lanes() {
  unsigned m = 0;
  const unsigned base = cur->warp * 32;
  for (unsigned k = 0; k < 32 && base + k < blk->threads.size(); ++k)
    if (blk->threads[base + k].wait != Wait::Done) m |= 1u << k;
  return m;
}

void run_grid(const char* site, dim3 grid, dim3 block, size_t dynamic_smem, const std::function<void()>& body) {
  if (blk) throw Fault("cuda_emu: kernel launched from device code (no dynamic parallelism)");
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  const std::string at = std::string(" (launch at ") + site + ")";
  if (threads == 0 || threads > 1024 || block.z > 64)
    throw Fault("cuda_emu: invalid block size " + std::to_string(block.x) + "x" + std::to_string(block.y) + "x" +
                std::to_string(block.z) + at);
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535)
    throw Fault("cuda_emu: invalid grid size " + std::to_string(grid.x) + "x" + std::to_string(grid.y) + "x" +
                std::to_string(grid.z) + at);
  if (dynamic_smem > device_properties()->sharedMemPerBlock)
    throw Fault("cuda_emu: dynamic shared memory above 48 KiB needs an opt-in" + at);
  Schedule s;
  uint64_t launch = 0;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    s = schedule_ref();
    launch = g_launches++;
    const char* base = std::strrchr(site, '/');
    ++counts_ref()[base ? base + 1 : site];
  }
  std::mt19937_64 rng(s.seed * 0x9e3779b97f4a7c15ull + launch);
  Block b;
  b.site = site;
  b.bdim = block;
  b.gdim = grid;
  b.body = &body;
  b.threads.resize(threads);
  blk = &b;
  try {
    for (unsigned z = 0; z < grid.z; ++z)
      for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x) {
          b.bid = uint3{x, y, z};
          run_block(b, s, rng);
        }
  } catch (...) {
    blk = nullptr;
    throw;
  }
  blk = nullptr;
}

}  // namespace detail
}  // namespace cuda_emu
