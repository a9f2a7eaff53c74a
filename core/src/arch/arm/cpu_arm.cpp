// Whether the running CPU can execute the Arm level this library was built for. Compiled for the
// baseline ISA (no level flags, see CMakeLists.txt), and it touches no kernel set (see cpu_x86.cpp).
#include "bitmamba/kernels.h"

#if defined(BITMAMBA_NEON_DOTPROD_ENABLED) && defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

namespace bm {

bool simd_supported_by_cpu() {
#if defined(BITMAMBA_NEON_DOTPROD_ENABLED) && defined(__linux__)
    // The Armv8.2 dot product (sdot/udot) is optional before Armv8.4.
    return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#else
    return true;  // NEON is part of every AArch64 CPU
#endif
}

}  // namespace bm
