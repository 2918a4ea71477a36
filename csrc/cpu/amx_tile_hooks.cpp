// Test hooks of the AMX tile kernel (torch.ops.erbnn._amx_*): the emulated tile instructions one at a
// time, and one register block of the engine's kernel on the emulated or (where usable) the real tiles,
// so tests can hold both to an independent definition. Not part of the public op set.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "amx_tiles.h"
#include "int8_conv.h"

namespace erbnn {
namespace {

amx::TileConfig config_from(const std::vector<int64_t>& bytes) {
  TORCH_CHECK_VALUE(bytes.size() == 64, "config must have 64 bytes, got ", bytes.size());
  uint8_t raw[64];
  for (int i = 0; i < 64; ++i) {
    TORCH_CHECK_VALUE(bytes[i] >= 0 && bytes[i] < 256, "config bytes must be in [0, 255], got ", bytes[i]);
    raw[i] = uint8_t(bytes[i]);
  }
  amx::TileConfig c;
  std::memcpy(&c, raw, 64);
  return c;
}

const void* rows_of(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 2 && t.is_contiguous() && t.device().is_cpu(), name,
                    " must be a contiguous 2-D CPU tensor");
  return t.const_data_ptr();
}

// LDTILECFG(config); TILELOADD tile c, a, b from the rows of c, a, b (row stride = their row bytes);
// TDPBSSD c, a, b; TILESTORED c into rows x colsb bytes, returned as int32 [rows, colsb / 4].
at::Tensor emu_dpbssd(const std::vector<int64_t>& config, const at::Tensor& c, const at::Tensor& a,
                      const at::Tensor& b, int64_t tc, int64_t ta, int64_t tb) {
  const amx::TileConfig cfg = config_from(config);
  amx::EmulatedTiles tiles;
  tiles.load_config(&cfg);
  for (auto [t, x, name] : {std::tuple{tc, &c, "c"}, std::tuple{ta, &a, "a"}, std::tuple{tb, &b, "b"}}) {
    const void* p = rows_of(*x, name);
    const int64_t row_bytes = x->size(1) * int64_t(x->element_size());
    if (t >= 0 && t < amx::kTiles)  // the tile load reads rows x colsb bytes of the configuration
      TORCH_CHECK_VALUE(x->size(0) >= cfg.rows[t] && row_bytes >= cfg.colsb[t], name, " is smaller than tile ", t,
                        " (", int(cfg.rows[t]), " rows x ", int(cfg.colsb[t]), " bytes)");
    tiles.load_tile(int(t), p, row_bytes);
  }
  tiles.dpbssd_tiles(int(tc), int(ta), int(tb));
  at::Tensor out = at::zeros({int64_t(cfg.rows[tc]), int64_t(cfg.colsb[tc] / 4)}, at::kInt);
  tiles.store_tile(int(tc), out.mutable_data_ptr(), cfg.colsb[tc]);
  tiles.release();
  return out;
}

// tile_gemm with MB = A.size(0), NB = B.size(0): A [MB, Kt, 16, 64] int8 (weights' tile layout), B [NB,
// Kt, 16, 64] int8 (16 rows of 4 k x 16 pixels per step) -> C [MB, NB, 16, 16] int32.
at::Tensor tile_gemm_hook(const at::Tensor& A, const at::Tensor& B, bool emulated) {
  TORCH_CHECK_VALUE(A.scalar_type() == at::kChar && B.scalar_type() == at::kChar, "A and B must be int8");
  TORCH_CHECK_VALUE(A.dim() == 4 && B.dim() == 4 && A.size(2) == 16 && A.size(3) == 64 && B.size(2) == 16 &&
                        B.size(3) == 64 && A.size(1) == B.size(1),
                    "A must be [MB, Kt, 16, 64] and B [NB, Kt, 16, 64]");
  const int64_t mb = A.size(0), nb = B.size(0), Kt = A.size(1);
  TORCH_CHECK_VALUE(mb >= 1 && mb <= 2 && nb >= 1 && nb <= 2, "MB and NB must be 1 or 2");
  TORCH_CHECK(emulated || amx_available(), "AMX is not usable here: ", amx_status());
  const at::Tensor a = A.contiguous(), b = B.contiguous();
  const int8_t* pa = a.const_data_ptr<int8_t>();
  const int8_t* pb = b.const_data_ptr<int8_t>();
  const int64_t next = Kt * amx::kTileBytes;
  std::vector<int32_t> c(2 * 512, 0x5A5A5A5A);  // both C column blocks: [2 (j)][MB * 16][16]
  if (emulated) {
    amx::EmulatedTiles tiles;
    tiles.load_config(&amx::kTileConfig);
    amx::tile_gemm(tiles, int(mb), int(nb), pa, next, pb, pb + (nb - 1) * next, Kt, c.data(), c.data() + 512);
    tiles.release();
  } else {
    amx::RealTiles tiles;
    tiles.load_config(&amx::kTileConfig);
    amx::tile_gemm(tiles, int(mb), int(nb), pa, next, pb, pb + (nb - 1) * next, Kt, c.data(), c.data() + 512);
    tiles.release();
  }
  at::Tensor out = at::empty({mb, nb, 16, 16}, at::kInt);
  int32_t* o = out.mutable_data_ptr<int32_t>();
  for (int64_t i = 0; i < mb; ++i)
    for (int64_t j = 0; j < nb; ++j) std::memcpy(o + (i * nb + j) * 256, c.data() + j * 512 + i * 256, 1024);
  return out;
}

}  // namespace
}  // namespace erbnn

TORCH_LIBRARY_FRAGMENT(erbnn, m) {
  using namespace erbnn;
  m.def("_amx_emu_dpbssd", [](std::vector<int64_t> config, at::Tensor c, at::Tensor a, at::Tensor b, int64_t tc,
                              int64_t ta, int64_t tb) { return emu_dpbssd(config, c, a, b, tc, ta, tb); });
  m.def("_amx_tile_gemm", [](at::Tensor A, at::Tensor B, bool emulated) { return tile_gemm_hook(A, B, emulated); });
  m.def("_amx_weight_packs", [] { return amx_weight_packs(); });
}
