// Whether the amx engine (int8_conv.h; its tile kernel: amx_tiles.h) may run the tile instructions. They
// are compiled with function-level targets only, and run only when amx_available(): CPUID and the OS
// grant (cpu_isa.h), then a self-test of the tile kernel in a child process, so a fault there (a refused
// LDTILECFG raises #GP) cannot take the user's process down.
#include "int8_conv.h"

#include <immintrin.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <string>

#include "amx_tiles.h"
#include "cpu_isa.h"

namespace erbnn {
namespace {

using amx::kTileConfig;
using amx::TileConfig;

std::atomic<bool>& emulation() {
  static std::atomic<bool> on{false};
  return on;
}

}  // namespace

bool amx_emulated() { return emulation().load(std::memory_order_relaxed); }
void set_amx_emulated(bool on) { emulation().store(on); }

std::array<uint8_t, 64> amx_tile_config() {
  std::array<uint8_t, 64> out{};
  std::memcpy(out.data(), &kTileConfig, 64);
  return out;
}

ERBNN_AMX std::array<uint8_t, 64> amx_tile_config_loaded() {
  TORCH_CHECK(amx_available(), "AMX is not usable here: ", amx_status());
  alignas(64) TileConfig back{};
  amx::RealTiles tiles;
  tiles.load_config(&kTileConfig);
  tiles.store_config(&back);
  tiles.release();
  std::array<uint8_t, 64> out{};
  std::memcpy(out.data(), &back, 64);
  return out;
}

namespace {

// One register block of the engine's kernel on the tiles (C) and on the emulation (R), over the same
// operands: true when every byte of the stored blocks is equal.
template <int MB, int NB>
ERBNN_AMX bool block_matches(const int8_t* A, int64_t a_next, const int8_t* B0, const int8_t* B1, int64_t Kt,
                             amx::EmulatedTiles& emu) {
  alignas(64) int32_t C[2][512], R[2][512];
  std::memset(C, 0x5A, sizeof C);
  std::memset(R, 0x5A, sizeof R);
  amx::RealTiles tiles;
  tiles.load_config(&kTileConfig);
  amx::tile_gemm_block<amx::RealTiles, MB, NB>(tiles, A, a_next, B0, B1, Kt, C[0], C[1]);
  tiles.release();
  amx::tile_gemm_block<amx::EmulatedTiles, MB, NB>(emu, A, a_next, B0, B1, Kt, R[0], R[1]);
  return std::memcmp(C, R, sizeof C) == 0;
}

// The self-test, run in a child process: the configuration LDTILECFG loaded must read back as given, and
// every register-block variant of the engine's tile kernel (2x2, 2x1, 1x2, 1x1 tiles) must equal the
// emulated tiles on the same operands (the whole int8 range, and the engine's +-1 / 0). Exit status 0 ok,
// 1 config, 2 block. Only stack memory and no library state: the child of a multi-threaded process may not
// take locks.
ERBNN_AMX int tile_self_test() {
  {
    amx::RealTiles tiles;
    tiles.load_config(&kTileConfig);
    alignas(64) TileConfig back{};
    tiles.store_config(&back);
    tiles.release();
    if (std::memcmp(&back, &kTileConfig, sizeof back) != 0) return 1;
  }
  constexpr int64_t Kt = 2, next = Kt * amx::kTileBytes;
  alignas(64) int8_t A[2 * next], B[2][next];
  for (int64_t i = 0; i < 2 * next; ++i) A[i] = int8_t((i * 37 + i / 61) & 0xFF);
  for (int64_t i = 0; i < next; ++i) {
    B[0][i] = int8_t((i * 53 + i / 29 + 7) & 0xFF);
    B[1][i] = int8_t(int((i * 5 + i / 11) % 3) - 1);
  }
  amx::EmulatedTiles emu;
  emu.load_config(&kTileConfig);
  const bool ok = block_matches<2, 2>(A, next, B[0], B[1], Kt, emu) &&
                  block_matches<2, 1>(A, next, B[1], B[0], Kt, emu) &&
                  block_matches<1, 2>(A + next, next, B[0], B[1], Kt, emu) &&
                  block_matches<1, 1>(A, next, B[1], B[0], Kt, emu);
  return ok ? 0 : 2;
}

// Runs test() in a child process: "" when it exits with 0, else what went wrong. A raw fork: no atfork
// handlers of torch or the OpenMP runtime run around it, and the child only computes on its stack.
std::string run_in_child(int (*test)()) {
  const long pid = syscall(SYS_fork);
  if (pid == 0) {
    // A fault ends the child quietly: no inherited handler (Python's faulthandler, say) reports it.
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int sig : {SIGILL, SIGSEGV, SIGBUS, SIGFPE, SIGTRAP}) sigaction(sig, &dfl, nullptr);
    syscall(SYS_exit_group, test());
  }
  if (pid < 0) return std::string("the tile self-test could not start (fork: ") + std::strerror(errno) + ")";
  int status = 0;
  while (waitpid(pid_t(pid), &status, 0) < 0)
    if (errno != EINTR) return std::string("the tile self-test was lost (waitpid: ") + std::strerror(errno) + ")";
  if (WIFSIGNALED(status))
    return std::string("the tile self-test died of signal ") + std::to_string(WTERMSIG(status)) + " (" +
           strsignal(WTERMSIG(status)) + "): the CPU or OS refused the tile code";
  if (WEXITSTATUS(status) == 1) return "LDTILECFG loaded another tile configuration than the one given";
  if (WEXITSTATUS(status) == 2) return "the tile kernel (TDPBSSD) differed from its emulation";
  if (WEXITSTATUS(status) != 0) return "the tile self-test exited with status " + std::to_string(WEXITSTATUS(status));
  return "";
}

// "" when the tile code runs right, else why not.
std::string probe_tiles() {
  std::string why;
  if (!amx_granted(&why)) return why;
  return run_in_child(tile_self_test);
}

const std::string& probe_result() {
  static const std::string why = probe_tiles();
  return why;
}

}  // namespace

bool amx_available() { return probe_result().empty(); }

std::string amx_probe_outcome(const std::string& mode) {
  if (mode == "pass") return run_in_child([] { return 0; });
  if (mode == "config") return run_in_child([] { return 1; });
  if (mode == "block") return run_in_child([] { return 2; });
  TORCH_CHECK_VALUE(mode == "fault", "mode must be pass, config, block or fault; got '", mode, "'");
  return run_in_child([]() -> int { __builtin_trap(); });
}

std::string amx_status() {
  const std::string& why = probe_result();
  return why.empty() ? "usable (tile self-test passed)" : why;
}

}  // namespace erbnn
