// The tile instructions' two policies (amx_tiles.h): the real LDTILECFG / TILERELEASE, and the emulated
// register file. The emulation follows the Intel SDM's pseudocode of each instruction (palette 1:
// 8 tiles, at most 16 rows of 64 bytes; TMUL maxk 16, maxn 16) and raises where the hardware faults.
#include "amx_tiles.h"

#include <c10/util/Exception.h>

#include <cstring>

namespace erbnn::amx {

// The asm operands are the whole 64-byte objects (GCC's _tile_loadconfig / _tile_storeconfig name 8 bytes
// of them), so the compiler keeps every store LDTILECFG reads and every byte STTILECFG writes.
ERBNN_AMX void RealTiles::load_config(const TileConfig* cfg) { __asm__ volatile("ldtilecfg\t%X0" ::"m"(*cfg)); }

ERBNN_AMX void RealTiles::store_config(TileConfig* cfg) { __asm__ volatile("sttilecfg\t%X0" : "=m"(*cfg)); }

ERBNN_AMX void RealTiles::release() { __asm__ volatile("tilerelease" ::: "memory"); }

void EmulatedTiles::load_config(const TileConfig* cfg) {
  // LDTILECFG: palette 0 is the init state; palette 1 checks every field (#GP otherwise) and zeroes
  // the tile data.
  if (cfg->palette_id == 0) return release();
  TORCH_CHECK(cfg->palette_id == 1, "LDTILECFG (emulated): #GP, palette ", int(cfg->palette_id),
              " is not supported (palette 1 only)");
  for (uint8_t b : cfg->reserved) TORCH_CHECK(b == 0, "LDTILECFG (emulated): #GP, reserved bytes 2-15 are not zero");
  for (int i = 0; i < 16; ++i) {
    const int rows = cfg->rows[i], colsb = cfg->colsb[i];
    if (i >= kTiles) {
      TORCH_CHECK(rows == 0 && colsb == 0, "LDTILECFG (emulated): #GP, tile ", i, " is past palette 1's ", kTiles,
                  " tiles but has rows ", rows, ", colsb ", colsb);
      continue;
    }
    TORCH_CHECK(rows <= kRows && colsb <= kRowBytes, "LDTILECFG (emulated): #GP, tile ", i, " is ", rows, " rows x ",
                colsb, " bytes (at most ", kRows, " x ", kRowBytes, ")");
    TORCH_CHECK((rows == 0) == (colsb == 0), "LDTILECFG (emulated): #GP, tile ", i, " has rows ", rows, " but colsb ",
                colsb);
  }
  cfg_ = *cfg;
  configured_ = true;
  std::memset(reg_, 0, sizeof reg_);
}

void EmulatedTiles::release() {
  cfg_ = TileConfig{};
  configured_ = false;
  std::memset(reg_, 0, sizeof reg_);
}

void EmulatedTiles::check_tile(int t, const char* insn) const {
  TORCH_CHECK(configured_, insn, " (emulated): #UD, no tile configuration is loaded (LDTILECFG)");
  TORCH_CHECK(t >= 0 && t < kTiles && cfg_.rows[t] != 0, insn, " (emulated): #UD, tile ", t,
              " is not configured");
}

void EmulatedTiles::zero_tile(int t) {
  check_tile(t, "TILEZERO");
  std::memset(reg_[t], 0, sizeof reg_[t]);
}

void EmulatedTiles::load_tile(int t, const void* base, int64_t stride) {
  check_tile(t, "TILELOADD");
  const int rows = cfg_.rows[t], colsb = cfg_.colsb[t];
  const uint8_t* mem = static_cast<const uint8_t*>(base);
  for (int r = cfg_.start_row; r < rows; ++r) {  // write_row_and_zero: the bytes past colsb become 0
    std::memcpy(reg_[t][r], mem + r * stride, size_t(colsb));
    std::memset(reg_[t][r] + colsb, 0, size_t(kRowBytes - colsb));
  }
  for (int r = rows; r < kRows; ++r) std::memset(reg_[t][r], 0, kRowBytes);  // zero_upper_rows
  cfg_.start_row = 0;                                                           // zero_tilecfg_start
}

void EmulatedTiles::store_tile(int t, void* base, int64_t stride) {
  check_tile(t, "TILESTORED");
  uint8_t* mem = static_cast<uint8_t*>(base);
  for (int r = cfg_.start_row; r < cfg_.rows[t]; ++r) std::memcpy(mem + r * stride, reg_[t][r], cfg_.colsb[t]);
  cfg_.start_row = 0;
}

void EmulatedTiles::dpbssd_tiles(int c, int a, int b) {
  check_tile(c, "TDPBSSD");
  check_tile(a, "TDPBSSD");
  check_tile(b, "TDPBSSD");
  TORCH_CHECK(c != a && c != b && a != b, "TDPBSSD (emulated): #UD, the three tiles must differ (", c, ", ", a, ", ",
              b, ")");
  const int m_rows = cfg_.rows[c], n_bytes = cfg_.colsb[c], k_bytes = cfg_.colsb[a];
  TORCH_CHECK(n_bytes % 4 == 0 && k_bytes % 4 == 0 && cfg_.colsb[b] % 4 == 0,
              "TDPBSSD (emulated): #UD, bytes per row must be multiples of 4 (", n_bytes, ", ", k_bytes, ", ",
              int(cfg_.colsb[b]), ")");
  TORCH_CHECK(cfg_.rows[a] == m_rows, "TDPBSSD (emulated): #UD, A has ", int(cfg_.rows[a]), " rows, C has ", m_rows);
  TORCH_CHECK(k_bytes / 4 == cfg_.rows[b], "TDPBSSD (emulated): #UD, A's ", k_bytes, " bytes per row (K = ",
              k_bytes / 4, " dwords) but B has ", int(cfg_.rows[b]), " rows");
  TORCH_CHECK(cfg_.colsb[b] == n_bytes, "TDPBSSD (emulated): #UD, B has ", int(cfg_.colsb[b]),
              " bytes per row, C has ", n_bytes);
  // C[m].dword[n] += sum over k, i of sext(A[m].byte[4k + i]) * sext(B[k].byte[4n + i]), modulo 2^32.
  for (int m = 0; m < m_rows; ++m) {
    uint32_t tmp[kRowBytes / 4];
    std::memcpy(tmp, reg_[c][m], sizeof tmp);
    for (int k = 0; k < k_bytes / 4; ++k)
      for (int n = 0; n < n_bytes / 4; ++n) {
        const int8_t* x = reinterpret_cast<const int8_t*>(reg_[a][m]) + 4 * k;
        const int8_t* y = reinterpret_cast<const int8_t*>(reg_[b][k]) + 4 * n;
        uint32_t s = tmp[n];
        for (int i = 0; i < 4; ++i) s += uint32_t(int32_t(x[i]) * int32_t(y[i]));
        tmp[n] = s;
      }
    std::memcpy(reg_[c][m], tmp, size_t(n_bytes));  // write_row_and_zero
    std::memset(reg_[c][m] + n_bytes, 0, size_t(kRowBytes - n_bytes));
  }
  for (int m = m_rows; m < kRows; ++m) std::memset(reg_[c][m], 0, kRowBytes);  // zero_upper_rows
  cfg_.start_row = 0;
}

}  // namespace erbnn::amx
