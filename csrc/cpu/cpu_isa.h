// Run-time choice of the CPU code path. One build runs on any x86-64: AVX-512 and AVX2 kernels are
// compiled with function-level target attributes and picked here from CPUID, capped by
// ERBNN_CPU_ISA=scalar|avx2|avx512 (read once at load) or set_cpu_isa() (tests).
#pragma once

#include <string>

namespace erbnn {

enum class CpuIsa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// Best ISA this CPU and OS support (AVX-512 here means F+BW+VL+VPOPCNTDQ).
CpuIsa detected_cpu_isa();
// The ISA kernels use now: min(detected, requested).
CpuIsa active_cpu_isa();
// Request an ISA by name ("scalar", "avx2", "avx512", or "auto"); returns the active one after capping.
CpuIsa set_cpu_isa(const std::string& name);
const char* cpu_isa_name(CpuIsa isa);
// AMX-INT8 in CPUID and the OS grant of the tile state (Linux arch_prctl), asked once per process; where
// not, `why` (if given) says which. Whether the tile code then runs is int8_conv.h's amx_available().
bool amx_granted(std::string* why = nullptr);

}  // namespace erbnn
