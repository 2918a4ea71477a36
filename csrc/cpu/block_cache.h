// A caching CPU allocator for PyTorch: freed blocks of at least `min_block` bytes are kept per size
// (rounded up to 4 KiB) and handed out again to the next request of that size; smaller ones, and every
// request while caching is off, go to c10's CPU allocation functions, as with PyTorch's default allocator.
// Why: a training step allocates and frees the same sizes in the same order every step. On glibc's
// heap the small tensors of a step (packed signs, statistics, weight gradients) are carved out of the
// holes that freed activations leave, so the next activation-sized request no longer fits there and the
// heap grows: the resident peak of a ResNet-20 step at batch 64 was about 1.9x its live tensors, and
// varied by tens of MiB with the order of small allocations. Blocks reused whole are never split: the
// resident peak follows the live tensors, whatever the mix of sizes.
// Once enabled it stays c10's CPU allocator for the life of the process (disabling only stops the
// caching): oneDNN (through ideep) frees with whichever allocator is installed at that time what it
// allocated through another, so every pointer is looked up, and one not allocated here is freed as c10's
// default allocator would. It is installed only over c10's default CPU allocator.
#pragma once

#include <cstdint>
#include <map>
#include <string>

namespace erbnn {

// Makes the cache PyTorch's CPU allocator and turns caching on (or sets its limits); false, with the
// reason in block_cache_status(), when another library installed its own CPU allocator.
bool block_cache_enable(int64_t min_block, int64_t max_cached);
// Stops caching and frees the cached blocks; requests then pass straight to c10's allocation functions.
void block_cache_disable();
// Frees the cached (unused) blocks; returns their bytes.
int64_t block_cache_empty();
// enabled (0/1); allocated / peak_allocated (bytes in live tensors allocated here, block sizes); cached;
// peak_reserved (allocated + cached); hits, misses (requests of >= min_block); min_block, max_cached.
std::map<std::string, int64_t> block_cache_stats();
void block_cache_reset_peaks();
std::string block_cache_status();

}  // namespace erbnn
