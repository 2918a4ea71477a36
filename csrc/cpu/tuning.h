// The CPU kernels' tuning constants and thresholds, in one place: what each is, where it was measured and
// which environment variable overrides it. None changes a result (every path they choose between is
// exact or bit-identical); they only pick the faster path. The measurements are on the development
// machine, a 2-core AMD Zen 5 VM (AVX-512, 1 MiB L2 per core, 32 MiB L3), with the commands in
// docs/architecture.md ("Tuning constants"); rerun them there before moving a value. Other rules of the
// same kind: the CPU conv engine's choice per layer shape (conv_engine.cpp, ERBNN_CONV_ENGINE) and the
// NHWC training step's channel bound (erbnn_ext/nn/routing.py, NHWC_MAX_CHANNELS).
#pragma once

#include <cstdint>
#include <cstdlib>

namespace erbnn {

// ---- the ER step's NHWC passes (restore_activation.cpp, nhwc_pieces.h) ----
// Pixels per piece (16 channel rows x kCols pixels through a tile in cache). The forward reads x's 16
// rows whole at these sizes (P <= 1024: one contiguous block); the backward keeps its grad_y tile
// (16 x 256 floats) in L1. Chosen in ResNet-20's training steps (benchmarks.train_step). No override.
constexpr int64_t kFwdCols = 1024, kBwdCols = 256;

// The NHWC forward writes y with streaming stores (past the caches) from this size of y on. y is next
// read by the backward's conv after the rest of the step, so caching a large one only evicts x; a smaller
// one is still in L3 for a single layer's backward. Measured side by side with nn.Conv2d
// (benchmarks.train_step --batch 64): streaming helped ResNet-20's layer2.0.conv1 (a 4 MiB y) and hurt
// layer3.0.conv1 (2 MiB). No override.
constexpr int64_t kStreamBytes = int64_t(4) << 20;

// ---- the quantile's band select (band_select.h) against the radix select (radix_select.h) ----
// Values from which the plain two_sided_quantile runs the sampled band select (a pass of its own) instead
// of the radix select: 2^23, about where the band select overtook the radix select on one thread
// (benchmarks.quantile, standard normal values; below it the radix select's two passes stay in cache).
// ERBNN_BAND_SELECT_MIN overrides it (the tests run the band select on inputs of a few 2^18 values with
// it); BandSelect never runs below 4 samples' worth.
inline int64_t band_select_min() {
  const char* s = std::getenv("ERBNN_BAND_SELECT_MIN");
  return s != nullptr ? std::atoll(s) : int64_t(1) << 23;
}

// Values from which the training activation op (train_quantile, restore_cpu.h), whose scan rides on its
// write pass, brackets its band from a sample of about n / 32 values instead of building the radix
// select's histogram in that pass: 2^16 (docs/kernels.md, "Restoration kernels"). A bound of its own:
// tuning the plain op's must not move this one. ERBNN_TRAIN_BAND_SELECT_MIN overrides it (the tests force
// the band on small inputs, benchmarks.band_hits forces it off with a large value).
inline int64_t train_band_select_min() {
  const char* s = std::getenv("ERBNN_TRAIN_BAND_SELECT_MIN");
  return s != nullptr ? std::atoll(s) : int64_t(1) << 16;
}

}  // namespace erbnn
