#include "cpu_isa.h"

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include <c10/util/Exception.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#define ERBNN_X86 1
#endif

namespace erbnn {
namespace {

CpuIsa parse_isa(const std::string& name, CpuIsa fallback) {
  if (name == "scalar") return CpuIsa::kScalar;
  if (name == "avx2") return CpuIsa::kAvx2;
  if (name == "avx512") return CpuIsa::kAvx512;
  if (name == "auto" || name.empty()) return fallback;
  TORCH_CHECK_VALUE(false, "ERBNN_CPU_ISA / set_cpu_isa: expected one of scalar, avx2, avx512, auto; got '",
                    name, "'");
  return fallback;
}

CpuIsa initial_isa() {
  const char* env = std::getenv("ERBNN_CPU_ISA");
  CpuIsa best = detected_cpu_isa();
  if (env == nullptr) return best;
  CpuIsa want = parse_isa(env, best);
  return static_cast<int>(want) < static_cast<int>(best) ? want : best;
}

std::atomic<int>& active_slot() {
  static std::atomic<int> slot{static_cast<int>(initial_isa())};
  return slot;
}

}  // namespace

CpuIsa detected_cpu_isa() {
#ifdef ERBNN_X86
  static const CpuIsa isa = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vpopcntdq"))
      return CpuIsa::kAvx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt")) return CpuIsa::kAvx2;
    return CpuIsa::kScalar;
  }();
  return isa;
#else
  return CpuIsa::kScalar;
#endif
}

CpuIsa active_cpu_isa() { return static_cast<CpuIsa>(active_slot().load(std::memory_order_relaxed)); }

CpuIsa set_cpu_isa(const std::string& name) {
  CpuIsa best = detected_cpu_isa();
  CpuIsa want = parse_isa(name, best);
  CpuIsa isa = static_cast<int>(want) < static_cast<int>(best) ? want : best;
  active_slot().store(static_cast<int>(isa));
  return isa;
}

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAvx512: return "avx512_vpopcntdq";
    case CpuIsa::kAvx2: return "avx2";
    default: return "scalar";
  }
}

bool amx_granted(std::string* why) {
#ifdef ERBNN_X86
  static const std::string missing = [] {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return std::string("CPUID leaf 7 is absent");
    const bool tile = (d >> 24) & 1u, int8 = (d >> 25) & 1u;
    if (!tile || !int8) return std::string("this CPU has no AMX-TILE / AMX-INT8");
    // Linux keeps the 8 KiB tile state off until a process asks for it (ARCH_REQ_XCOMP_PERM).
    constexpr long kArchReqXcompPerm = 0x1023;
    constexpr long kXfeatureXtiledata = 18;
    if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0)
      return std::string("the OS refused the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM: ") +
             std::strerror(errno) + ")";
    return std::string();
  }();
  if (why != nullptr) *why = missing;
  return missing.empty();
#else
  if (why != nullptr) *why = "not an x86-64 CPU";
  return false;
#endif
}

}  // namespace erbnn
