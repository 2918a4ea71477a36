// The AMX tile GEMM of the amx conv engine (int8_conv.h), written once over a tile-operations policy:
//   RealTiles      the tile instructions (LDTILECFG, TILELOADD, TDPBSSD, TILESTORED, TILEZERO, TILERELEASE);
//   EmulatedTiles  the same instructions on an emulated register file of 8 tiles, by the Intel SDM's
//                  pseudocode: rows / bytes per row from the loaded configuration, rows past them and
//                  bytes past them zeroed on a load, TDPBSSD's signed bytes and wrapping int32 sums, and
//                  the operand checks that fault on the hardware (#UD / #GP) raised as errors.
// The engine, the tests (on CPUs without AMX) and the forked self-test run the one template
// tile_gemm_block, so the blocking, the K loop and the edge variants the hardware runs are the ones the
// emulation checks; only the policy differs.
#pragma once

#include <immintrin.h>

#include <cstdint>

#define ERBNN_AMX __attribute__((target("amx-tile,amx-int8")))

namespace erbnn::amx {

// Palette 1 configuration (Intel SDM): a 64-byte block.
struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];  // bytes per row of tile i
  uint8_t rows[16];
};
static_assert(sizeof(TileConfig) == 64, "LDTILECFG reads exactly 64 bytes");

constexpr int kTiles = 8, kRows = 16, kRowBytes = 64;  // palette 1: 8 tiles of at most 16 x 64 bytes
constexpr int64_t kTileBytes = kRows * kRowBytes;       // one A or B operand tile, contiguous

// The register block: C[i][j] (tiles 0-3, 16 channels x 16 pixels int32) += A[i] (tiles 4-5, 16 channels
// x 64 k int8) times B[j] (tiles 6-7, 16 rows of 4 k x 16 pixels): 4 TDPBSSD per 4 tile loads.
constexpr int kC00 = 0, kC01 = 1, kC10 = 2, kC11 = 3, kA0 = 4, kA1 = 5, kB0 = 6, kB1 = 7;

// All 8 tiles 16 rows x 64 bytes; everything else zero.
constexpr TileConfig make_tile_config() {
  TileConfig c{};
  c.palette_id = 1;
  for (int i = 0; i < kTiles; ++i) {
    c.rows[i] = kRows;
    c.colsb[i] = kRowBytes;
  }
  return c;
}
// A constant object (.rodata), not stack stores: GCC's _tile_loadconfig names 8 bytes of its operand, and
// the compiler dropped the stores of a local configuration as dead (LDTILECFG then read garbage and
// faulted). RealTiles::load_config names all 64 bytes as well.
alignas(64) inline constexpr TileConfig kTileConfig = make_tile_config();

// The tile instructions. Tile numbers are immediates, hence template parameters; the asm is written out
// because GCC's _tile_* macros paste their argument's spelling into the register name (a template
// parameter T became "%tmmT"), and because its TILELOADD names no memory operand: the "memory" clobber
// keeps the stores that fill an operand before the load (they could be moved past it or dropped as dead,
// as the configuration's were).
struct RealTiles {
  // LDTILECFG / STTILECFG / TILERELEASE; out of line: callers need no AMX target.
  ERBNN_AMX void load_config(const TileConfig* cfg);
  ERBNN_AMX void store_config(TileConfig* cfg);
  ERBNN_AMX void release();
  template <int T>
  ERBNN_AMX __attribute__((always_inline)) inline void zero() {
    __asm__ volatile("{tilezero\t%%tmm%c0|tilezero\t%%tmm%c0}" ::"i"(T));
  }
  template <int T>
  ERBNN_AMX __attribute__((always_inline)) inline void load(const void* base, int64_t stride) {
    __asm__ volatile("{tileloadd\t(%0,%1,1), %%tmm%c2|tileloadd\t%%tmm%c2, [%0+%1*1]}" ::"r"(base),
                     "r"(stride), "i"(T)
                     : "memory");
  }
  template <int T>
  ERBNN_AMX __attribute__((always_inline)) inline void store(void* base, int64_t stride) {
    __asm__ volatile("{tilestored\t%%tmm%c2, (%0,%1,1)|tilestored\t[%0+%1*1], %%tmm%c2}" ::"r"(base),
                     "r"(stride), "i"(T)
                     : "memory");
  }
  template <int C, int A, int B>
  ERBNN_AMX __attribute__((always_inline)) inline void dpbssd() {
    __asm__ volatile("{tdpbssd\t%%tmm%c2, %%tmm%c1, %%tmm%c0|tdpbssd\t%%tmm%c0, %%tmm%c1, %%tmm%c2}" ::"i"(C),
                     "i"(A), "i"(B));
  }
};

