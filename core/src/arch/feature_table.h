// Looking a CPU feature up by name in a family's table (cpu_features_x86.h, cpu_features_arm.h):
// each row has `name` (the table's check-column spelling) and `cpuinfo` (the /proc/cpuinfo one).
#pragma once

#include <cstddef>
#include <cstring>

namespace bm {

template <class Feature, std::size_t N>
const Feature* find_feature(const Feature (&table)[N], const char* name) {
    for (const auto& f : table)
        if (std::strcmp(f.name, name) == 0 || std::strcmp(f.cpuinfo, name) == 0) return &f;
    return nullptr;
}

}  // namespace bm
