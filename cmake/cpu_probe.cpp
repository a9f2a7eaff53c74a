// Configure-time CPU probe (cmake/host_cpu.cmake runs it with try_run where the build host has no
// /proc/cpuinfo and is not macOS, e.g. Windows, the BSDs): prints the features of the level table that
// the CPU has, as /proc/cpuinfo would ("flags" on x86, "Features" on AArch64), from the same detector
// as the import-time check.
#include <cstdio>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__) || defined(_M_IX86)
#include "x86/cpu_features_x86.h"
namespace fam = bm::x86;
static const char* kKey = "flags";
#elif defined(__aarch64__) || defined(_M_ARM64)
#include "arm/cpu_features_arm.h"
namespace fam = bm::arm;
static const char* kKey = "Features";
#endif

int main() {
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__) || defined(_M_IX86) || defined(__aarch64__) || \
    defined(_M_ARM64)
    std::printf("%s\t:", kKey);
    for (const auto& f : fam::kFeatures)
        if (fam::has(f)) std::printf(" %s", f.cpuinfo);
    std::printf("\n");
#endif
    return 0;
}
