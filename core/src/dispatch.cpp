// Which kernel set this build uses. The level is fixed at build time (CMake BITMAMBA_SIMD).
#include "bitmamba/kernels.h"
#include "bitmamba/simd_levels.h"

#if defined(BITMAMBA_LEVEL_NEON) && defined(__ARM_FEATURE_DOTPROD) && defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

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
    // Every extension the level is compiled with (CMake: -mavx512f/bw/vl/dq [-mavx512vnni]).
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
#if defined(__AVX512VNNI__)
           __builtin_cpu_supports("avx512vnni") &&
#endif
           __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#elif defined(BITMAMBA_LEVEL_AVX2) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#elif defined(BITMAMBA_LEVEL_NEON) && defined(__ARM_FEATURE_DOTPROD) && defined(__linux__)
    // Armv8.2 dot product (sdot/udot) is optional before Armv8.4.
    return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#else
    return true;
#endif
}

}  // namespace bm
