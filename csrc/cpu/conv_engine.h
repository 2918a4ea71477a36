// Choice of the CPU binary-conv engine per layer shape (issue 7):
//   xnor      XNOR-popcount on packed sign bits (binary_conv_kernels.cpp), always available;
//   int8_vnni exact +-1 int8 GEMM with AVX512-VNNI vpdpbusd (int8_conv.cpp);
//   amx       the same GEMM on AMX tiles, TDPBSSD (int8_conv_amx.cpp).
// The request comes from set_conv_engine() if called, else ERBNN_CONV_ENGINE (read per call), else
// "auto": a short timed trial of every available engine at the first call of each (shape, dtype,
// threads) key, cached in-process. A forced engine that is not available is an error naming it.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace erbnn {

enum class ConvEngine : int { kXnor = 0, kInt8Vnni = 1, kAmx = 2 };

const char* conv_engine_name(ConvEngine e);
bool conv_engine_available(ConvEngine e);
std::vector<std::string> available_conv_engines();
// "xnor", "int8_vnni", "amx", "auto"; "" drops the override (ERBNN_CONV_ENGINE then decides).
void set_conv_engine(const std::string& name);
std::string requested_conv_engine();
// Tests: make AMX look absent (also ERBNN_DISABLE_AMX=1 at load).
void set_amx_disabled(bool disabled);
void clear_conv_engine_cache();
// The auto choices made so far: cache key -> engine name (benchmarks, tests).
std::map<std::string, std::string> conv_engine_choices();
// The engine for one call. `time_engine(e)` runs the call on engine e and returns its seconds; it is
// used only for an uncached key under "auto".
ConvEngine choose_conv_engine(const std::string& key, const std::function<double(ConvEngine)>& time_engine);

}  // namespace erbnn
