#include "block_cache.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <c10/util/Exception.h>
#include <pthread.h>

#include <algorithm>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

namespace erbnn {
namespace {

constexpr size_t kPage = 4096;
// Above c10's default CPU allocator (0).
constexpr uint8_t kPriority = 10;

class BlockCache final : public c10::Allocator {
 public:
  BlockCache() {
    // A fork (DataLoader workers) while another thread holds the lock would leave it held in the child.
    pthread_atfork([] { instance().mu_.lock(); }, [] { instance().mu_.unlock(); },
                   [] { instance().mu_.unlock(); });
  }

  // Never destroyed: its blocks must stay freeable during static destruction.
  static BlockCache& instance() {
    static auto* cache = new BlockCache();
    return *cache;
  }

  c10::DataPtr allocate(size_t n) override {
    const c10::Device cpu(c10::DeviceType::CPU);
    if (n == 0) return {nullptr, nullptr, &release, cpu};
    size_t block = 0;
    void* data = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (caching_ && n >= min_block_) {
        TORCH_CHECK(n <= SIZE_MAX - kPage, "erbnn block cache: cannot allocate ", n, " bytes");
        block = (n + kPage - 1) / kPage * kPage;
        auto it = free_.find(block);
        if (it != free_.end() && !it->second.empty()) {
          data = it->second.back();
          it->second.pop_back();
          cached_ -= block;
          ++hits_;
        } else {
          ++misses_;
        }
      }
    }
    const size_t size = block ? block : n;
    if (data == nullptr) data = fresh(size);
    size_t allocated, reserved;
    {
      std::lock_guard<std::mutex> lock(mu_);
      try {
        live_.emplace(data, Live{block, size});
      } catch (...) {  // the block is in no list: give it back before the error propagates
        c10::free_cpu(data);
        throw;
      }
      allocated_ += size;
      peak_allocated_ = std::max(peak_allocated_, allocated_);
      peak_reserved_ = std::max(peak_reserved_, allocated_ + cached_);
      allocated = allocated_;
      reserved = allocated_ + cached_;
    }
    report(data, static_cast<int64_t>(size), allocated, reserved);
    return {data, data, &release, cpu};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, size_t count) const override { default_copy_data(dest, src, count); }

  static void release(void* data) {
    if (data == nullptr) return;
    BlockCache& c = instance();
    Live entry{};
    bool ours = false;
    size_t allocated, reserved;
    {
      std::lock_guard<std::mutex> lock(c.mu_);
      auto it = c.live_.find(data);
      if (it != c.live_.end()) {
        ours = true;
        entry = it->second;
        c.live_.erase(it);
        c.allocated_ -= entry.size;
      }
      allocated = c.allocated_;
      reserved = c.allocated_ + c.cached_;
    }
    if (!ours) {  // allocated by c10's default allocator before this one was installed: its own deleter
      c10::GetDefaultCPUAllocator()->raw_deallocate(data);
      return;
    }
    // Reported before the block can be handed out again, so the profiler never sees it allocated twice.
    c.report(data, -static_cast<int64_t>(entry.size), allocated, reserved);
    bool kept = false;
    if (entry.block) {
      std::lock_guard<std::mutex> lock(c.mu_);
      if (c.caching_ && entry.block >= c.min_block_ && c.cached_ + entry.block <= c.max_cached_) {
        try {
          c.free_[entry.block].push_back(data);
          c.cached_ += entry.block;
          kept = true;
        } catch (const std::bad_alloc&) {  // no room in the list: freed below (a deleter must not throw)
        }
      }
    }
    if (!kept) c10::free_cpu(data);
  }

