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

bool simd_supported_by_cpu() {
#if defined(BITMAMBA_LEVEL_AVX512) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx2") &&
           __builtin_cpu_supports("fma");
#elif defined(BITMAMBA_LEVEL_AVX2) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return true;
#endif
}

}  // namespace bm
