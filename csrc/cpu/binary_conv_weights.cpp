#include "binary_conv_weights.h"

#include <c10/util/Exception.h>

#include <cstring>
#include <list>

#include "common/conv_epilogue.h"

namespace erbnn {
namespace {

struct Cache {
  std::mutex mu;
  std::list<std::shared_ptr<PackedWeights>> lru;  // most recent first
};
Cache& cache() {
  static Cache c;
  return c;
}

size_t total_bytes(const Cache& c) {
  size_t n = 0;
  for (const auto& e : c.lru) n += e->bytes();
  return n;
}

void evict(Cache& c) {
  while (c.lru.size() > kMaxEntries || (c.lru.size() > 1 && total_bytes(c) > kMaxBytes)) c.lru.pop_back();
}

void check_tail_bits(const ConvGeom& g, const uint64_t* Wp) {
  const int64_t used = g.C - (g.Cw - 1) * 64;  // channels in a tap's last word
  if (used == 64 || g.Cw == 0) return;
  const uint64_t tail = ~((uint64_t(1) << used) - 1);
  for (int64_t r = 0; r < g.O * g.taps; ++r)
    TORCH_CHECK_VALUE((Wp[r * g.Cw + g.Cw - 1] & tail) == 0, "w_packed has bits set beyond the C = ", g.C,
                      " channels of x (row ", r / g.taps, ", tap ", r % g.taps,
                      "): it was not packed by pack_conv_weight for this many channels");
}

}  // namespace

size_t PackedWeights::bytes() const {
  return words.size() * 8 + (tap_pop.size() + ones_full.size()) * 4 + dense.size() * 8 + wt_amx.size() * 64 +
         wb_vnni.size() * 4 + onednn_bytes;
}

std::shared_ptr<PackedWeights> packed_weights(const ConvGeom& g, const uint64_t* Wp) {
  const size_t n = size_t(g.O * g.K);
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mu);
    for (auto it = c.lru.begin(); it != c.lru.end(); ++it) {
      const auto& e = *it;
      if (e->C == g.C && e->words.size() == n && e->tap_pop.size() == size_t(g.O * g.taps) &&
          std::memcmp(e->words.data(), Wp, n * 8) == 0) {
        auto hit = e;
        c.lru.splice(c.lru.begin(), c.lru, it);
        return hit;
      }
    }
  }
  check_tail_bits(g, Wp);
  auto e = std::make_shared<PackedWeights>();
  e->C = g.C;
  e->words.assign(Wp, Wp + n);
  e->tap_pop.resize(size_t(g.O * g.taps));
  e->ones_full.resize(size_t(g.O));
  for (int64_t o = 0; o < g.O; ++o)
    weight_tap_stats(Wp + o * g.K, g.taps, g.Cw, g.C, e->tap_pop.data() + o * g.taps, e->ones_full.data() + o);
  std::lock_guard<std::mutex> lock(c.mu);
  c.lru.push_front(e);
  evict(c);
  return e;
}

void packed_weights_grew() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  evict(c);
}

void clear_packed_weights() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  c.lru.clear();
}

size_t packed_weights_entries() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.lru.size();
}

}  // namespace erbnn
