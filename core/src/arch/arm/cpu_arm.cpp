// Whether the running CPU can execute the Arm level this library was built for: every feature of
// its row's check column in core/simd_levels.txt, a HWCAP_<NAME> bit of getauxval(AT_HWCAP) (NEON
// itself is part of every AArch64 CPU; the Armv8.2 dot product is optional before Armv8.4).
// Compiled for the baseline ISA (no level flags), and it touches no kernel set (see cpu_x86.cpp).
#include "bitmamba_build_level.h"
#include "bitmamba/kernels.h"

#if defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

namespace bm {

bool simd_supported_by_cpu() {
#if defined(__linux__)
    [[maybe_unused]] const unsigned long hwcap = getauxval(AT_HWCAP);
#define BM_CPU_HAS(feature) &&(hwcap & HWCAP_##feature) != 0
    return true BITMAMBA_BUILD_CPU_CHECK(BM_CPU_HAS);
#undef BM_CPU_HAS
#else
    return true;
#endif
}

}  // namespace bm
