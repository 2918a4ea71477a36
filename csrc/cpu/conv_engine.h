// Choice of the CPU binary-conv engine per layer shape:
//   xnor      XNOR-popcount on packed sign bits (binary_conv_kernels.cpp), always available;
//   int8_vnni exact +-1 int8 GEMM with AVX512-VNNI vpdpbusd (int8_conv.cpp);
//   amx       the same GEMM on AMX tiles, TDPBSSD (int8_conv_amx.cpp);
//   onednn_int8 torch's oneDNN int8 conv on the +-1 operands (onednn_conv.cpp), where torch has the ops.
// The request comes from set_conv_engine() if called, else ERBNN_CONV_ENGINE (read per call), else
// "auto": the fastest engine for the layer's shape (without the batch size), measured on the first call
// of that shape in this process and kept in a bounded map with the timings that decided it. All engines
// are exact, so the choice never changes a result. A forced engine that is not available is an error
// naming it.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "common/conv_geom.h"

namespace erbnn {

enum class ConvEngine : int { kXnor = 0, kInt8Vnni = 1, kAmx = 2, kOnednnInt8 = 3 };

const char* conv_engine_name(ConvEngine e);
bool conv_engine_available(ConvEngine e);
std::vector<std::string> available_conv_engines();
// "xnor", "int8_vnni", "amx", "onednn_int8", "auto"; "" drops the override (ERBNN_CONV_ENGINE then decides).
void set_conv_engine(const std::string& name);
std::string requested_conv_engine();
// Why the amx engine is (not) available: disabled, the ISA cap, or int8_conv.h's amx_status().
std::string amx_engine_status();
// Make AMX look absent (also ERBNN_DISABLE_AMX=1 at load).
void set_amx_disabled(bool disabled);
// Make the onednn_int8 engine look absent (tests: the path of a torch without the ops or with an unknown
// schema); onednn_conv.h's onednn_status() says why it is (not) available.
void set_onednn_engine_disabled(bool disabled);
void clear_conv_engine_cache();
// The auto choices made so far (at most kMaxChoices, oldest dropped): shape key -> engine name, and shape
// key -> why (the timings, or why nothing was timed).
std::map<std::string, std::string> conv_engine_choices();
std::map<std::string, std::string> conv_engine_reasons();
constexpr size_t kMaxChoices = 256;
// Runs one call of geometry g on the engine in force: `run(engine)` computes the whole output. Under "auto", a shape seen before runs on its
// recorded engine; a new one runs on every candidate (each once to warm up, then timed in rotated order,
// the fastest kept: every run writes the same exact output). Candidates: xnor, and the int8 engines where
// this CPU has them and their unpacked weights stay within a few times the packed ones (onednn_int8 too,
// where torch has its ops); AMX only where its self-test passed (its emulation, for tests, is never chosen
// automatically).
void run_on_conv_engine(const ConvGeom& g, const std::function<void(ConvEngine)>& run);
// The key the choice is recorded under: the shape without the batch size.
std::string conv_engine_key(const ConvGeom& g);

}  // namespace erbnn