// The emulated register file (8 KiB: keep it in the worker or on a stack, one per thread as the tiles).
class EmulatedTiles {
 public:
  void load_config(const TileConfig* cfg);  // LDTILECFG: validates, zeroes every tile
  void store_config(TileConfig* cfg) const { *cfg = cfg_; }  // STTILECFG
  void release();                           // TILERELEASE: back to the init state
  template <int T>
  void zero() {
    zero_tile(T);
  }
  template <int T>
  void load(const void* base, int64_t stride) {
    load_tile(T, base, stride);
  }
  template <int T>
  void store(void* base, int64_t stride) {
    store_tile(T, base, stride);
  }
  template <int C, int A, int B>
  void dpbssd() {
    dpbssd_tiles(C, A, B);
  }
  // The same instructions with the tile numbers as values (tests).
  void zero_tile(int t);
  void load_tile(int t, const void* base, int64_t stride);
  void store_tile(int t, void* base, int64_t stride);
  void dpbssd_tiles(int c, int a, int b);

 private:
  void check_tile(int t, const char* insn) const;

  TileConfig cfg_{};
  bool configured_ = false;
  alignas(64) uint8_t reg_[kTiles][kRows][kRowBytes] = {};
};

// One register block: MB x NB tiles C[i][j] (16 x 16 int32 each) = sum over kt < Kt of A_i[kt] B_j[kt],
//   A_i[kt] at A + i * a_next + kt * kTileBytes: 16 rows (output channels) of 64 k bytes, contiguous;
//   B_j[kt] at B_j + kt * kTileBytes: 16 rows of 4 k x 16 pixels (the VNNI layout), contiguous;
// C[i][j] stored once, after the K loop, to Cj + i * 256 (row = channel, 64 bytes = 16 pixels).
// MB = 1 / NB = 1 are the edge blocks (16 channels left, an odd tile); the tiles must be configured
// with kTileConfig on the calling thread.
template <class Tiles, int MB, int NB>
ERBNN_AMX inline void tile_gemm_block(Tiles& tl, const int8_t* A, int64_t a_next, const int8_t* B0,
                                      const int8_t* B1, int64_t Kt, int32_t* C0, int32_t* C1) {
  static_assert(MB >= 1 && MB <= 2 && NB >= 1 && NB <= 2, "register blocks of 1 or 2 tiles a side");
  tl.template zero<kC00>();
  if constexpr (NB == 2) tl.template zero<kC01>();
  if constexpr (MB == 2) tl.template zero<kC10>();
  if constexpr (MB == 2 && NB == 2) tl.template zero<kC11>();
  for (int64_t kt = 0; kt < Kt; ++kt) {
    const int64_t off = kt * kTileBytes;
    tl.template load<kA0>(A + off, kRowBytes);
    tl.template load<kB0>(B0 + off, kRowBytes);
    tl.template dpbssd<kC00, kA0, kB0>();
    if constexpr (NB == 2) {
      tl.template load<kB1>(B1 + off, kRowBytes);
      tl.template dpbssd<kC01, kA0, kB1>();
    }
    if constexpr (MB == 2) {
      tl.template load<kA1>(A + a_next + off, kRowBytes);
      tl.template dpbssd<kC10, kA1, kB0>();
      if constexpr (NB == 2) tl.template dpbssd<kC11, kA1, kB1>();
    }
  }
  tl.template store<kC00>(C0, kRowBytes);
  if constexpr (NB == 2) tl.template store<kC01>(C1, kRowBytes);
  if constexpr (MB == 2) tl.template store<kC10>(C0 + 256, kRowBytes);
  if constexpr (MB == 2 && NB == 2) tl.template store<kC11>(C1 + 256, kRowBytes);
}

// The block with MB, NB chosen at run time (1 or 2 each).
template <class Tiles>
inline void tile_gemm(Tiles& tl, int mb, int nb, const int8_t* A, int64_t a_next, const int8_t* B0,
                      const int8_t* B1, int64_t Kt, int32_t* C0, int32_t* C1) {
  if (mb == 2 && nb == 2) return tile_gemm_block<Tiles, 2, 2>(tl, A, a_next, B0, B1, Kt, C0, C1);
  if (mb == 2) return tile_gemm_block<Tiles, 2, 1>(tl, A, a_next, B0, B1, Kt, C0, C1);
  if (nb == 2) return tile_gemm_block<Tiles, 1, 2>(tl, A, a_next, B0, B1, Kt, C0, C1);
  return tile_gemm_block<Tiles, 1, 1>(tl, A, a_next, B0, B1, Kt, C0, C1);
}

}  // namespace erbnn::amx
