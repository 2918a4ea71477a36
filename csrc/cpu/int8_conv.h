// The int8 engines of the CPU binary convolution: exact +-1 int8 GEMM with int32 accumulation.
// Layouts (shared by the VNNI and AMX kernels):
//   activations Xq[N, H, Cp / 4, W] dwords of 4 int8 channels, sign(x - shift) in {-1, +1} plus `bias`,
//     channels padded to Cp = ceil(C / 4) * 4;
//   weights Wq[Op, Kp] int8 row-major (AMX; the VNNI kernel regroups it as [Op / 16][Kp / 4][16] dwords), k = tap * Cp + c, +-1 for c < C and 0 elsewhere (channel pad,
//     K pad up to Kp, rows o >= O up to Op = ceil(O / 16) * 16): the padding contributes exactly 0;
//   tile At[Kp / 4][16 pixels][4] bytes: one 64-byte row per 4 k (the AMX B-tile / VNNI layout).
// The AMX kernel multiplies s8 x s8 (bias 0): out-of-frame taps hold 0, so zero padding is free.
// VPDPBUSD multiplies u8 x s8: activations hold a + 1 in {0, 1 (out of frame), 2}, and
//   sum_k (a_k + 1) w_k = conv + sum_k w_k = conv + conv(1, W_b with every tap in frame),
// a per-channel constant the epilogue already has (Epilogue::ones_full): exact either way.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <string>

#include "binary_conv_cpu.h"
#include "binary_conv_weights.h"

namespace erbnn {

// out [N, O, OH, OW] from x [N, C, H, W] (float dtypes, any strides) or its packed signs [N, H, W, Cw]
// (int64, shift ignored) and w (the packed weights' cache entry: the int8 weights are unpacked into it
// once); e holds tap_pop and ones_full; bits: the packed output where e.emit_bits. amx: the AMX kernel,
// else AVX512-VNNI. NaN in x -> ValueError.
void int8_conv_run(const ConvGeom& g, const at::Tensor& x, double shift, PackedWeights& w, const Epilogue& e,
                   bool amx, float* out, const BitsOut& bits = {});

// AMX (int8_conv_amx.cpp). Usable when CPUID and the OS grant it (cpu_isa.h's amx_granted) and a self-test
// of the tile code in a child process passed (checked once per process); amx_status() says why not.
bool amx_available();
std::string amx_status();
// Tests of the self-test's child-process machinery on any CPU: what amx_status() would say for a child
// that passes ("pass" -> ""), reports a bad configuration or block ("config", "block"), or faults ("fault").
std::string amx_probe_outcome(const std::string& mode);
// The tile configuration the kernel loads (64 bytes, palette 1), and where AMX is usable, what LDTILECFG
// loaded from it, read back with STTILECFG.
std::array<uint8_t, 64> amx_tile_config();
std::array<uint8_t, 64> amx_tile_config_loaded();
// Tile configuration of the calling thread, and one 16 x 16 block:
// C[o][p] = sum_k W[o][k] * At[k / 4][p][k % 4], W rows at stride Kp (Kp a multiple of 64).
void amx_tiles_configure();
void amx_tiles_release();
void amx_block_16x16(const int8_t* W, int64_t Kp, const uint8_t* At, int32_t* C);
// Tests on machines without AMX: the "amx" engine runs with amx_block_16x16_emulated (a scalar TDPBSSD
// over the same tile operands) instead of the tile instructions, so everything but them is exercised.
bool amx_emulated();
void set_amx_emulated(bool on);
void amx_block_16x16_emulated(const int8_t* W, int64_t Kp, const uint8_t* At, int32_t* C);

}  // namespace erbnn
