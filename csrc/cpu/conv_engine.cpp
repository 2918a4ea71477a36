// The engine choice of the CPU binary convolutions (conv_engine.h).
#include "conv_engine.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>

#include <c10/util/Exception.h>

#include "binary_conv_weights.h"
#include "cpu_isa.h"
#include "int8_conv.h"
#include "onednn_conv.h"

namespace erbnn {
namespace {

constexpr ConvEngine kAll[] = {ConvEngine::kXnor, ConvEngine::kInt8Vnni, ConvEngine::kAmx, ConvEngine::kOnednnInt8};

std::atomic<bool>& amx_disabled() {
  static std::atomic<bool> off{[] {
    const char* v = std::getenv("ERBNN_DISABLE_AMX");
    return v != nullptr && *v != '\0' && std::string(v) != "0";
  }()};
  return off;
}

// The shape without the batch size, as numbers: formatted (conv_engine_key) only when the choices are
// listed, not on every call.
using ShapeKey = std::array<int64_t, 12>;

ShapeKey shape_key(const ConvGeom& g) {
  return {g.C, g.H, g.W, g.O, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw};
}

struct State {
  std::mutex mu;
  bool has_override = false;
  std::string override_name;
  struct Choice {
    ConvEngine engine;
    std::string why;
  };
  std::map<ShapeKey, Choice> cache;
  std::deque<ShapeKey> order;  // insertion order of the keys, to bound the map
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
  TORCH_CHECK_VALUE(n == "auto" || n == "xnor" || n == "int8_vnni" || n == "amx" || n == "onednn_int8",
                    "ERBNN_CONV_ENGINE / set_conv_engine: expected one of xnor, int8_vnni, amx, onednn_int8, auto; ",
                    "got '",
                    n, "'");
}

}  // namespace

const char* conv_engine_name(ConvEngine e) {
  switch (e) {
    case ConvEngine::kInt8Vnni: return "int8_vnni";
    case ConvEngine::kAmx: return "amx";
    case ConvEngine::kOnednnInt8: return "onednn_int8";
    default: return "xnor";
  }
}

bool conv_engine_available(ConvEngine e) {
  switch (e) {
    case ConvEngine::kXnor: return true;
    // Both int8 engines use the AVX-512 epilogue: set_cpu_isa / ERBNN_CPU_ISA below avx512 turns them off.
    case ConvEngine::kInt8Vnni: return vnni_supported() && active_cpu_isa() == CpuIsa::kAvx512;
    case ConvEngine::kAmx:
      return !amx_disabled().load() && active_cpu_isa() == CpuIsa::kAvx512 && (amx_emulated() || amx_available());
    // oneDNN picks its own ISA; the input pass and the epilogue have scalar paths: any ISA cap.
    case ConvEngine::kOnednnInt8: return onednn_available();
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

std::string amx_engine_status() {
  if (amx_disabled().load()) return "disabled (ERBNN_DISABLE_AMX, or set_amx_disabled)";
  if (!amx_available()) return amx_status();
  if (active_cpu_isa() != CpuIsa::kAvx512) return "off: the CPU path is capped below avx512 (ERBNN_CPU_ISA)";
  return amx_status();
}

void set_amx_disabled(bool disabled) {
  amx_disabled().store(disabled);
  clear_conv_engine_cache();  // a cached "amx" must not outlive the switch
}

void set_onednn_engine_disabled(bool disabled) {
  set_onednn_disabled(disabled);
  clear_conv_engine_cache();
}

namespace {

ConvGeom key_geom(const ShapeKey& k) {
  ConvGeom g{};
  g.C = k[0], g.H = k[1], g.W = k[2], g.O = k[3], g.kh = k[4], g.kw = k[5];
  g.sh = k[6], g.sw = k[7], g.ph = k[8], g.pw = k[9], g.dh = k[10], g.dw = k[11];
  return g;
}

template <class F>
std::map<std::string, std::string> list_choices(F field) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  std::map<std::string, std::string> out;
  for (const auto& kv : s.cache) out.emplace(conv_engine_key(key_geom(kv.first)), field(kv.second));
  return out;
}

}  // namespace

std::map<std::string, std::string> conv_engine_choices() {
  return list_choices([](const State::Choice& c) { return std::string(conv_engine_name(c.engine)); });
}

std::map<std::string, std::string> conv_engine_reasons() {
  return list_choices([](const State::Choice& c) { return c.why; });
}

void clear_conv_engine_cache() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  s.cache.clear();
  s.order.clear();
  clear_packed_weights();  // and the derived weights (tests, memory)
}

std::string conv_engine_key(const ConvGeom& g) {
  std::ostringstream k;
  k << "C" << g.C << " H" << g.H << " W" << g.W << " O" << g.O << " k" << g.kh << 'x' << g.kw << " s" << g.sh << ','
    << g.sw << " p" << g.ph << ',' << g.pw << " d" << g.dh << ',' << g.dw;
  return k.str();
}

namespace {

// The int8 engines keep unpacked int8 weights (VNNI a regrouped copy too): where that is more than 16x
// the packed weights (+ 1 MiB), e.g. one output channel over a long reduction, they are not tried.
bool int8_weights_fit(const ConvGeom& g) {
  const double Op = double((g.O + 15) / 16 * 16);
  const int64_t Kb = g.taps * ((g.C + 3) / 4 * 4);  // reduction bytes
  const double packed_bytes = double(g.O * g.K * 8), int8_bytes = Op * double(Kb + 64) * 2;
  return int8_bytes <= 16 * packed_bytes + double(1 << 20);
}

std::vector<ConvEngine> auto_candidates(const ConvGeom& g, std::string& why) {
  std::vector<ConvEngine> c{ConvEngine::kXnor};
  if (!int8_weights_fit(g)) {
    why = "int8 weights would take over 16x the packed ones: xnor only";
    return c;
  }
  if (conv_engine_available(ConvEngine::kInt8Vnni)) c.push_back(ConvEngine::kInt8Vnni);
  // amx's blocked tile kernel has run only on its emulation so far (docs/kernels.md): self-tested per host.
  if (!amx_emulated() && conv_engine_available(ConvEngine::kAmx)) c.push_back(ConvEngine::kAmx);
  if (conv_engine_available(ConvEngine::kOnednnInt8)) c.push_back(ConvEngine::kOnednnInt8);
  if (c.size() == 1) why = "the only engine available";
  return c;
}

// Records the choice for g's shape (bounded: the oldest key goes first).
void record(const ConvGeom& g, ConvEngine e, std::string why) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  const ShapeKey key = shape_key(g);
  auto it = s.cache.find(key);
  if (it != s.cache.end()) {
    it->second = {e, std::move(why)};
    return;
  }
  if (s.order.size() >= kMaxChoices) {
    s.cache.erase(s.order.front());
    s.order.pop_front();
  }
  s.cache.emplace(key, State::Choice{e, std::move(why)});
  s.order.push_back(key);
}

// One warm-up run of each candidate (the int8 engines unpack their weights on first use), then timed
// rounds in rotated order; each engine's best time decides. A round is skipped when the warm-up runs
// already took long (a large layer's first call should not cost more than a few calls).
ConvEngine measure(const std::vector<ConvEngine>& cand, const std::function<void(ConvEngine)>& run,
                   std::string& why) {
  using clock = std::chrono::steady_clock;
  const size_t n = cand.size();
  std::vector<double> best(n, 1e300);
  auto timed = [&](size_t i) {
    const auto t0 = clock::now();
    run(cand[i]);
    best[i] = std::min(best[i], std::chrono::duration<double>(clock::now() - t0).count());
  };
  const auto start = clock::now();
  for (size_t i = 0; i < n; ++i) timed(i);
  const double warm = std::chrono::duration<double>(clock::now() - start).count();
  const int rounds = warm > 0.5 ? 1 : 2;
  for (int r = 0; r < rounds; ++r)
    for (size_t j = 0; j < n; ++j) timed((j + size_t(r) + 1) % n);
  const size_t pick = size_t(std::min_element(best.begin(), best.end()) - best.begin());
  why = "measured:";
  for (size_t i = 0; i < n; ++i) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%s %s %.3f ms", i ? "," : "", conv_engine_name(cand[i]), best[i] * 1e3);
    why += buf;
  }
  return cand[pick];
}

}  // namespace

