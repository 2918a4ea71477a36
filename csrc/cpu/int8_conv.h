// The int8 engines of the CPU binary convolution: exact +-1 int8 GEMM with int32 accumulation.
// Layouts (shared by the VNNI and AMX kernels):
//   activations Xq[N, H, Cp / 4, W] dwords of 4 int8 channels, sign(x - shift) in {-1, +1} plus `bias`,
//     channels padded to Cp = ceil(C / 4) * 4;
//   weights Wq[Op, Kp] int8 row-major (regrouped per engine, below), k = tap * Cp + c, +-1 for c < C and 0 elsewhere (channel pad,
//     K pad up to Kp, rows o >= O up to Op = ceil(O / 16) * 16): the padding contributes exactly 0;
//   tile At[Kp / 4][16 pixels][4] bytes: one 64-byte row per 4 k (the AMX B-tile / VNNI layout);
//   VNNI weights [Op / 16][Kp / 4][16] dwords;
//   AMX weights Wt[Op / 16][Kp / 64][16][64] bytes: each A tile (16 channels x 64 k) one contiguous 1 KiB.
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
// Tests on machines without AMX: the "amx" engine runs its tile kernel (amx_tiles.h) on the emulated
// tiles instead of the tile instructions: the same blocking, loops, layouts, driver and epilogue.
bool amx_emulated();
void set_amx_emulated(bool on);
// How many weights the amx engine has packed into its tile layout so far (once per weight content).
int64_t amx_weight_packs();

}  // namespace erbnn