  bool enable(size_t min_block, size_t max_cached) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!registered_) {
      c10::Allocator* current = c10::GetCPUAllocator();
      if (current != c10::GetDefaultCPUAllocator()) {
        status_ = "not enabled: another library installed its own CPU allocator";
        return false;
      }
      c10::SetCPUAllocator(this, kPriority);
      if (c10::GetCPUAllocator() != this) {
        status_ = "not enabled: c10 kept another CPU allocator of higher priority";
        return false;
      }
      registered_ = true;
    }
    min_block_ = std::max<size_t>(min_block, 1);
    max_cached_ = max_cached;
    caching_ = true;
    status_ = "enabled";
    for (auto it = free_.begin(); it != free_.end();) {  // classes below a raised min_block are never asked for
      if (it->first >= min_block_) {
        ++it;
        continue;
      }
      for (void* p : it->second) c10::free_cpu(p);
      cached_ -= it->first * it->second.size();
      it = free_.erase(it);
    }
    trim_locked(max_cached_);
    return true;
  }

  void disable() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!caching_) return;
    caching_ = false;
    status_ = "disabled";
    trim_locked(0);
  }

  int64_t empty() {
    std::lock_guard<std::mutex> lock(mu_);
    const size_t before = cached_;
    trim_locked(0);
    return static_cast<int64_t>(before);
  }

  std::map<std::string, int64_t> stats() {
    std::lock_guard<std::mutex> lock(mu_);
    auto i = [](size_t v) { return static_cast<int64_t>(v); };
    return {{"enabled", caching_ ? 1 : 0}, {"allocated", i(allocated_)}, {"peak_allocated", i(peak_allocated_)},
            {"cached", i(cached_)}, {"peak_reserved", i(peak_reserved_)}, {"hits", i(hits_)},
            {"misses", i(misses_)}, {"min_block", i(min_block_)}, {"max_cached", i(max_cached_)}};
  }

  void reset_peaks() {
    std::lock_guard<std::mutex> lock(mu_);
    peak_allocated_ = allocated_;
    peak_reserved_ = allocated_ + cached_;
  }

  std::string status() {
    std::lock_guard<std::mutex> lock(mu_);
    return status_;
  }

 private:
  struct Live {
    size_t block;  // the cached size class; 0: not cacheable
    size_t size;   // bytes held
  };

  // c10's allocation (its alignment and huge-page policy), once more after the cached blocks were freed.
  void* fresh(size_t bytes) {
    try {
      return c10::alloc_cpu(bytes);
    } catch (const c10::Error&) {
      empty();
    }
    return c10::alloc_cpu(bytes);
  }

  // Frees cached blocks until at most `keep` bytes stay cached (caller holds mu_).
  void trim_locked(size_t keep) {
    for (auto it = free_.begin(); it != free_.end() && cached_ > keep;) {
      auto& blocks = it->second;
      while (!blocks.empty() && cached_ > keep) {
        c10::free_cpu(blocks.back());
        blocks.pop_back();
        cached_ -= it->first;
      }
      it = blocks.empty() ? free_.erase(it) : std::next(it);
    }
  }

  void report(void* data, int64_t delta, size_t allocated, size_t reserved) const {
    if (c10::memoryProfilingEnabled())
      c10::reportMemoryUsageToProfiler(data, delta, allocated, reserved, c10::Device(c10::DeviceType::CPU));
  }

  std::mutex mu_;
  std::unordered_map<size_t, std::vector<void*>> free_;  // size class -> unused blocks
  std::unordered_map<void*, Live> live_;                 // every block handed out here and not yet freed
  bool registered_ = false, caching_ = false;
  std::string status_ = "not enabled";
  size_t min_block_ = 64 << 10, max_cached_ = size_t(1) << 30;
  size_t allocated_ = 0, cached_ = 0, peak_allocated_ = 0, peak_reserved_ = 0, hits_ = 0, misses_ = 0;
};

}  // namespace

bool block_cache_enable(int64_t min_block, int64_t max_cached) {
  TORCH_CHECK(min_block >= 0, "block_cache_enable: min_block must be >= 0, got ", min_block);
  TORCH_CHECK(max_cached >= 0, "block_cache_enable: max_cached must be >= 0, got ", max_cached);
  return BlockCache::instance().enable(static_cast<size_t>(min_block), static_cast<size_t>(max_cached));
}
void block_cache_disable() { BlockCache::instance().disable(); }
int64_t block_cache_empty() { return BlockCache::instance().empty(); }
std::map<std::string, int64_t> block_cache_stats() { return BlockCache::instance().stats(); }
void block_cache_reset_peaks() { BlockCache::instance().reset_peaks(); }
std::string block_cache_status() { return BlockCache::instance().status(); }

}  // namespace erbnn
