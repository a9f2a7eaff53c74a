// Whether the running CPU can execute the x86 level this library was built for: every feature of
// its row's check column in core/simd_levels.txt, read with CPUID/XGETBV (cpu_features_x86.h: the
// same code on GCC, Clang and MSVC). Compiled for the baseline ISA (no level flags, see
// CMakeLists.txt), and it touches no kernel set: on a CPU without the level, everything else in the
// library may contain instructions that fault (the compiler is free to use them anywhere in the
// level-compiled files, e.g. to copy a KernelSet).
#include "bitmamba_build_level.h"
#include "bitmamba/kernels.h"
#include "cpu_features_x86.h"

namespace bm {

std::string simd_missing_cpu_features() {
    std::string missing;
#define BM_CPU_NEED(feature) \
    if (!x86::has(#feature)) missing += (missing.empty() ? "" : ", ") + std::string(#feature);
    BITMAMBA_BUILD_CPU_CHECK(BM_CPU_NEED)
#undef BM_CPU_NEED
    return missing;
}

bool simd_supported_by_cpu() { return simd_missing_cpu_features().empty(); }

std::vector<std::string> host_cpu_features() {
    std::vector<std::string> out;
    for (const auto& f : x86::kFeatures)
        if (x86::has(f)) out.emplace_back(f.cpuinfo);
    return out;
}

}  // namespace bm
