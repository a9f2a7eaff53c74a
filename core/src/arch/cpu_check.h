// The import-time CPU check written once for every ISA family (core/src/arch/<family>/cpu_<family>.cpp
// give it their detector): the features of this build's check column that the CPU lacks, and the
// table's features it has. Compiled for the baseline ISA, like the checks that include it.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "bitmamba_build_level.h"

namespace bm {

template <class Has>  // bool(const char* check-column name)
std::string missing_build_features(Has has) {
    std::string missing;
#define BM_CPU_NEED(feature) \
    if (!has(#feature)) missing += (missing.empty() ? "" : ", ") + std::string(#feature);
    BITMAMBA_BUILD_CPU_CHECK(BM_CPU_NEED)
#undef BM_CPU_NEED
    return missing;
}

template <class Feature, std::size_t N, class Has>  // Has: bool(const Feature&)
std::vector<std::string> present_features(const Feature (&table)[N], Has has) {
    std::vector<std::string> out;
    for (const auto& f : table)
        if (has(f)) out.emplace_back(f.cpuinfo);
    return out;
}

}  // namespace bm
