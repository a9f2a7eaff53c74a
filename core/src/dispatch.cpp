// Which kernel set this build uses. The level is fixed at build time (CMake BITMAMBA_SIMD).
#include "bitmamba/kernels.h"
#include "bitmamba/simd_levels.h"

namespace bm {

const KernelSet& best_kernels() {
#if defined(BITMAMBA_LEVEL_AVX512)
    return avx512_kernels();
#elif defined(BITMAMBA_LEVEL_AVX2)
    return avx2_kernels();
#elif defined(BITMAMBA_LEVEL_NEON)
    return neon_kernels();
#else
    return scalar_kernels();
#endif
}

const char* simd_level() { return best_kernels().name; }

// simd_supported_by_cpu() is in core/src/arch/<family>/cpu_<family>.cpp, compiled for the baseline ISA.

}  // namespace bm
