// The AMX int8 kernel of the int8 binary-conv engine (int8_conv.h). Compiled with function-level
// targets only, and run only when amx_available() (CPUID + the OS grant of the tile state).
// NOTE: no machine of this project's CI has AMX: this file compiles everywhere but is exercised only
// on AMX hardware (Sapphire Rapids and later).
#include "int8_conv.h"

#include <immintrin.h>

#include <atomic>

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

ERBNN_AMX void amx_tiles_configure() {
  TileConfig c{};
  c.palette_id = 1;
  // tile 0: C, 16 channels x 16 pixels int32; tile 1: A, 16 channels x 64 k int8;
  // tile 2: B, 16 rows of 4 k x 16 pixels (64 bytes each).
  for (int i = 0; i < 3; ++i) {
    c.rows[i] = 16;
    c.colsb[i] = 64;
  }
  _tile_loadconfig(&c);
}

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

}  // namespace erbnn
