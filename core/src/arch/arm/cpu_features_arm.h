// The AArch64 CPU features the SIMD level table names, by the platform's own means: Linux and
// Android getauxval(AT_HWCAP), macOS sysctlbyname("hw.optional.arm.FEAT_*"), Windows
// IsProcessorFeaturePresent. The one detector of the import-time check (cpu_arm.cpp) and of the
// configure-time probe (cmake/cpu_probe.cpp). Names are the table's: the check column's HWCAP_<NAME>
// spelling (ASIMDDP) or the cpuinfo column's /proc/cpuinfo spelling (asimddp). Header-only, baseline ISA.
#pragma once

#include <cstring>

#include "../feature_table.h"

#if defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#elif defined(__APPLE__)
#include <sys/sysctl.h>
#elif defined(_WIN32)
#include <windows.h>
#endif

namespace bm::arm {

struct Feature {
    const char* name;     // HWCAP_<name>: the table's check column
    const char* cpuinfo;  // /proc/cpuinfo Features spelling: the table's cpuinfo column
    const char* sysctl;   // macOS hw.optional key
};

inline constexpr Feature kFeatures[] = {
    {"ASIMD", "asimd", "hw.optional.neon"},
    {"ASIMDDP", "asimddp", "hw.optional.arm.FEAT_DotProd"},
};

inline bool has(const Feature& f) {
#if defined(__linux__)
    const unsigned long hwcap = getauxval(AT_HWCAP);
    if (std::strcmp(f.name, "ASIMD") == 0) return (hwcap & HWCAP_ASIMD) != 0;
    if (std::strcmp(f.name, "ASIMDDP") == 0) return (hwcap & HWCAP_ASIMDDP) != 0;
    return false;
#elif defined(__APPLE__)
    int value = 0;
    size_t size = sizeof(value);
    return sysctlbyname(f.sysctl, &value, &size, nullptr, 0) == 0 && value != 0;
#elif defined(_WIN32)
    if (std::strcmp(f.name, "ASIMD") == 0) return true;  // every Windows on Arm CPU
#if defined(PF_ARM_V82_DP_INSTRUCTIONS_AVAILABLE)
    if (std::strcmp(f.name, "ASIMDDP") == 0) return IsProcessorFeaturePresent(PF_ARM_V82_DP_INSTRUCTIONS_AVAILABLE) != 0;
#endif
    return false;
#else
    (void)f;
    return false;  // unknown platform: no optional feature (the baseline level still runs)
#endif
}

inline const Feature* find(const char* name) { return find_feature(kFeatures, name); }

inline bool has(const char* name) {
    const Feature* f = find(name);
    return f && has(*f);
}

}  // namespace bm::arm
