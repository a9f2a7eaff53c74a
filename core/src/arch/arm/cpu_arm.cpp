// Whether the running CPU can execute the Arm level this library was built for: every feature of
// its row's check column in core/simd_levels.txt (cpu_features_arm.h: HWCAP bits on Linux, sysctl on
// macOS, IsProcessorFeaturePresent on Windows; NEON itself is part of every AArch64 CPU, the Armv8.2
// dot product is optional before Armv8.4). Compiled for the baseline ISA (no level flags), and it
// touches no kernel set (see cpu_x86.cpp).
#include "bitmamba/kernels.h"
#include "../cpu_check.h"
#include "cpu_features_arm.h"

namespace bm {

std::string simd_missing_cpu_features() {
    return missing_build_features([](const char* name) { return arm::has(name); });
}

bool simd_supported_by_cpu() { return simd_missing_cpu_features().empty(); }

std::vector<std::string> host_cpu_features() {
    return present_features(arm::kFeatures, [](const arm::Feature& f) { return arm::has(f); });
}

}  // namespace bm
