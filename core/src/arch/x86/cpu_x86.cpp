// Whether the running CPU can execute the x86 level this library was built for: every feature of
// its row's check column in core/simd_levels.txt (__builtin_cpu_supports names). Compiled for the
// baseline ISA (no level flags, see CMakeLists.txt), and it touches no kernel set: on a CPU without
// the level, everything else in the library may contain instructions that fault (the compiler is free
// to use them anywhere in the level-compiled files, e.g. to copy a KernelSet).
#include "bitmamba_build_level.h"
#include "bitmamba/kernels.h"

namespace bm {

bool simd_supported_by_cpu() {
#if defined(__GNUC__) || defined(__clang__)
    __builtin_cpu_init();
#define BM_CPU_HAS(feature) &&__builtin_cpu_supports(#feature)
    return true BITMAMBA_BUILD_CPU_CHECK(BM_CPU_HAS);
#undef BM_CPU_HAS
#else
    return true;
#endif
}

}  // namespace bm
