// The engine choice of the CPU binary convolutions (conv_engine.h).
#include "conv_engine.h"

#include <array>
#include <atomic>
#include <cstdlib>
#include <deque>
#include <map>
#include <mutex>
#include <sstream>

#include <c10/util/Exception.h>

#include "binary_conv_weights.h"
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
  std::map<ShapeKey, ConvEngine> cache;
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
  for (const auto& kv : s.cache) {
    const ShapeKey& k = kv.first;
    ConvGeom g{};
    g.C = k[0], g.H = k[1], g.W = k[2], g.O = k[3], g.kh = k[4], g.kw = k[5];
    g.sh = k[6], g.sw = k[7], g.ph = k[8], g.pw = k[9], g.dh = k[10], g.dw = k[11];
    out.emplace(conv_engine_key(g), conv_engine_name(kv.second));
  }
  return out;
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

// Estimated AVX-512 instruction slots per output (pixel x channel), from the inner loops:
//   xnor: per 64-bit word, 16 pixels: 2 XOR + 2 VPOPCNTQ + 2 VPADDQ          -> 6/16 per word;
//   int8_vnni: per 4 reduction bytes, 16 pixels x 16 channels: 1 load + 16 VPDPBUSD -> 17/256 per dword;
//   amx: per 64 reduction bytes, 16 x 16 outputs: one TDPBSSD (16 cycles) + 2 tile loads -> 20/256.
// The int8 engines pad the output channels to 16 and the reduction to 4 (VNNI) / 64 (AMX) bytes.
ConvEngine rule(const ConvGeom& g, int64_t xnor_words) {
  const double Op = double((g.O + 15) / 16 * 16), pad_o = Op / double(g.O);
  const int64_t Kb = g.taps * ((g.C + 3) / 4 * 4);  // reduction bytes
  const double xnor = 6.0 / 16.0 * double(xnor_words);
  const double vnni = 17.0 / 256.0 * double((Kb + 3) / 4) * pad_o;
  const double amx = 20.0 / 256.0 * double((Kb + 63) / 64) * pad_o;
  // Memory: the int8 weights (VNNI keeps a regrouped copy too) against the packed ones.
  const double packed_bytes = double(g.O * g.K * 8), int8_bytes = Op * double(Kb + 64) * 2;
  const bool int8_fits = int8_bytes <= 16 * packed_bytes + double(1 << 20);
  ConvEngine best = ConvEngine::kXnor;
  double best_cost = xnor;
  if (int8_fits && amx_available() && conv_engine_available(ConvEngine::kAmx) && amx < best_cost)
    best = ConvEngine::kAmx, best_cost = amx;
  if (int8_fits && conv_engine_available(ConvEngine::kInt8Vnni) && vnni < best_cost)
    best = ConvEngine::kInt8Vnni, best_cost = vnni;
  return best;
}

}  // namespace

ConvEngine choose_conv_engine(const ConvGeom& g, int64_t xnor_words) {
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
  const ConvEngine e = rule(g, xnor_words);
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  const ShapeKey key = shape_key(g);
  auto it = s.cache.find(key);
  if (it == s.cache.end()) {
    if (s.order.size() >= kMaxChoices) {
      s.cache.erase(s.order.front());
      s.order.pop_front();
    }
    s.cache.emplace(key, e);
    s.order.push_back(key);
  } else {
    it->second = e;  // the rule may change with the ISA cap or the AMX switches
  }
  return e;
}

}  // namespace erbnn
