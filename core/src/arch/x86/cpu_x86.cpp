// Whether the running CPU can execute the x86 level this library was built for: every feature of
// its row's check column in core/simd_levels.txt, read with CPUID/XGETBV (cpu_features_x86.h: the
// same code on GCC, Clang and MSVC). Compiled for the baseline ISA (no level flags, see
// CMakeLists.txt), and it touches no kernel set: on a CPU without the level, everything else in the
// library may contain instructions that fault (the compiler is free to use them anywhere in the
// level-compiled files, e.g. to copy a KernelSet).
#include "bitmamba/kernels.h"
#include "../cpu_check.h"
#include "cpu_features_x86.h"

namespace bm {

std::string simd_missing_cpu_features() {
    return missing_build_features([](const char* name) { return x86::has(name); });
}

bool simd_supported_by_cpu() { return simd_missing_cpu_features().empty(); }

std::vector<std::string> host_cpu_features() {
    return present_features(x86::kFeatures, [](const x86::Feature& f) { return x86::has(f); });
}

}  // namespace bm
