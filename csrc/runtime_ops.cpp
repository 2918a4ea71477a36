// Process-wide knobs (CPU code path, conv engine, build facts) as torch.ops.erbnn._* ops, so that Python
// reaches them through the dispatcher like the kernels and the library needs no pybind11 (the .so is
// then built against the stable CPython ABI: one build per platform and torch, any CPython >= 3.10).
// Wrapped for Python by erbnn_ext/_native.py; not part of the public op set (leading underscore).
#include <ATen/core/Dict.h>
#include <torch/library.h>

#include <array>
#include <map>
#include <string>
#include <vector>

#include "cpu/block_cache.h"
#include "cpu/conv_engine.h"
#include "cpu/cpu_isa.h"
#include "cpu/int8_conv.h"
#include "cpu/onednn_conv.h"

namespace erbnn {
namespace {

std::string isa_name(CpuIsa isa) { return cpu_isa_name(isa); }

template <typename V>
c10::Dict<std::string, V> to_dict(const std::map<std::string, V>& m) {
  c10::Dict<std::string, V> out;
  for (const auto& [key, value] : m) out.insert(key, value);
  return out;
}

std::vector<int64_t> to_ints(const std::array<uint8_t, 64>& bytes) { return {bytes.begin(), bytes.end()}; }

bool cuda_compiled() {
#ifdef ERBNN_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace
}  // namespace erbnn

TORCH_LIBRARY_FRAGMENT(erbnn, m) {
  using namespace erbnn;
  m.def("_cpu_isa", [] { return isa_name(active_cpu_isa()); });
  m.def("_detected_cpu_isa", [] { return isa_name(detected_cpu_isa()); });
  // Cap the CPU code path: scalar, avx2, avx512 or auto. Returns the path now active.
  m.def("_set_cpu_isa", [](std::string name) { return isa_name(set_cpu_isa(name)); });
  m.def("_amx_available", [] { return amx_available(); });
  // Why AMX is (not) used: the CPUID / OS grant / tile self-test outcome.
  m.def("_amx_status", [] { return amx_engine_status(); });
  // The 64-byte tile configuration the kernel loads, and (AMX hosts) what LDTILECFG loaded, read back.
  m.def("_amx_probe_outcome", [](std::string mode) { return amx_probe_outcome(mode); });
  m.def("_amx_tile_config", [] { return to_ints(amx_tile_config()); });
  m.def("_amx_tile_config_loaded", [] { return to_ints(amx_tile_config_loaded()); });
  m.def("_conv_engines", [] { return available_conv_engines(); });
  // xnor, int8_vnni, amx, onednn_int8 or auto; "" defers to ERBNN_CONV_ENGINE.
  m.def("_set_conv_engine", [](std::string name) { set_conv_engine(name); });
  m.def("_get_conv_engine", [] { return requested_conv_engine(); });
  m.def("_set_amx_disabled", [](bool disabled) { set_amx_disabled(disabled); });
  m.def("_set_amx_emulated", [](bool on) { set_amx_emulated(on); });
  // Why the onednn_int8 engine is (not) available; tests: switch it off, read a schema as the engine would.
  m.def("_onednn_status", [] { return onednn_status(); });
  m.def("_set_onednn_disabled", [](bool off) { set_onednn_engine_disabled(off); });
  m.def("_onednn_schema_problem", [](std::string schema) { return onednn_schema_problem(schema); });
  m.def("_clear_conv_engine_cache", [] { clear_conv_engine_cache(); });
  m.def("_conv_engine_choices", [] { return to_dict(conv_engine_choices()); });
  m.def("_conv_engine_reasons", [] { return to_dict(conv_engine_reasons()); });
  m.def("_cuda_compiled", [] { return cuda_compiled(); });
  m.def("_block_cache_enable", [](int64_t min_block, int64_t max_cached) {
    return block_cache_enable(min_block, max_cached);
  });
  m.def("_block_cache_disable", [] { block_cache_disable(); });
  m.def("_block_cache_empty", [] { return block_cache_empty(); });
  m.def("_block_cache_stats", [] { return to_dict(block_cache_stats()); });
  m.def("_block_cache_reset_peaks", [] { block_cache_reset_peaks(); });
  m.def("_block_cache_status", [] { return block_cache_status(); });
}
