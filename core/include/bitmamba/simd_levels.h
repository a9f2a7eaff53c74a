// The SIMD level table (core/simd_levels.txt) as this library was built with it, and the kernel
// sets it compiles in besides scalar_kernels() and best_kernels().
//
// Everything declared here is baseline code (core/src/dispatch.cpp): safe to call on a CPU that
// lacks the level, before simd_supported_by_cpu() (unlike anything that touches a level's kernel set).
#pragma once

#include <string>
#include <vector>

#include "bitmamba/kernels.h"

namespace bm {

// The row of the table this library was built for: best_kernels().name, e.g. "avx512-vnni".
const char* simd_build_level();
// The settings that chose it, e.g. "BITMAMBA_SIMD=avx512 BITMAMBA_AVX512_VNNI=ON".
const char* simd_build_options();
// Every option that chooses a level, e.g. "BITMAMBA_SIMD / BITMAMBA_AVX2_VNNI / ...".
const char* simd_option_names();
// The table: the column names, then one row per level, each as its cells ("-": empty).
const std::vector<std::vector<std::string>>& simd_level_table();

// The kernel sets of the levels the built one carries (the table's carries column: an avx512 build
// also has the avx2 set), in table order. Calling these runs level code: after the CPU check.
const std::vector<const KernelSet*>& carried_kernels();
// scalar_kernels(), best_kernels() or a carried set, by its level name; null if this build has none.
const KernelSet* kernels_named(const std::string& name);

}  // namespace bm
