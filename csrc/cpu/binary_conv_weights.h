// What the CPU binary convolutions derive from a packed weight tensor (tap statistics, the int8 engines'
// unpacked weights, the full-reduction layout), built once per distinct weight content and reused.
// A lookup compares the stored copy of the packed words with the caller's (a memcmp of O * K words, the
// size of the weights the conv reads anyway): a cache hit can never change a result, whatever happened
// to the tensor (in-place edits through .data, a new tensor at the same address). Bounded: at most
// kMaxEntries tensors and kMaxBytes of derived data, least recently used evicted.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "common/conv_geom.h"

namespace erbnn {

// One 64-byte row of an AMX operand tile, aligned so that a tile load never splits a cache line.
struct alignas(64) TileRow {
  int8_t b[64];
};

struct OnednnWeights;  // onednn_conv.cpp

struct PackedWeights {
  int64_t C = 0;                            // channels of x: with the words, the key
  std::vector<uint64_t> words;              // [O, taps, Cw]
  std::vector<int32_t> tap_pop, ones_full;  // common/conv_epilogue.h
  // Built on first use by the engine that needs them (guarded by mu).
  std::mutex mu;
  std::vector<uint64_t> dense;    // [O, Kd] the full-reduction layout (C < 64), see binary_conv_cpu.h
  std::vector<TileRow> wt_amx;    // int8_conv.h layouts
  std::vector<int32_t> wb_vnni;
  std::vector<std::shared_ptr<OnednnWeights>> onednn;  // per stride / padding / dilation
  size_t onednn_bytes = 0;
  size_t bytes() const;
};

constexpr size_t kMaxEntries = 64;
constexpr size_t kMaxBytes = size_t(512) << 20;

// The entry for packed weights Wp [O, taps, Cw] of geometry g; checks that the tail bits of every tap's
// last word (channels >= C) are zero (ValueError naming w_packed).
std::shared_ptr<PackedWeights> packed_weights(const ConvGeom& g, const uint64_t* Wp);
// Re-accounts an entry whose lazily built parts grew (evicts others if over budget).
void packed_weights_grew();
void clear_packed_weights();
size_t packed_weights_entries();

}  // namespace erbnn
