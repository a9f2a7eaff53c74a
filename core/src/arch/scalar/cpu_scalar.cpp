// The scalar level runs on any CPU (its row of core/simd_levels.txt checks nothing).
#include "bitmamba/kernels.h"

namespace bm {

std::string simd_missing_cpu_features() { return {}; }

bool simd_supported_by_cpu() { return true; }

std::vector<std::string> host_cpu_features() { return {}; }  // no detector in a scalar-family build

}  // namespace bm
