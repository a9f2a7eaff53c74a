// The x86 CPU features the SIMD level table names, read with CPUID and XGETBV: the one detector of
// the import-time check (cpu_x86.cpp), of the configure-time probe (cmake/cpu_probe.cpp, where the
// build host has no /proc/cpuinfo) and of its self-test against __builtin_cpu_supports. Header-only,
// baseline ISA, any compiler (GCC, Clang, MSVC). A vector feature counts only when the operating
// system saves its registers (XCR0), as __builtin_cpu_supports and /proc/cpuinfo report it.
#pragma once

#include <cstdint>
#include <cstring>

#include "../feature_table.h"

#if defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
#else
#include <cpuid.h>
#endif

namespace bm::x86 {

struct Feature {
    const char* name;     // __builtin_cpu_supports spelling: the table's check column
    const char* cpuinfo;  // /proc/cpuinfo spelling: the table's cpuinfo and auto columns
    uint32_t leaf, subleaf;
    int reg;  // 0 eax, 1 ebx, 2 ecx, 3 edx
    int bit;
    uint64_t xcr0;  // XCR0 bits the OS must enable (register state saved on context switch)
};

constexpr uint64_t kYmm = 0x6;    // SSE + AVX state
constexpr uint64_t kZmm = 0xE6;   // + opmask, ZMM0-15 upper halves, ZMM16-31

inline constexpr Feature kFeatures[] = {
    {"sse4.2", "sse4_2", 1, 0, 2, 20, 0},
    {"avx", "avx", 1, 0, 2, 28, kYmm},
    {"fma", "fma", 1, 0, 2, 12, kYmm},
    {"avx2", "avx2", 7, 0, 1, 5, kYmm},
    {"avx512f", "avx512f", 7, 0, 1, 16, kZmm},
    {"avx512dq", "avx512dq", 7, 0, 1, 17, kZmm},
    {"avx512bw", "avx512bw", 7, 0, 1, 30, kZmm},
    {"avx512vl", "avx512vl", 7, 0, 1, 31, kZmm},
    {"avx512vnni", "avx512_vnni", 7, 0, 2, 11, kZmm},
    {"avxvnni", "avx_vnni", 7, 1, 0, 4, kYmm},
};

inline bool cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4]) {
#if defined(_MSC_VER) && !defined(__clang__)
    int r[4];
    __cpuid(r, 0);
    if (static_cast<uint32_t>(r[0]) < leaf) return false;
    __cpuidex(r, static_cast<int>(leaf), static_cast<int>(subleaf));
    for (int i = 0; i < 4; ++i) out[i] = static_cast<uint32_t>(r[i]);
    return true;
#else
    if (__get_cpuid_max(0, nullptr) < leaf) return false;
    __cpuid_count(leaf, subleaf, out[0], out[1], out[2], out[3]);
    return true;
#endif
}

// XCR0, or 0 where the OS has not enabled XSAVE (then no AVX state is usable).
inline uint64_t xcr0() {
    uint32_t r[4];
    if (!cpuid(1, 0, r) || !(r[2] & (1u << 27))) return 0;  // OSXSAVE
#if defined(_MSC_VER) && !defined(__clang__)
    return _xgetbv(0);
#else
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (static_cast<uint64_t>(hi) << 32) | lo;
#endif
}

inline bool has(const Feature& f) {
    uint32_t r[4];
    if (!cpuid(f.leaf, f.subleaf, r) || !(r[f.reg] & (1u << f.bit))) return false;
    return (xcr0() & f.xcr0) == f.xcr0;
}

// A feature by either spelling; false for a name this detector does not know.
inline const Feature* find(const char* name) { return find_feature(kFeatures, name); }

inline bool has(const char* name) {
    const Feature* f = find(name);
    return f && has(*f);
}

}  // namespace bm::x86