void run_on_conv_engine(const ConvGeom& g, const std::function<void(ConvEngine)>& run) {
  const std::string want = requested_conv_engine();
  if (want != "auto") {
    for (ConvEngine e : kAll) {
      if (want != conv_engine_name(e)) continue;
      TORCH_CHECK(conv_engine_available(e), "binary conv engine '", want,
                  "' is not available on this machine (available: ",
                  c10::Join(", ", available_conv_engines()), ")",
                  e == ConvEngine::kAmx          ? std::string("; amx: ") + amx_engine_status()
                  : e == ConvEngine::kOnednnInt8 ? std::string("; onednn_int8: ") + onednn_status()
                                                 : std::string("; int8_vnni needs AVX512-VNNI and the avx512 path"));
      return run(e);
    }
  }
  std::optional<ConvEngine> known;
  {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mu);
    auto it = s.cache.find(shape_key(g));
    if (it != s.cache.end()) known = it->second.engine;
  }
  // A recorded engine may have gone since (the ISA cap, the AMX switches): choose again then.
  if (known && conv_engine_available(*known)) return run(*known);
  std::string why;
  const std::vector<ConvEngine> cand = auto_candidates(g, why);
  if (cand.size() == 1) {
    record(g, cand[0], why);
    return run(cand[0]);
  }
  const ConvEngine best = measure(cand, run, why);
  record(g, best, std::move(why));
}

}  // namespace erbnn
