// The AMX int8 kernel of the int8 binary-conv engine (int8_conv.h). Compiled with function-level
// targets only, and run only when amx_available(): CPUID and the OS grant (cpu_isa.h), then a self-test of
// the tile code in a child process, so a fault there (a refused LDTILECFG raises #GP) cannot take the
// user's process down.
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

#include "cpu_isa.h"

#define ERBNN_AMX __attribute__((target("amx-tile,amx-int8")))

namespace erbnn {
namespace {

// Palette 1 configuration (Intel SDM): 64-byte block.
struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];  // bytes per row of tile i
  uint8_t rows[16];
};
static_assert(sizeof(TileConfig) == 64, "LDTILECFG reads exactly 64 bytes");

// tile 0: C, 16 channels x 16 pixels int32; tile 1: A, 16 channels x 64 k int8;
// tile 2: B, 16 rows of 4 k x 16 pixels (64 bytes each).
constexpr TileConfig make_tile_config() {
  TileConfig c{};
  c.palette_id = 1;
  for (int i = 0; i < 3; ++i) {
    c.rows[i] = 16;
    c.colsb[i] = 64;
  }
  return c;
}
// A constant object, not stack stores: the compiler cannot see that _tile_loadconfig reads its operand,
// and dropped the stores of a local configuration as dead (LDTILECFG then read garbage and faulted).
alignas(64) constexpr TileConfig kTileConfig = make_tile_config();

std::atomic<bool>& emulation() {
  static std::atomic<bool> on{false};
  return on;
}

}  // namespace

bool amx_emulated() { return emulation().load(std::memory_order_relaxed); }
void set_amx_emulated(bool on) { emulation().store(on); }

// TDPBSSD on the same operands, one multiply at a time: the tile semantics (A rows at stride Kp, B rows
// of 64 bytes, C[m][n] += sum_i A[m][4k + i] * B[k][4n + i]) without the tile registers.
void amx_block_16x16_emulated(const int8_t* W, int64_t Kp, const uint8_t* At, int32_t* C) {
  const int8_t* B = reinterpret_cast<const int8_t*>(At);
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) {
      int32_t acc = 0;
      for (int64_t k = 0; k < Kp; k += 64)
        for (int r = 0; r < 16; ++r)
          for (int i = 0; i < 4; ++i) acc += int32_t(W[m * Kp + k + 4 * r + i]) * int32_t(B[(k / 4 + r) * 64 + 4 * n + i]);
      C[m * 16 + n] = acc;
    }
}

ERBNN_AMX void amx_tiles_configure() { _tile_loadconfig(&kTileConfig); }

ERBNN_AMX void amx_tiles_release() { _tile_release(); }

ERBNN_AMX void amx_block_16x16(const int8_t* W, int64_t Kp, const uint8_t* At, int32_t* C) {
  _tile_zero(0);
  for (int64_t k = 0; k < Kp; k += 64) {
    _tile_loadd(1, W + k, Kp);
    _tile_loadd(2, At + k * 16, 64);  // 64 k = 16 rows of 64 bytes
    _tile_dpbssd(0, 1, 2);
  }
  _tile_stored(0, C, 64);
}

std::array<uint8_t, 64> amx_tile_config() {
  std::array<uint8_t, 64> out{};
  std::memcpy(out.data(), &kTileConfig, 64);
  return out;
}

ERBNN_AMX std::array<uint8_t, 64> amx_tile_config_loaded() {
  TORCH_CHECK(amx_available(), "AMX is not usable here: ", amx_status());
  alignas(64) TileConfig back{};
  amx_tiles_configure();
  _tile_storeconfig(&back);
  amx_tiles_release();
  std::array<uint8_t, 64> out{};
  std::memcpy(out.data(), &back, 64);
  return out;
}

namespace {

// The self-test, run in a child process: the configuration LDTILECFG loaded must read back as given, and
// one block of +-1 / 0 operands must equal the scalar TDPBSSD. Exit status 0 ok, 1 config, 2 block.
// Only stack memory and no library state: the child of a multi-threaded process may not take locks.
ERBNN_AMX int tile_self_test() {
  amx_tiles_configure();
  alignas(64) TileConfig back{};
  _tile_storeconfig(&back);
  if (std::memcmp(&back, &kTileConfig, sizeof back) != 0) {
    amx_tiles_release();
    return 1;
  }
  constexpr int64_t Kp = 128;
  alignas(64) int8_t W[16 * Kp];
  alignas(64) uint8_t At[Kp * 16];
  alignas(64) int32_t C[256], R[256];
  for (int64_t i = 0; i < 16 * Kp; ++i) {
    W[i] = int8_t(int((i * 7 + i / 13) % 3) - 1);
    At[i] = uint8_t(int8_t(int((i * 5 + i / 11) % 3) - 1));
  }
  amx_block_16x16(W, Kp, At, C);
  amx_tiles_release();
  amx_block_16x16_emulated(W, Kp, At, R);
  return std::memcmp(C, R, sizeof C) == 0 ? 0 : 2;
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
  if (WEXITSTATUS(status) == 2) return "a tile multiply (TDPBSSD) differed from its scalar definition";
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
