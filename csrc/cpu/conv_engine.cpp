#include "conv_engine.h"

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <map>
#include <mutex>

#include <c10/util/Exception.h>

#include "cpu_isa.h"
#include "int8_conv.h"

namespace erbnn {
namespace {

constexpr ConvEngine kAll[] = {ConvEngine::kXnor, ConvEngine::kInt8Vnni, ConvEngine::kAmx};

std::atomic<bool>& amx_disabled() {
  static std::atomic<bool> off{[] {
    const char* v = std::getenv("ERBNN_DISABLE_AMX");
    return v != nullptr && *v != '\0' && std::string(v) != "0";
  }()};
  return off;
}

struct State {
  std::mutex mu;
  bool has_override = false;
  std::string override_name;
  std::map<std::string, ConvEngine> cache;
};
State& state() {
  static State s;
  return s;
}

bool vnni_supported() {
#if defined(__x86_64__) || defined(_M_X64)
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  }();
  return ok;
#else
  return false;
#endif
}

void check_name(const std::string& n) {
  TORCH_CHECK_VALUE(n == "auto" || n == "xnor" || n == "int8_vnni" || n == "amx",
                    "ERBNN_CONV_ENGINE / set_conv_engine: expected one of xnor, int8_vnni, amx, auto; got '", n,
                    "'");
}

}  // namespace

const char* conv_engine_name(ConvEngine e) {
  switch (e) {
    case ConvEngine::kInt8Vnni: return "int8_vnni";
    case ConvEngine::kAmx: return "amx";
    default: return "xnor";
  }
}

bool conv_engine_available(ConvEngine e) {
  switch (e) {
    case ConvEngine::kXnor: return true;
    // Both int8 engines use the AVX-512 epilogue: set_cpu_isa / ERBNN_CPU_ISA below avx512 turns them off.
    case ConvEngine::kInt8Vnni: return vnni_supported() && active_cpu_isa() == CpuIsa::kAvx512;
    case ConvEngine::kAmx: return (amx_available() || amx_emulated()) && active_cpu_isa() == CpuIsa::kAvx512 && !amx_disabled().load();
  }
  return false;
}

std::vector<std::string> available_conv_engines() {
  std::vector<std::string> out;
  for (ConvEngine e : kAll)
    if (conv_engine_available(e)) out.emplace_back(conv_engine_name(e));
  return out;
}

void set_conv_engine(const std::string& name) {
  if (!name.empty()) check_name(name);
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  s.has_override = !name.empty();
  s.override_name = name;
}

std::string requested_conv_engine() {
  {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mu);
    if (s.has_override) return s.override_name;
  }
  const char* env = std::getenv("ERBNN_CONV_ENGINE");
  std::string n = env ? env : "";
  if (n.empty()) return "auto";
  check_name(n);
  return n;
}

void set_amx_disabled(bool disabled) {
  amx_disabled().store(disabled);
  clear_conv_engine_cache();  // a cached "amx" must not outlive the switch
}

std::map<std::string, std::string> conv_engine_choices() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  std::map<std::string, std::string> out;
  for (const auto& kv : s.cache) out.emplace(kv.first, conv_engine_name(kv.second));
  return out;
}

void clear_conv_engine_cache() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  s.cache.clear();
}

ConvEngine choose_conv_engine(const std::string& key, const std::function<double(ConvEngine)>& time_engine) {
  const std::string want = requested_conv_engine();
  if (want != "auto") {
    for (ConvEngine e : kAll) {
      if (want != conv_engine_name(e)) continue;
      TORCH_CHECK(conv_engine_available(e), "binary conv engine '", want,
                  "' is not available on this machine (available: ",
                  c10::Join(", ", available_conv_engines()), ")",
                  e == ConvEngine::kAmx ? "; amx needs AMX-INT8 tiles granted by the OS, the avx512 CPU path and ERBNN_DISABLE_AMX unset"
                                        : "; int8_vnni needs AVX512-VNNI and the avx512 CPU path");
      return e;
    }
  }
  State& s = state();
  {
    std::lock_guard<std::mutex> lock(s.mu);
    auto it = s.cache.find(key);
    if (it != s.cache.end() && conv_engine_available(it->second)) return it->second;
  }
  // Trial outside the lock: concurrent first calls of one key may both measure; either result is valid.
  ConvEngine best = ConvEngine::kXnor;
  double best_t = 0;
  for (ConvEngine e : kAll) {
    if (!conv_engine_available(e)) continue;
    double t = time_engine(e);           // warm-up (first touch of buffers, tile config)
    t = std::min(t, time_engine(e));
    t = std::min(t, time_engine(e));
    if (e == ConvEngine::kXnor || t < best_t) best = e, best_t = t;
  }
  std::lock_guard<std::mutex> lock(s.mu);
  s.cache.emplace(key, best);
  return best;
}

}  // namespace erbnn
