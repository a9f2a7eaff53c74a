// Whether the running CPU can execute the x86 level this library was built for. Compiled for the
// baseline ISA (no level flags, see CMakeLists.txt), and it touches no kernel set: on a CPU without
// the level, everything else in the library may contain instructions that fault (the compiler is free
// to use them anywhere in the level-compiled files, e.g. to copy a KernelSet).
#include "bitmamba/kernels.h"

namespace bm {

bool simd_supported_by_cpu() {
#if defined(BITMAMBA_LEVEL_AVX512) && (defined(__GNUC__) || defined(__clang__))
    // Every extension the level is compiled with (CMake: -mavx512f/bw/vl/dq [-mavx512vnni]).
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
#if defined(BITMAMBA_AVX512_VNNI_ENABLED)
           __builtin_cpu_supports("avx512vnni") &&
#endif
           __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#elif defined(BITMAMBA_LEVEL_AVX2) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
#if defined(BITMAMBA_AVX2_VNNI_ENABLED)
           && __builtin_cpu_supports("avxvnni")
#endif
        ;
#else
    return true;
#endif
}

}  // namespace bm
