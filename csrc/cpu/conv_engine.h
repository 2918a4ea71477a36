// Choice of the CPU binary-conv engine per layer shape:
//   xnor      XNOR-popcount on packed sign bits (binary_conv_kernels.cpp), always available;
//   int8_vnni exact +-1 int8 GEMM with AVX512-VNNI vpdpbusd (int8_conv.cpp);
//   amx       the same GEMM on AMX tiles, TDPBSSD (int8_conv_amx.cpp).
// The request comes from set_conv_engine() if called, else ERBNN_CONV_ENGINE (read per call), else
// "auto": a decision rule on the layer's shape (no timing inside the op, no batch size: see
// choose_conv_engine); the choices made so far are kept for introspection in a bounded map. A forced
// engine that is not available is an error naming it.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "common/conv_geom.h"

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
// The auto choices made so far (at most kMaxChoices, oldest dropped): shape key -> engine name.
std::map<std::string, std::string> conv_engine_choices();
constexpr size_t kMaxChoices = 256;
// The engine for one call of geometry g whose XNOR reduction is xnor_words 64-bit words per output.
// Under "auto", the engine with the lowest estimated cost per output (instruction slots of the inner
// loops, output-channel padding included); the int8 engines only where their unpacked weights stay
// within a few times the packed ones (their trial used to take 20x the conv's memory). AMX emulation
// (tests) is never chosen automatically.
ConvEngine choose_conv_engine(const ConvGeom& g, int64_t xnor_words);
// The key the choice is recorded under: the shape without the batch size.
std::string conv_engine_key(const ConvGeom& g);

}  // namespace erbnn
